"""A shared offset far from the collapsed point (an output layer's bias): claim ``offset_pull``.

Every embedding ``z_i = c + v_i`` shares ``c``; as ``|c|`` grows the rows collapse onto
``c``'s direction, so by claim ``stationary_collapse`` the loss is flat to first order and
rises back as ``Q / |c|^2``. The block holds its SymPy objects, proof steps, numeric check,
registration and the closed forms of ``Q`` (:func:`offset_q`, :func:`ntxent_offset_q`). Why
it matters for the paper recipe's projector bias: docs/onset.md, LARS's dimensional level.
"""

from __future__ import annotations

import numpy as np
import sympy as sp

from . import _numeric as nm
from ._claim import Claim, is_zero, register
from .geometry import _sym_ntxent


def _offset_objects() -> dict:
    eps, tau, q, eta, t, r0 = sp.symbols("epsilon tau Q eta t r_0", positive=True)
    b = sp.symbols("b0:3", real=True)
    xy = [sp.symbols(f"x{i} y{i}", real=True) for i in range(3)]
    # three rows (1 + eps b_i, eps x_i, eps y_i): a shared offset along e_1 at length 1/eps
    rows = [sp.Matrix([1 + eps * b[i], eps * xy[i][0], eps * xy[i][1]]) for i in range(3)]
    dot = lambda i, j: (rows[i].T * rows[j])[0]  # noqa: E731
    cos = {(i, j): dot(i, j) / sp.sqrt(dot(i, i) * dot(j, j)) for i, j in ((0, 1), (0, 2), (1, 2))}
    dist = {k: (xy[k[0]][0] - xy[k[1]][0]) ** 2 + (xy[k[0]][1] - xy[k[1]][1]) ** 2 for k in cos}
    d = {(i, j): sp.Symbol(f"d{min(i, j)}{max(i, j)}", nonnegative=True)
         for i in range(4) for j in range(4) if i != j}
    return {"eps": eps, "tau": tau, "Q": q, "eta_eff": eta, "t": t, "r0": r0, "rows": rows,
            "cos": cos, "dist": dist, "d": d, "pos": [1, 0, 3, 2]}


def offset_q(weights: np.ndarray, v: np.ndarray, direction: np.ndarray) -> float:
    """``Q`` of claim ``offset_pull``: ``(1/2) sum_ij weights_ij |a_i - a_j|^2``, ``weights_ij``
    the loss's derivative in the Gram entry ``G_ij`` at the collapsed point (``G = 1``; ``G_ij``
    and ``G_ji`` as separate arguments), ``a`` the rows of ``v`` (N, d) orthogonal to the unit
    ``direction`` of the shared offset."""
    a = v - np.outer(v @ direction, direction)
    return float(np.sum(weights * np.sum((a[:, None, :] - a[None, :, :]) ** 2, axis=-1))) / 2


def ntxent_offset_q(v: np.ndarray, pos: np.ndarray, tau: float, direction: np.ndarray) -> float:
    """``Q`` of claim ``offset_pull`` for NT-Xent summed over anchors (``pos``: each row's
    positive): ``(1 / 2 tau) sum_i [mean_{j != i} |a_i - a_j|^2 - |a_i - a_pos(i)|^2]``. A loss
    averaged over its ``n`` anchors (``simulate``'s) has ``Q / n``."""
    n = len(v)
    weights = (1.0 - np.eye(n)) / (n - 1) - np.eye(n)[pos]
    return offset_q(weights / tau, v, direction)


def _offset_steps() -> dict[str, bool]:
    o = _offset_objects()
    eps, tau, q, eta, t, r0, cos, dist, d, pos = (
        o[k] for k in ("eps", "tau", "Q", "eta_eff", "t", "r0", "cos", "dist", "d", "pos"))
    pairs = list(cos)
    # any smooth F of the three cosines, by its Taylor terms at G = 1 up to second order (the
    # cosines move by O(eps^2), so higher terms are O(eps^6)): f_k = dF/dG_k, f_kl the Hessian
    f1 = sp.symbols("f0:3", real=True)
    f2 = {(k, m): sp.Symbol(f"f{k}{m}", real=True) for k in range(3) for m in range(k, 3)}
    dg = [cos[k] - 1 for k in pairs]
    generic = (sum(f1[k] * dg[k] for k in range(3))
               + sum(c * dg[k] * dg[m] for (k, m), c in f2.items()))
    at0 = lambda e: sp.simplify(e.subs(eps, 0))  # noqa: E731
    q_generic = sum(f1[k] * dist[pairs[k]] for k in range(3)) / 2
    gram = lambda i, j: 1 - eps**2 * d[(i, j)] / 2  # noqa: E731  (the cosines' expansion above)
    nt = _sym_ntxent(gram, pos, tau)
    q_nt = sum(sum(d[(i, j)] for j in range(4) if j != i) / 3 - d[(i, pos[i])]
               for i in range(4)) / (2 * tau)
    r_t = (r0**4 - 8 * q * eta * t) ** sp.Rational(1, 4)
    return {
        "rows (1 + eps b_i, eps a_i), a_i in the plane orthogonal to the offset: "
        "cos_ij = 1 - eps^2 |a_i - a_j|^2 / 2 + O(eps^3)": all(
            is_zero(sp.series(cos[k], eps, 0, 3).removeO() - (1 - eps**2 * dist[k] / 2)) for k in pairs),
        "any smooth F of those three cosines: dL/d eps = 0 at eps = 0": is_zero(
            at0(sp.diff(generic, eps))),
        "any smooth F: (1/2) d^2L/d eps^2 at eps = 0 = -(1/2) sum_k dF/dG_k |a_i - a_j|^2 = -Q": is_zero(
            at0(sp.diff(generic, eps, 2)) / 2 + q_generic),
        "NT-Xent (2 pairs, any tau), G_ij = 1 - eps^2 d_ij / 2: L(0) = 4 log 3 = n log(n - 1), "
        "dL/d eps = 0, and (1/2) d^2L/d eps^2 = -(1/2 tau) sum_i [mean_j d_ij - d_i,pos]": (
            is_zero(nt.subs(eps, 0) - 4 * sp.log(3)) and is_zero(sp.diff(nt, eps).subs(eps, 0))
            and is_zero(sp.diff(nt, eps, 2).subs(eps, 0) / 2 + q_nt)),
        "dr/dt = -eta_eff 2Q / r^3 solves to r^4 = r_0^4 - 8 Q eta_eff t": is_zero(
            sp.diff(r_t, t) + eta * 2 * q / r_t**3),
    }


def _offset_check(rng: np.random.Generator):
    errors = []
    for n in (4, 8, 16):
        d = int(rng.integers(3, 7))
        tau = float(rng.uniform(0.1, 2.0))
        pos = np.arange(n) ^ 1
        anchor = rng.standard_normal((n // 2, d))
        v = np.repeat(anchor, 2, axis=0) + 0.3 * rng.standard_normal((n, d))  # views: pairs close
        c_hat = nm.random_unit(rng, d)
        f = lambda x: nm.ntxent_sum(x, pos, tau)  # noqa: E731
        weights = np.abs(rng.standard_normal((n, n)))  # a generic Gram loss, positive weights
        g = lambda x: nm.gram_weighted_sum(x, weights)  # noqa: E731
        collapsed = np.tile(c_hat, (n, 1))
        cases = [(f, ntxent_offset_q(v, pos, tau, c_hat)),
                 (g, offset_q(weights * np.e + 2 * weights**2, v, c_hat))]
        for loss, q in cases:
            for r in (1e4, 4e4):
                z = r * c_hat + v
                errors.append(abs(r**2 * (float(loss(collapsed)) - float(loss(z))) - q) / abs(q))
                errors.append(abs(r**3 * nm.shift_derivative(loss, z, c_hat) / (2 * q) - 1))
        if n != 8:
            continue
        # the offset's length stepped by heavy ball on the pull from r_0 = 1e4 (direction held):
        # r^4 falls by 8 Q eta T' / (1 - mu), T' = T - mu (1 - mu^T) / (1 - mu) from rest; the
        # error is the buffer's lag behind the growing pull, about mu / (1 - mu) steps of it
        q = cases[0][1]
        for mu in (0.0, 0.9):
            steps, r0 = 4000, 1e4
            eta = r0**4 * (1 - mu) / (16 * q * steps)
            r, buf = r0, 0.0
            for _ in range(steps):
                buf = mu * buf + nm.shift_derivative(f, r * c_hat + v, c_hat)
                r = r - eta * buf
            t_eff = steps - mu * (1 - mu**steps) / (1 - mu)
            predicted = r0**4 - 8 * q * eta * t_eff / (1 - mu)
            errors.append(abs(r**4 - predicted) / (r0**4 - predicted))
    return np.array(errors), 3e-3


OFFSET_PULL = register(
    Claim(
        name="offset_pull",
        title="A far shared offset: L approaches L_inf from below as L_inf - Q/|c|^2 and pulls back "
              "as 2Q/|c|^3; heavy ball shrinks |c|^4 linearly",
        statement=(
            r"z_i = c + v_i,\ r = \|c\|:\ L = L_\infty - \frac{Q}{r^2} + O(r^{-3}),\quad "
            r"\hat c^\top \textstyle\sum_i \nabla_{z_i} L = \frac{2Q}{r^3} + O(r^{-4}),\quad "
            r"Q_{\text{NT-Xent}} = \frac{1}{2\tau}\sum_i \Big[\frac{1}{n-1}\sum_{j\ne i}\|a_i - a_j\|^2"
            r" - \|a_i - a_{p(i)}\|^2\Big];\ \text{heavy ball on } c:\ r^4 \leftarrow r^4 - \frac{8 Q \eta}{1-\mu}"
        ),
        assumptions=(
            "every row shares the offset c (an output layer's bias); a_i is v_i's part orthogonal "
            "to c, L_inf the loss at the collapsed point (n log(n - 1) for NT-Xent summed over "
            "anchors; a loss averaged over its n anchors has Q / n)",
            "L is a differentiable function of the Gram matrix of the unit rows; for any such L, "
            "Q = (1/2) sum_{i != j} (dL/dG_ij)|_{G = 1} |a_i - a_j|^2, G_ij and G_ji taken as "
            "separate arguments",
            "r large against the rows' spread: the O(r^-3) term is relatively about |v|/r times "
            "sum |dL/dG_ij| |a_i - a_j|^2 / Q, large where uniformity and alignment nearly cancel "
            "(NT-Xent on the paper recipe's projections at initialisation: 10% at r = 6.3 x the spread)",
            "the r^4 law: the offset moves along its direction by steps small against r (the "
            "overdamped limit, effective rate eta / (1 - mu)); v and the direction held",
        ),
        sketch=(
            r"With $\epsilon = 1/r$ the unit rows are those of $\hat c + \epsilon v_i$, whose cosines "
            r"are $1 - \epsilon^2\|a_i - a_j\|^2/2 + O(\epsilon^3)$. So the first order vanishes "
            r"(as at every collapsed point, claim 'stationary_collapse') and the second is "
            r"$\epsilon^2 \sum_{ij} \partial L/\partial G_{ij} \cdot (-\|a_i - a_j\|^2/2)$; for NT-Xent "
            r"$\partial \ell_i/\partial G_{ij} = (1/(n-1) - [j = p(i)])/\tau$ at $G = 1$. Then "
            r"$dL/dr = 2Q/r^3$, and $\dot r = -\eta_{\text{eff}}\, 2Q/r^3$ integrates to "
            r"$r^4 = r_0^4 - 8Q\eta_{\text{eff}} t$."
        ),
        proof_steps=_offset_steps,
        checker=_offset_check,
        objects=_offset_objects,
        notes=(
            "Q > 0 when positives lie closer than the mean pair, so the pull is toward the centre. "
            "NT-Xent's Q has the form of its first-order term in 1/tau (uniformity minus alignment), "
            "with the rows' tangent parts a_i in place of the unit rows. Why the paper recipe's "
            "short runs keep a large projector bias (docs/onset.md, LARS's dimensional level): once "
            "flung to r, it comes back within the run only if r^4 < 8 Q sum_t eta_t / (1 - mu). "
            "Numeric check: n = 4, 8, 16 with close positive pairs, r = 1e4 and 4e4, relative error "
            "of Q from the loss and from the pull (complex step along c), for NT-Xent and a generic "
            "Gram-matrix loss; 4000 heavy-ball steps (mu 0 and 0.9, n = 8) of the offset's length "
            "against the r^4 law."
        ),
    )
)

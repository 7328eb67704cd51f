"""Geometry of cosine-only losses: projection, norm growth, stationary collapse, a far offset.

Claims registered here: ``projection``, ``norm_growth``, ``stationary_collapse``,
``offset_pull``. Each is a block of its SymPy objects, proof steps, numeric check and
registration; together they are the geometry every cosine-only loss shares. What CLOP does
to the collapsed point is in :mod:`theory.clop`.
"""

from __future__ import annotations

import itertools

import numpy as np
import sympy as sp

from . import _numeric as nm
from ._claim import Claim, is_zero, is_zero_modulo, register

# ----------------------------------------------------------------------------- projection


def _projection_objects() -> dict:
    z = sp.Matrix(sp.symbols("z1:4", real=True))
    r = sp.sqrt(sum(zi**2 for zi in z))
    u = z / r
    y = sp.symbols("y1:4", real=True)
    f = sp.Function("f")
    fz = f(*u)
    grad_z = sp.Matrix([sp.diff(fz, zi) for zi in z])
    grad_u = sp.Matrix([sp.Derivative(f(*y), yi) for yi in y]).subs(dict(zip(y, u)))
    return {"z": z, "u": u, "norm": r, "grad_z": grad_z, "grad_u": grad_u}


def _projection_steps() -> dict[str, bool]:
    o = _projection_objects()
    z, u, r, gz, gu = o["z"], o["u"], o["norm"], o["grad_z"], o["grad_u"]
    p = sp.eye(3) - u * u.T
    rhs = p * gu / r
    return {
        "grad_z f(z/|z|) = (I - u u^T) grad_u f / |z|": all(
            is_zero((gz[i] - rhs[i]).doit()) for i in range(3)
        ),
        "<grad_z f(z/|z|), z> = 0": is_zero((gz.T * z)[0].doit()),
    }


def _projection_check(rng: np.random.Generator):
    errors = []
    for _ in range(12):
        n, d = int(rng.integers(2, 9)), int(rng.integers(2, 7))
        tau = float(rng.uniform(0.05, 2.0))
        z = rng.standard_normal((n, d)) * rng.uniform(0.1, 10.0, (n, 1))
        pos = rng.permutation(n)
        labels = rng.integers(0, 3, n)
        weights = rng.standard_normal((n, n))
        losses = [
            lambda x, raw=False: nm.ntxent_sum(x, pos, tau, raw),
            lambda x, raw=False: nm.supcon_sum(x, labels, tau, raw),
            lambda x, raw=False: nm.gram_weighted_sum(x, weights, raw),
        ]
        r = np.linalg.norm(z, axis=1, keepdims=True)
        u = z / r
        for loss in losses:
            gz = nm.complex_step_grad(loss, z)
            gu = nm.complex_step_grad(lambda x: loss(x, raw=True), u)
            expected = nm.projected(u, gu) / r
            scale = np.linalg.norm(gz) + 1e-300
            errors.append(np.linalg.norm(gz - expected) / scale)
            errors.append(np.max(np.abs(np.sum(gz * z, axis=1))) / (scale * np.max(r)))
    return np.array(errors), 1e-10


PROJECTION = register(
    Claim(
        name="projection",
        title="Gradients of cosine-only losses are tangent to the sphere",
        statement=(
            r"\nabla_z f\!\left(\tfrac{z}{\|z\|}\right) = \frac{(I - u u^\top)\,\nabla_u f}{\|z\|},"
            r"\quad \langle \nabla_z L, z_i\rangle = 0 \text{ for every row } i"
        ),
        assumptions=(
            "free norms: z in R^d \\ {0}, u = z/|z|",
            "L depends on each z_i only through u_i (any cosine-only loss)",
            "f differentiable in a neighbourhood of the sphere",
        ),
        sketch=(
            r"The Jacobian of $z \mapsto z/\|z\|$ is $(I - uu^\top)/\|z\|$, which is symmetric; "
            r"the chain rule gives the gradient, and $(I-uu^\top)z = 0$ gives orthogonality."
        ),
        proof_steps=_projection_steps,
        checker=_projection_check,
        objects=_projection_objects,
        notes=(
            "Checked on NT-Xent, SupCon and a generic Gram-matrix loss: complex-step gradients "
            "in z versus the projected complex-step gradient in u; error is relative."
        ),
    )
)

# ----------------------------------------------------------------------------- norm growth


def _norm_growth_objects() -> dict:
    z = sp.Matrix(sp.symbols("z1:4", real=True))
    h = sp.Matrix(sp.symbols("h1:4", real=True))
    eta, r = sp.symbols("eta R", positive=True)  # R stands for |z|
    u = z / r
    g = (sp.eye(3) - u * u.T) * h / r
    z_new = z - eta * g
    return {"z": z, "h": h, "eta": eta, "norm": r, "u": u, "g": g, "z_new": z_new}


def _norm_growth_steps() -> dict[str, bool]:
    o = _norm_growth_objects()
    z, h, eta, r, u, g, zn = (o[k] for k in ("z", "h", "eta", "norm", "u", "g", "z_new"))
    sq = lambda v: (v.T * v)[0]  # noqa: E731
    rel = [r**2 - sq(z)]
    gens = [r, *z, *h, eta]
    ph = (sp.eye(3) - u * u.T) * h
    radial = (zn.T * u)[0]
    tangential_sq = sq(zn) - radial**2
    return {
        "|z'|^2 = |z|^2 + eta^2 |g|^2": is_zero_modulo(sq(zn) - sq(z) - eta**2 * sq(g), rel, gens),
        "radial part of z' is |z|": is_zero_modulo(radial - r, rel, gens),
        "tan(angle(z', z)) = eta |P grad_u f| / |z|^2": is_zero_modulo(
            tangential_sq * r**4 - eta**2 * sq(ph) * radial**2, rel, gens
        ),
    }


def _norm_growth_check(rng: np.random.Generator):
    errors = []
    for _ in range(6):
        n, d = int(rng.integers(2, 9)), int(rng.integers(2, 6))
        tau, eta = float(rng.uniform(0.1, 1.0)), float(10 ** rng.uniform(-2, 1.5))
        pos = rng.permutation(n)
        z = rng.standard_normal((n, d))
        f = lambda x: nm.ntxent_sum(x, pos, tau)  # noqa: E731
        for _ in range(15):
            g = nm.complex_step_grad(f, z)
            z_new = z - eta * g
            lhs = np.sum(z_new**2, 1)
            rhs = np.sum(z**2, 1) + eta**2 * np.sum(g**2, 1)
            errors.append(np.max(np.abs(lhs - rhs) / rhs))
            cosang = np.sum(z_new * z, 1) / np.sqrt(lhs * np.sum(z**2, 1))
            tan_measured = np.sqrt(np.clip(1 - cosang**2, 0, None)) / cosang
            tan_predicted = eta * np.sqrt(np.sum(g**2, 1)) / np.sqrt(np.sum(z**2, 1))
            errors.append(np.max(np.abs(tan_measured - tan_predicted) / (1 + tan_predicted)))
            z = z_new
    return np.array(errors), 1e-9


NORM_GROWTH = register(
    Claim(
        name="norm_growth",
        title="Plain gradient steps only grow norms; the effective step is eta/|z|^2",
        statement=(
            r"z' = z - \eta \nabla_z L \;\Rightarrow\; \|z'\|^2 = \|z\|^2 + \eta^2\|\nabla_z L\|^2,"
            r"\quad \tan\angle(z', z) = \frac{\eta\,\|(I-uu^\top)\nabla_u f\|}{\|z\|^2}"
        ),
        assumptions=(
            "free norms, no renormalisation, no weight decay",
            "plain gradient step on a cosine-only loss (so <grad, z> = 0, claim 'projection')",
        ),
        sketch=(
            r"Expand $\|z-\eta g\|^2$; the cross term vanishes by orthogonality. The radial part of "
            r"$z'$ stays $\|z\|$ and the tangential part is $\eta\|g\| = \eta\|P\nabla_u f\|/\|z\|$, "
            r"so the direction turns as a sphere step of size $\eta/\|z\|^2$."
        ),
        proof_steps=_norm_growth_steps,
        checker=_norm_growth_check,
        objects=_norm_growth_objects,
        notes=(
            "Consequence: in the free mode large learning rates self-stabilise by inflating norms; "
            "collapse in the theory claims below is studied on the sphere (renormalised steps)."
            " Numeric check: 15 NT-Xent steps at eta up to 30, relative error of the identity."
        ),
    )
)

# ----------------------------------------------------------------------------- stationary collapse


def _stationary_objects() -> dict:
    tau = sp.Symbol("tau", positive=True)
    t = sp.symbols("t1:5", real=True)
    return {"tau": tau, "angles": t}


def _angle_grads(loss, angles, config):
    return [sp.diff(loss, a).subs(dict(zip(angles, config))) for a in angles]


def _sym_ntxent(cos, pos, tau):
    n = len(pos)
    total = 0
    for i in range(n):
        den = sum(sp.exp(cos(i, j) / tau) for j in range(n) if j != i)
        total += -cos(i, pos[i]) / tau + sp.log(den)
    return total


def _sym_supcon(cos, labels, tau):
    n = len(labels)
    total = 0
    for i in range(n):
        pos = [j for j in range(n) if j != i and labels[j] == labels[i]]
        if not pos:
            continue
        den = sp.log(sum(sp.exp(cos(i, j) / tau) for j in range(n) if j != i))
        total += den - sum(cos(i, p) / tau for p in pos) / len(pos)
    return total


def _stationary_steps() -> dict[str, bool]:
    o = _stationary_objects()
    tau, t = o["tau"], o["angles"]
    cos = lambda i, j: sp.cos(t[i] - t[j])  # noqa: E731  (unit vectors in a plane)
    configs = [c for c in itertools.product([0, sp.pi], repeat=4) if c[0] == 0]
    F = sp.Function("F")
    generic3 = F(cos(0, 1), cos(0, 2), cos(1, 2))
    nt = _sym_ntxent(cos, [1, 0, 3, 2], tau)
    sc = _sym_supcon(cos, [0, 0, 1, 1], tau)
    ustar = sp.Matrix(sp.symbols("a1:4", real=True))
    sigma, k = sp.symbols("sigma k", real=True)
    rel = [sum(x**2 for x in ustar) - 1, sigma**2 - 1]
    ui = sigma * ustar
    residual = (sp.eye(3) - ui * ui.T) * (k * ustar)
    return {
        "generic F(G) of 3 unit vectors: zero angular gradient at every +-u* pattern": all(
            is_zero(g.doit())
            for c in itertools.product([0, sp.pi], repeat=3)
            for g in _angle_grads(generic3, t[:3], c)
        ),
        "NT-Xent (2 pairs, any tau): zero angular gradient at every +-u* pattern": all(
            is_zero(g) for c in configs for g in _angle_grads(nt, t, c)
        ),
        "SupCon (labels 0,0,1,1, any tau): zero angular gradient at every +-u* pattern": all(
            is_zero(g) for c in configs for g in _angle_grads(sc, t, c)
        ),
        "any n: (I - u_i u_i^T) sum_j s_ij sigma_j u* = 0 when u_i = sigma_i u*": all(
            is_zero_modulo(e, rel, [*ustar, sigma, k]) for e in residual
        ),
    }


def _stationary_check(rng: np.random.Generator):
    errors = []
    for n in (2, 4, 8, 16, 32, 64):
        d = int(rng.integers(2, 7))
        tau = float(rng.uniform(0.05, 2.0))
        ustar = nm.random_unit(rng, d)
        for all_equal in (True, False):
            signs = np.ones(n) if all_equal else rng.choice([-1.0, 1.0], n)
            z = signs[:, None] * ustar * rng.uniform(0.2, 5.0, (n, 1))
            pos = np.arange(n) ^ 1
            labels = rng.integers(0, 3, n)
            weights = rng.standard_normal((n, n))
            for f in (
                lambda x: nm.ntxent_sum(x, pos, tau),
                lambda x: nm.supcon_sum(x, labels, tau),
                lambda x: nm.gram_weighted_sum(x, weights),
            ):
                g = nm.complex_step_grad(f, z)
                # scale: gradient norm at a generic nearby configuration
                gen = nm.complex_step_grad(f, z + 0.3 * rng.standard_normal(z.shape))
                errors.append(np.max(np.abs(g)) / (np.max(np.abs(gen)) + 1e-300))
    return np.array(errors), 1e-10


STATIONARY = register(
    Claim(
        name="stationary_collapse",
        title="Collapsed and co-linear configurations are stationary for every cosine-only loss",
        statement=(
            r"u_i = \sigma_i u^\ast,\ \sigma_i \in \{\pm 1\} \;\Rightarrow\; "
            r"(I - u_i u_i^\top)\nabla_{u_i} L = 0 \ \text{and}\ \nabla_{z_i} L = 0 \ \forall i"
        ),
        assumptions=(
            "L is a differentiable function of the Gram matrix of the unit rows (NT-Xent/InfoNCE "
            "at any temperature, SupCon, DCL, any cosine-only loss)",
            "all-equal (sigma_i = 1) and co-linear (mixed signs) configurations, any n, any d",
            "free norms or sphere: both gradients vanish",
        ),
        sketch=(
            r"For $L = F(UU^\top)$, $\nabla_{u_i}L = \sum_j s_{ij} u_j$ with "
            r"$s_{ij} = \partial F/\partial G_{ij} + \partial F/\partial G_{ji}$. On a co-linear "
            r"configuration every $u_j = \sigma_j u^\ast$, so the gradient is parallel to $u_i$ and "
            r"the tangent projection removes it; by 'projection' $\nabla_{z_i} L = 0$ too."
        ),
        proof_steps=_stationary_steps,
        checker=_stationary_check,
        objects=_stationary_objects,
        notes=(
            "Symbolic proofs for a generic F of three unit vectors and for NT-Xent and SupCon "
            "with four points at symbolic tau; the general-n step is the identity "
            "(I - u_i u_i^T) u* = 0. Numeric check at n = 2..64, error = max |grad| at the "
            "collapsed point relative to the gradient at a perturbed point."
        ),
    )
)

# ----------------------------------------------------------------------------- offset pull


def _offset_objects() -> dict:
    eps, tau, r, q, eta, t, r0 = sp.symbols("epsilon tau r Q eta t r_0", positive=True)
    b = sp.symbols("b0:3", real=True)
    xy = [sp.symbols(f"x{i} y{i}", real=True) for i in range(3)]
    # three rows (1 + eps b_i, eps x_i, eps y_i): a shared offset along e_1 at length 1/eps
    rows = [sp.Matrix([1 + eps * b[i], eps * xy[i][0], eps * xy[i][1]]) for i in range(3)]
    dot = lambda i, j: (rows[i].T * rows[j])[0]  # noqa: E731
    cos = {(i, j): dot(i, j) / sp.sqrt(dot(i, i) * dot(j, j)) for i, j in ((0, 1), (0, 2), (1, 2))}
    dist = {k: (xy[k[0]][0] - xy[k[1]][0]) ** 2 + (xy[k[0]][1] - xy[k[1]][1]) ** 2 for k in cos}
    d = {(i, j): sp.Symbol(f"d{min(i, j)}{max(i, j)}", nonnegative=True)
         for i in range(4) for j in range(4) if i != j}
    return {"eps": eps, "tau": tau, "r": r, "Q": q, "eta_eff": eta, "t": t, "r0": r0, "rows": rows,
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
    eps, tau, r, q, eta, t, r0, cos, dist, d, pos = (
        o[k] for k in ("eps", "tau", "r", "Q", "eta_eff", "t", "r0", "cos", "dist", "d", "pos"))
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

"""NT-Xent at large learning rates: the aligned positive pair and the rank-1 two-cycle.

Claims registered here: ``ntxent_pair``, ``rank1_cycle``.

Both use the NT-Xent loss summed over anchors (SimCLR averages over the 2N anchors of a
batch: with that normalisation every critical learning rate below is multiplied by 2N).
"""

from __future__ import annotations

import numpy as np
import sympy as sp

from . import _numeric as nm
from ._claim import Claim, is_zero, register
from .symbols import E, eta, n, neg_cos, neg_spread, p_pos, tau

# ----------------------------------------------------------------------------- expressions

#: positive's softmax weight when n negatives sit at cosine c_neg to an aligned pair
P_POS = 1 / (1 + n * sp.exp((neg_cos - 1) / tau))
#: critical learning rate of an aligned positive pair (this toolkit's derivation)
NTXENT_CRITICAL = 2 * tau / ((1 - p_pos) * (4 - neg_cos + neg_spread / tau))
#: the pair-term-only value (negatives' effect on the relative motion neglected)
NTXENT_CANDIDATE = tau / (2 * (1 - p_pos))

# rank-1 configuration, n points per side, positives on opposite sides (sign-flip views)
_Z = (n - 1) * E + n / E
_A = E / _Z  # softmax weight of each same-side point
_B = (1 / E) / _Z  # softmax weight of each other-side point (the positive among them)
_M = (n - 1) * _A - n * _B  # softmax-weighted mean cosine seen by an anchor
LAMBDA_SIGMA = 2 / tau * (1 + _M)  # radial mode: r = 1 - eta * LAMBDA_SIGMA
MODE_MU = {
    "shared shift": sp.Integer(0),
    "within-side spread, partners together": -2 / tau * (1 + _A),
    "within-side spread, partners opposite": 2 / tau * (1 - _A),
}
RANK1_CRITICAL = (tau / (_M - _A)).subs(E, sp.exp(1 / tau))
#: the same rate written with q = exp(-2/tau) only, which cannot overflow at small tau:
#: tau ((n - 1) + n q) / ((n - 2) - n q)
RANK1_CRITICAL_STABLE = tau * ((n - 1) + n * sp.exp(-2 / tau)) / ((n - 2) - n * sp.exp(-2 / tau))
RANK1_CANDIDATE = tau / (sp.tanh(1 / tau) - 1 / n)


def _sin_cos(t):
    return sp.Matrix([sp.sin(t), sp.cos(t)])


def _dot(x, y):
    return (x.T * y)[0]


def _lse(terms):
    return sp.log(sum(sp.exp(t) for t in terms))


# ----------------------------------------------------------------------------- aligned pair


def _pair_multiplier_2d():
    """Slope of the relative angle under one step, from the literal update (2-D, 2 negatives)."""
    phi = sp.Symbol("phi", real=True)
    s = sp.sqrt(1 - neg_cos**2)
    x = sp.symbols("x1:3", real=True)
    y = sp.symbols("y1:3", real=True)
    U, V = sp.Matrix([x[0], x[1]]), sp.Matrix([y[0], y[1]])
    ks = [sp.Matrix([s, neg_cos]), sp.Matrix([-s, neg_cos])]
    loss = -2 * _dot(U, V) / tau
    loss += _lse([_dot(U, V) / tau] + [_dot(U, k) / tau for k in ks])
    loss += _lse([_dot(U, V) / tau] + [_dot(V, k) / tau for k in ks])
    g = sp.Matrix([sp.diff(loss, xi) for xi in x])
    u, v = _sin_cos(phi), _sin_cos(-phi)
    at = {x[0]: u[0], x[1]: u[1], y[0]: v[0], y[1]: v[1]}
    g = g.subs(at)
    new_u = u - eta * (g - _dot(u, g) * u)
    return sp.diff(new_u[0], phi).subs(phi, 0)


def _ntxent_pair_steps() -> dict[str, bool]:
    slope = _pair_multiplier_2d()
    p = sp.exp(1 / tau) / (sp.exp(1 / tau) + 2 * sp.exp(neg_cos / tau))
    predicted = 1 - eta * (1 - p) * (4 - neg_cos + (1 - neg_cos**2) / tau) / tau
    solved = sp.solve(sp.Eq(1 - eta * (1 - p_pos) * (4 - neg_cos + neg_spread / tau) / tau, -1), eta)
    ratio = sp.simplify(NTXENT_CANDIDATE / NTXENT_CRITICAL)
    return {
        "2-D, two negatives at cosine c: slope = 1 - eta (1-p)(4 - c + (1-c^2)/tau)/tau": is_zero(
            sp.simplify(slope - predicted)
        ),
        "slope = -1 at eta_c = 2 tau / ((1-p)(4 - c_neg + s_neg/tau))": len(solved) == 1
        and is_zero(solved[0] - NTXENT_CRITICAL),
        "candidate tau/(2(1-p)) / eta_c = (4 - c_neg + s_neg/tau)/4": is_zero(
            ratio - (4 - neg_cos + neg_spread / tau) / 4
        ),
        "p_pos of n negatives at cosine c_neg is a softmax weight": is_zero(
            P_POS - sp.exp(1 / tau) / (sp.exp(1 / tau) + n * sp.exp(neg_cos / tau))
        ),
    }


def _pair_loss_stack(uv, negs, t):
    """l_u + l_v for the pair (rows 0, 1 of ``uv``) against fixed negatives, raw dot products."""
    u, v = uv[..., 0, :], uv[..., 1, :]
    uv_dot = np.sum(u * v, -1)[..., None] / t
    su = np.concatenate([uv_dot, np.einsum("...d,kd->...k", u, negs) / t], -1)
    sv = np.concatenate([uv_dot, np.einsum("...d,kd->...k", v, negs) / t], -1)
    return -2 * uv_dot[..., 0] + nm.logsumexp(su) + nm.logsumexp(sv)


def balanced_negatives(rng: np.random.Generator, u0: np.ndarray, pairs: int,
                       cos_range: tuple[float, float] = (-0.95, 0.95)) -> np.ndarray:
    """Negatives in mirror pairs ``c u0 +- s w`` so that their pull on the aligned pair is
    radial; each pair's cosine ``c`` is drawn uniformly from ``cos_range``."""
    d = u0.size
    out = []
    for _ in range(pairs):
        cj = rng.uniform(*cos_range)
        wv = rng.standard_normal(d)
        wv -= (wv @ u0) * u0
        wv /= np.linalg.norm(wv)
        sj = np.sqrt(1 - cj**2)
        out += [cj * u0 + sj * wv, cj * u0 - sj * wv]
    return np.array(out)


def negative_statistics(u0: np.ndarray, negs: np.ndarray, t: float) -> dict:
    """``p_pos``, ``c_neg`` and the tangent second-moment matrix of fixed negatives at ``u0``."""
    sims = np.concatenate([[1.0], negs @ u0]) / t
    wts = np.exp(sims - sims.max())
    wts /= wts.sum()
    p, q = wts[0], wts[1:]
    proj = np.eye(u0.size) - np.outer(u0, u0)
    tang = negs @ proj
    moment = (tang.T * (q / (1 - p))) @ tang
    return {"p_pos": p, "c_neg": float(q @ (negs @ u0) / (1 - p)), "moment": moment}


def _ntxent_pair_check(rng: np.random.Generator):
    errors = []
    for _ in range(10):
        d = int(rng.integers(3, 7))
        t, e = float(rng.uniform(0.1, 1.5)), float(rng.uniform(0.02, 0.6))
        u0 = nm.random_unit(rng, d)
        negs = balanced_negatives(rng, u0, int(rng.integers(1, 5)))
        st = negative_statistics(u0, negs, t)
        vals, vecs = np.linalg.eigh(st["moment"])
        for k in range(d):
            dirn = vecs[:, k]
            if abs(dirn @ u0) > 1e-8:
                continue
            h = 1e-5

            def rel(sign):
                uv = np.stack([u0 + sign * h * dirn, u0 - sign * h * dirn])
                uv /= np.linalg.norm(uv, axis=1, keepdims=True)
                g = nm.complex_step_grad(lambda z: _pair_loss_stack(z, negs, t), uv)
                new = nm.sphere_step(uv, g, e)
                return (new[0] - new[1]) @ dirn

            slope = (rel(1) - rel(-1)) / (4 * h)
            pred = 1 - e * (1 - st["p_pos"]) * (4 - st["c_neg"] + vals[k] / t) / t
            errors.append(abs(slope - pred))
    return np.array(errors), 1e-7


NTXENT_PAIR = register(
    Claim(
        name="ntxent_pair",
        title="NT-Xent: an aligned positive pair loses stability above eta_c",
        statement=(
            r"\eta_c = \frac{2\tau}{(1-p_{pos})\,(4 - \bar c + \bar s/\tau)},\quad "
            r"p_{pos} = \frac{1}{1 + n\,e^{(\bar c - 1)/\tau}} \text{ (n negatives at cosine } \bar c)"
        ),
        assumptions=(
            "positive pair u = v = u0 on the sphere; loss l_u + l_v (the pair's own two NT-Xent "
            "anchor terms, raw dot products / tau); negatives k_j fixed (not moving, not anchors)",
            "negatives balanced: sum_j q_j k_j is parallel to u0 (e.g. mirror pairs c u0 +- s w), "
            "so the aligned pair is a fixed point of the relative motion",
            "c_bar = sum_j q_j <k_j, u0> / (1 - p_pos) (softmax-weighted mean cosine), "
            "s_bar = largest eigenvalue of sum_j q_j P k_j k_j^T P / (1 - p_pos), P = I - u0 u0^T",
            "projected step of size eta on both points, then renormalisation; linear stability",
        ),
        sketch=(
            r"With $u = u_0 + a$, $v = u_0 - a$, the positive term gives $4(1-p)a/\tau$ (raw "
            r"gradient plus the projection of its radial part), the negatives give "
            r"$-(1-p)\bar c\,a/\tau$ (projection of their radial pull) and "
            r"$(1/\tau^2)\sum_j q_j P k_j k_j^\top P\,a$ (softmax curvature); the slope "
            r"$1 - \eta(\cdot)$ reaches $-1$ at $\eta_c$."
        ),
        proof_steps=_ntxent_pair_steps,
        checker=_ntxent_pair_check,
        objects=lambda: {"eta_c": NTXENT_CRITICAL, "p_pos": P_POS, "candidate": NTXENT_CANDIDATE},
        notes=(
            "Corrects the candidate eta_c = tau / (2 (1 - p_pos)): that value keeps only the "
            "positive term and overestimates eta_c by the factor (4 - c_bar + s_bar/tau)/4 (5/4 "
            "for antipodal negatives, where s_bar = 0); it is exact only when "
            "c_bar = s_bar / tau. Numeric check: slope of the literal update (complex-step "
            "gradients, central difference) along each tangent eigen-direction, d = 3..6."
        ),
    )
)

# ----------------------------------------------------------------------------- rank-1 cycle


def _rank1_jacobian(n_side: int):
    """Jacobian pieces of the unprojected NT-Xent update at the +-u* configuration (2-D)."""
    npts = 2 * n_side
    sig = [1] * n_side + [-1] * n_side
    pos = [i + n_side for i in range(n_side)] + list(range(n_side))
    xs = sp.symbols(f"x0:{npts}", real=True)
    P = [sp.symbols(f"p{i}_0:2", real=True) for i in range(npts)]
    vec = [sp.Matrix(p) for p in P]
    dot = lambda i, j: _dot(vec[i], vec[j]) / tau  # noqa: E731
    loss = sum(-dot(i, pos[i]) + _lse([dot(i, j) for j in range(npts) if j != i]) for i in range(npts))
    grads = [[sp.diff(loss, P[i][k]) for k in range(2)] for i in range(npts)]
    pts = {P[i][0]: sig[i] * sp.cos(xs[i]) for i in range(npts)}
    pts.update({P[i][1]: sp.sin(xs[i]) for i in range(npts)})
    zero = {x: 0 for x in xs}
    w1 = [(sig[i] * sp.cos(xs[i]) - eta * grads[i][0].subs(pts)).subs(zero) for i in range(npts)]
    w2 = [sp.sin(xs[i]) - eta * grads[i][1].subs(pts) for i in range(npts)]
    D = sp.Matrix(npts, npts, lambda i, j: sp.diff(w2[i], xs[j]).subs(zero))
    return sig, pos, w1, D


def _rank1_steps() -> dict[str, bool]:
    exp_sub = {E: sp.exp(1 / tau)}
    ok_radial, ok_modes = True, True
    for n_side in (3, 4):
        sig, pos, w1, D = _rank1_jacobian(n_side)
        lam = LAMBDA_SIGMA.subs(n, n_side).subs(exp_sub)
        ok_radial &= all(is_zero(sp.simplify(w1[i] - sig[i] * (1 - eta * lam))) for i in range(len(sig)))
        ones = sp.Matrix([1] * len(sig))
        y = [1, -1] + [0] * (n_side - 2)
        together = sp.Matrix(y + y)  # row n + i is the partner of row i
        opposite = sp.Matrix(y + [-y[i] for i in range(n_side)])
        cases = [
            (sp.Matrix(sig), LAMBDA_SIGMA),
            (ones, MODE_MU["shared shift"]),
            (together, MODE_MU["within-side spread, partners together"]),
            (opposite, MODE_MU["within-side spread, partners opposite"]),
        ]
        for vecm, mu in cases:
            mu_n = sp.sympify(mu).subs(n, n_side).subs(exp_sub)
            resid = D * vecm - (1 - eta * mu_n) * vecm
            ok_modes &= all(is_zero(sp.simplify(r)) for r in resid)
    m_minus_a = _M - _A
    solved = sp.solve(sp.Eq(eta * LAMBDA_SIGMA - 1, 1 - eta * MODE_MU["within-side spread, partners together"]), eta)
    cand_gap = (m_minus_a - (sp.tanh(1 / tau) - 1 / n)).subs(E, sp.exp(1 / tau))
    return {
        "radial part: r_i = sigma_i (1 - eta * 2(1 + m)/tau) (n = 3, 4)": bool(ok_radial),
        "modes of the tangent Jacobian (n = 3, 4): sigma, shared shift, two within-side spreads": bool(
            ok_modes
        ),
        "softmax weights sum to one for every n: (n-1)A + nB = 1": is_zero((n - 1) * _A + n * _B - 1),
        "overflow-free form: tau/(m - A) = tau((n-1) + n e^{-2/tau}) / ((n-2) - n e^{-2/tau})": is_zero(
            sp.simplify((RANK1_CRITICAL - RANK1_CRITICAL_STABLE).rewrite(sp.exp))
        ),
        "binding mode: |1 - eta mu_a| = eta lambda_sigma - 1 at eta = tau/(m - A)": len(solved) == 1
        and is_zero(sp.simplify(solved[0] - tau / m_minus_a)),
        "candidate tau/(tanh(1/tau) - 1/n) agrees only as n -> oo": is_zero(
            sp.limit(cand_gap, n, sp.oo).rewrite(sp.exp)
        )
        and not is_zero(cand_gap.subs({n: 4, tau: sp.Rational(1, 2)})),
    }


def rank1_modes(tau_v: float, n_side: int, eta_v: float) -> dict[str, float]:
    """Multipliers ``(1 - eta mu) / |1 - eta lambda_sigma|`` of every tangent mode (floats)."""
    sub = {tau: tau_v, n: n_side, E: np.exp(1 / tau_v)}
    lam = float(LAMBDA_SIGMA.subs(sub))
    r = abs(1 - eta_v * lam)
    out = {"global rotation": (1 - eta_v * lam) / r}
    out.update({k: (1 - eta_v * float(sp.sympify(mu).subs(sub))) / r for k, mu in MODE_MU.items()})
    return out


def rank1_configuration(n_side: int, d: int, ustar: np.ndarray | None = None):
    """Unit rows ``(2n, d)`` at +-u* with sign-flip positives: row i pairs with row i + n."""
    ustar = np.eye(d)[0] if ustar is None else ustar
    sig = np.r_[np.ones(n_side), -np.ones(n_side)]
    pos = np.r_[np.arange(n_side) + n_side, np.arange(n_side)]
    return sig[:, None] * ustar, pos, sig


def _rank1_check(rng: np.random.Generator):
    errors = []
    for _ in range(8):
        n_side = int(rng.integers(3, 11))
        t = float(rng.uniform(0.15, 1.2))
        crit = float(RANK1_CRITICAL.subs({tau: t, n: n_side}))
        lam = float(LAMBDA_SIGMA.subs({tau: t, n: n_side, E: np.exp(1 / t)}))
        e = float(rng.uniform(0.1, 3.0)) * (crit if np.isfinite(crit) else 1.0)
        while abs(1 - e * lam) < 0.25:  # keep away from the flip, where |r| -> 0
            e *= 1.3
        u, pos, sig = rank1_configuration(n_side, 2)
        f = lambda z: nm.ntxent_sum(z, pos, t, raw=True)  # noqa: E731

        def step_angles(x):
            pts = np.stack([sig * np.cos(x), np.sin(x)], 1)
            w = pts - e * nm.complex_step_grad(f, pts)
            return np.arctan(w[:, 1] / np.abs(w[:, 0]))

        h = 1e-6
        J = np.stack(
            [(step_angles(h * ei) - step_angles(-h * ei)) / (2 * h) for ei in np.eye(2 * n_side)], 1
        )
        # the full, unsymmetrised spectrum: an antisymmetric error would show as complex or
        # shifted eigenvalues
        eig = np.linalg.eigvals(J)
        measured = np.sort(eig.real)
        modes = rank1_modes(t, n_side, e)
        mult = {"global rotation": 1, "shared shift": 1}
        mult.update({k: n_side - 1 for k in MODE_MU if k not in mult})
        predicted = np.sort(np.concatenate([[modes[k]] * mult[k] for k in mult]))
        errors.append(max(np.max(np.abs(measured - predicted) / np.maximum(1.0, np.abs(predicted))),
                          float(np.max(np.abs(eig.imag)))))
    return np.array(errors), 1e-6


RANK1 = register(
    Claim(
        name="rank1_cycle",
        title="Unprojected NT-Xent: the +-u* configuration attracts above eta_c (a two-cycle)",
        statement=(
            r"\eta_c = \frac{\tau}{m - A},\ A = \frac{e^{1/\tau}}{Z},\ "
            r"m = \frac{(n-1)e^{1/\tau} - n e^{-1/\tau}}{Z},\ Z = (n-1)e^{1/\tau} + n e^{-1/\tau};"
            r"\ \text{attracting for } \eta > \eta_c \text{ iff } (n-2)e^{2/\tau} > n"
        ),
        assumptions=(
            "2n unit embeddings, n at +u* and n at -u*; row i's positive is its sign-flipped "
            "partner on the other side (the sign-flip augmentation of the 3-D toy experiment)",
            "NT-Xent summed over all 2n anchors; raw dot-product gradient (no projection), step "
            "eta, then renormalisation (update mode 'sphere_raw')",
            "for eta > tau / (2 (1 + m)) every point flips side each step (r < 0): the configuration is a "
            "two-cycle; 'attracting' means every tangent mode except the global rotation shrinks",
        ),
        sketch=(
            r"The raw gradient is $\sum_j S_{ij} u_j$; at $\pm u^\ast$ the radial part is "
            r"$r = 1 - \eta\lambda_\sigma$, $\lambda_\sigma = 2(1+m)/\tau$, and tangent modes "
            r"scale by $(1-\eta\mu)/|r|$ with $\mu \in \{0, -2(1+A)/\tau, 2(1-A)/\tau\}$. The "
            r"spread mode $\mu_a = -2(1+A)/\tau$ binds: $\eta\lambda_\sigma - 1 > 1 + \eta|\mu_a|$ "
            r"iff $\eta > \tau/(m-A)$."
        ),
        proof_steps=_rank1_steps,
        checker=_rank1_check,
        objects=lambda: {"eta_c": RANK1_CRITICAL, "candidate": RANK1_CANDIDATE, "modes": MODE_MU},
        notes=(
            "Corrects the candidate tau / (tanh(1/tau) - 1/n): both tend to tau / tanh(1/tau) as "
            "n -> oo, but at n = 4, tau = 0.5 the exact value is 0.798 against 0.700. Only the sign-flip pairing "
            "is covered; same-side positives are not analysed here. Numeric check: the unsymmetrised eigenvalues of the tangent Jacobian of the "
            "literal update (central differences of complex-step gradients) against the predicted "
            "modes; the tests compare the dense float64 autograd Jacobian of the literal update at "
            "eta_c (critical multiplier 1 to 1e-6) and at 0.99 and 1.01 eta_c."
        ),
    )
)

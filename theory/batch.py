"""NT-Xent on a full batch in which every point moves: aligned pairs at symmetric positions.

Claim registered here: ``ntxent_batch``.

Setting: 2M unit points as M aligned positive pairs, pair m at position v_m. Arrangements:
``axes`` (the 2n positions +-e_i in R^n) and ``simplex`` (the n + 1 vertices of a regular
simplex in R^n, pairwise cosine -1/n). NT-Xent summed over all 2M anchors (raw dot products
/ tau of unit rows), optionally plus CLOP, ``w * sum_i (1 - cos(z_i, v_{m(i)}))`` with each
pair's prototype at its own position; projected step of size eta, then renormalisation.
Every anchor sees the same softmax weights (the arrangement is symmetric), so the
configuration is a fixed point and its step Jacobian is ``I - eta H`` on the tangent spaces,
H the Riemannian Hessian. In SimCLR units (mean over 2M anchors, CLOP as in
``simulate.losses.clop_term`` with every point labelled) every rate is 2M times larger and
the CLOP weight ``w`` is the engine's lambda.

Unlike ``ntxent_pair`` (negatives fixed), the other points are anchors too: they pull on
the pair through their own denominators, which doubles the negatives' terms of the pair
(splitting) modes, and collective modes (pairs moving together) can lose stability first.
"""

from __future__ import annotations

import numpy as np
import sympy as sp

from . import _numeric as nm
from ._claim import Claim, is_zero, register
from .symbols import eta, n, tau, w

ARRANGEMENTS = ("axes", "simplex")

# ----------------------------------------------------------------------------- expressions
_Z_AXES = sp.exp(1 / tau) + 2 * sp.exp(-1 / tau) + 4 * (n - 1)
_Z_SIMPLEX = sp.exp(1 / tau) + 2 * n * sp.exp(-1 / (n * tau))


def _relative_eigenvalue(p, qc, s):
    """Riemannian-Hessian eigenvalue of a pair's splitting mode when every anchor sees the
    same weights: p the positive's softmax weight, qc = sum_k q_k c_k, s = the tangent second
    moment sum_k q_k (w . u_k)^2 along the mode (k over the 2M - 2 other points)."""
    return (4 * (1 - p) - 2 * qc) / tau + 2 * s / tau**2


#: splitting-mode eigenvalue, +-e_i in R^n (2 antipodal points, 4 along each tangent axis)
LAMBDA_REL_AXES = _relative_eigenvalue(sp.exp(1 / tau) / _Z_AXES, -2 * sp.exp(-1 / tau) / _Z_AXES,
                                       4 / _Z_AXES)
#: splitting-mode eigenvalue, simplex in R^n (2n points at cosine -1/n, isotropic moment)
_Q_SIMPLEX = sp.exp(-1 / (n * tau)) / _Z_SIMPLEX
LAMBDA_REL_SIMPLEX = _relative_eigenvalue(sp.exp(1 / tau) / _Z_SIMPLEX, -2 * _Q_SIMPLEX,
                                          2 * _Q_SIMPLEX * (n + 1) / n)
#: critical rate of the splitting modes (CLOP weight w adds w to every eigenvalue)
RELATIVE_CRITICAL = {
    "axes": 2 / (LAMBDA_REL_AXES + w),
    "simplex": 2 / (LAMBDA_REL_SIMPLEX + w),
}


def arrangement(kind: str, n_dim: int) -> tuple[np.ndarray, np.ndarray]:
    """``(points (2M, n), partner (2M,))``: rows ``[0, M)`` at the M positions and rows
    ``[M, 2M)`` their partners at the same positions (the engine's ``[z1; z2]`` layout)."""
    if kind not in ARRANGEMENTS:
        raise ValueError(f"kind must be one of {', '.join(ARRANGEMENTS)}; got {kind!r}")
    if not (isinstance(n_dim, (int, np.integer)) and n_dim >= 2):
        raise ValueError(f"n must be an integer >= 2, got {n_dim!r}")
    if kind == "axes":
        e = np.eye(n_dim)
        pos = np.concatenate([e, -e])
    else:
        k = n_dim + 1
        etf = np.sqrt(k / (k - 1)) * (np.eye(k) - np.ones((k, k)) / k)
        basis = np.linalg.svd(etf)[2][: k - 1]
        pos = etf @ basis.T
    m = pos.shape[0]
    return np.concatenate([pos, pos]), np.r_[np.arange(m) + m, np.arange(m)]


# ----------------------------------------------------------------------------- the Hessian


def riemannian_hessian(u: np.ndarray, partner: np.ndarray, tau_v: float, w_v: float = 0.0,
                       prototypes: np.ndarray | None = None) -> np.ndarray:
    """Riemannian Hessian (N d, N d) of NT-Xent summed over anchors (+ CLOP of weight ``w_v``
    toward ``prototypes``, default the rows themselves) at unit rows ``u``, restricted to
    the tangent spaces: ``P (H_E - diag(gamma_a I)) P`` with ``H_E`` the Euclidean Hessian
    and ``gamma_a = u_a . grad_a`` (second-order term of the geodesic)."""
    nn_, d = u.shape
    s = u @ u.T / tau_v
    np.fill_diagonal(s, -np.inf)
    pm = np.exp(s - s.max(1, keepdims=True))
    pm /= pm.sum(1, keepdims=True)  # softmax of each anchor over the others
    eye = np.eye(d)
    h = np.zeros((nn_, d, nn_, d))
    # positive term -u_a . u_p / tau of every anchor: quadratic form -2 delta_a . delta_p / tau
    for a_, p_ in enumerate(partner):
        h[a_, :, p_, :] -= eye / tau_v
        h[p_, :, a_, :] -= eye / tau_v
    # log-sum-exp of anchor a: sum_b P_ab s''_ab + Var_P(s'_a.), s'_ab = (u_b.d_a + u_a.d_b)/tau
    for a_ in range(nn_):
        lin = np.zeros((nn_, nn_, d))  # lin[b] : coefficients of s'_ab on delta (N, d)
        for b_ in range(nn_):
            if b_ == a_:
                continue
            lin[b_, a_] += u[b_] / tau_v
            lin[b_, b_] += u[a_] / tau_v
            h[a_, :, b_, :] += pm[a_, b_] * eye / tau_v
            h[b_, :, a_, :] += pm[a_, b_] * eye / tau_v
        flat = lin.reshape(nn_, nn_ * d)
        cov = np.diag(pm[a_]) - np.outer(pm[a_], pm[a_])
        h += (flat.T @ cov @ flat).reshape(nn_, d, nn_, d)
    # gradient's normal part gamma_a (u_a . grad_a) enters with -gamma_a |delta_a|^2
    g = (-(u[partner]) * 2 + (pm + pm.T) @ u) / tau_v
    protos = u if prototypes is None else prototypes
    if w_v:
        g = g - w_v * protos
    gamma = (g * u).sum(1)
    for a_ in range(nn_):
        h[a_, :, a_, :] -= gamma[a_] * eye
    proj = np.zeros((nn_, d, nn_, d))
    for a_ in range(nn_):
        proj[a_, :, a_, :] = eye - np.outer(u[a_], u[a_])
    proj = proj.reshape(nn_ * d, nn_ * d)
    return proj @ h.reshape(nn_ * d, nn_ * d) @ proj


def batch_critical(kind: str, n_dim: int, tau_v: float, w_v: float = 0.0) -> dict:
    """Critical rate (sum over anchors) of the arrangement: ``2 / lambda_max(H)`` over every
    tangent mode, the splitting-mode closed form, and which kind of mode binds."""
    u, partner = arrangement(kind, n_dim)
    h = riemannian_hessian(u, partner, tau_v, w_v)
    vals, vecs = np.linalg.eigh((h + h.T) / 2)
    top = vecs[:, -1].reshape(u.shape)
    m = u.shape[0] // 2
    split = float(np.linalg.norm(top[:m] + top[m:]))  # 0 for a pure splitting mode
    rel = float(RELATIVE_CRITICAL[kind].subs({tau: tau_v, n: n_dim, w: w_v}))
    return {"eta_c": float(2 / vals[-1]), "eta_relative": rel,
            "binding": "splitting" if split < 1e-6 else "collective"}


# ----------------------------------------------------------------------------- proof


def _pair_second_derivative(positions: list, tau_s, i_pair: int, wdir) -> sp.Expr:
    """d^2 F / dt^2 at t = 0 along pair ``i_pair`` splitting in direction ``wdir`` (geodesic),
    F the literal loss summed over every anchor, every other point fixed at its position."""
    t = sp.Symbol("t", real=True)
    pts = []
    for k, v in enumerate(positions):
        v = sp.Matrix(v)
        if k == i_pair:
            pts += [sp.cos(t) * v + sp.sin(t) * sp.Matrix(wdir), sp.cos(t) * v - sp.sin(t) * sp.Matrix(wdir)]
        else:
            pts += [v, v]
    npts = len(pts)
    partner = [k ^ 1 for k in range(npts)]
    dot = lambda i, j: (pts[i].T * pts[j])[0] / tau_s  # noqa: E731
    total = 0
    for i in range(npts):
        total += -dot(i, partner[i]) + sp.log(sum(sp.exp(dot(i, j)) for j in range(npts) if j != i))
    return sp.diff(total, t, 2).subs(t, 0)


def _batch_steps() -> dict[str, bool]:
    out = {}
    axes2 = [[1, 0], [0, 1], [-1, 0], [0, -1]]
    axes3 = [[1, 0, 0], [0, 1, 0], [0, 0, 1], [-1, 0, 0], [0, -1, 0], [0, 0, -1]]
    r3 = sp.sqrt(3)
    simplex2 = [[1, 0], [-sp.Rational(1, 2), r3 / 2], [-sp.Rational(1, 2), -r3 / 2]]
    cases = [("axes", 2, axes2, [0, 1]), ("axes", 3, axes3, [0, 1, 0]),
             ("simplex", 2, simplex2, [0, 1])]
    for kind, nd, pos, wdir in cases:
        second = _pair_second_derivative(pos, tau, 0, wdir)
        lam = (LAMBDA_REL_AXES if kind == "axes" else LAMBDA_REL_SIMPLEX).subs(n, nd)
        # the mode moves two points by t each: |delta|^2 = 2 t^2, eigenvalue = F'' / 2
        out[f"{kind}, n = {nd}: splitting-mode eigenvalue from the literal loss"] = is_zero(
            sp.simplify((second / 2 - lam).rewrite(sp.exp))
        )
    p, qc, s = sp.symbols("p qc s", real=True)
    pair_lambda = (1 - p) * (4 - qc / (1 - p) + s / ((1 - p) * tau)) / tau  # claim ntxent_pair
    out["every point moving doubles the negatives' terms: lambda = lambda_pair - qc/tau + s/tau^2"] = (
        is_zero(sp.expand(_relative_eigenvalue(p, qc, s) - (pair_lambda - qc / tau + s / tau**2)))
    )
    mult = 1 - eta * (LAMBDA_REL_AXES + w)
    sol = sp.solve(sp.Eq(mult, -1), eta)
    out["multiplier 1 - eta (lambda + w) = -1 at eta = 2 / (lambda + w)"] = len(sol) == 1 and is_zero(
        sp.simplify(sol[0] - RELATIVE_CRITICAL["axes"]))
    return out


def _batch_check(rng: np.random.Generator):
    """Spectrum of the literal projected update's tangent Jacobian (central differences of
    complex-step gradients) against 1 - eta * eig(H); the splitting closed form against H."""
    errors = []
    for _ in range(3):
        kind = ARRANGEMENTS[int(rng.integers(0, 2))]
        nd = int(rng.integers(2, 4))
        t = float(rng.uniform(0.2, 1.0))
        wv = float(rng.choice([0.0, rng.uniform(0.1, 2.0)]))
        u, partner = arrangement(kind, nd)
        protos = u.copy()
        h = riemannian_hessian(u, partner, t, wv)
        e = float(rng.uniform(0.05, 0.5))

        def f(z):
            val = nm.ntxent_sum(z, partner, t)
            if wv:
                val = val + wv * np.sum(1 - np.sum(nm.normalize(z) * protos, -1), -1)
            return val

        def step(x):
            return nm.sphere_step(x, nm.complex_step_grad(f, x), e)

        hh = 1e-6
        cols = []
        for k in range(u.size):
            dv = np.zeros(u.size)
            dv[k] = hh
            cols.append(((step(u + dv.reshape(u.shape)) - step(u - dv.reshape(u.shape))) / (2 * hh)).reshape(-1))
        jac = np.stack(cols, 1)
        proj = h * 0
        d = u.shape[1]
        for a_ in range(u.shape[0]):
            proj[a_ * d:(a_ + 1) * d, a_ * d:(a_ + 1) * d] = np.eye(d) - np.outer(u[a_], u[a_])
        expect = proj - e * h
        errors.append(float(np.max(np.abs(proj @ jac @ proj - expect))))
        # the splitting closed form is an eigenvalue of H
        lam = float(((LAMBDA_REL_AXES if kind == "axes" else LAMBDA_REL_SIMPLEX) + w).subs(
            {tau: t, n: nd, w: wv}))
        vals = np.linalg.eigvalsh((h + h.T) / 2)
        errors.append(float(np.min(np.abs(vals - lam))) / max(1.0, lam))
    return np.array(errors), 1e-6


NTXENT_BATCH = register(
    Claim(
        name="ntxent_batch",
        title="NT-Xent on a full batch of aligned pairs, every point moving: critical rates",
        statement=(
            r"\eta_c = \frac{2}{\lambda_{max}(H) + w},\quad \text{splitting modes: } "
            r"\lambda_{rel} = \frac{(1-p)(4 - 2\bar c + 2\bar s/\tau)}{\tau}"
            r"\ \text{(fixed negatives: } 4 - \bar c + \bar s/\tau)"
        ),
        assumptions=(
            "2M unit points as M aligned pairs at the positions +-e_i of R^n (M = 2n) or at the "
            "vertices of a regular simplex in R^n (M = n + 1); the partner of each point is the "
            "other point at its position",
            "NT-Xent summed over all 2M anchors (raw dot products / tau of unit rows); every point "
            "moves and is an anchor; optional CLOP w (1 - cos(z_i, v_i)) with each pair's "
            "prototype at its own position",
            "projected step of size eta on every point, then renormalisation; linear stability of "
            "the fixed point (every anchor sees the same softmax weights)",
            "p: weight of the positive, c_bar, s_bar: softmax-weighted mean cosine and tangent "
            "second moment of the other 2M - 2 points, as in ntxent_pair",
        ),
        sketch=(
            r"At a fixed point the step's tangent Jacobian is $I - \eta H$, $H$ the Riemannian "
            r"Hessian. A pair's splitting mode is antisymmetric under exchanging the partners, "
            r"so it decouples; its eigenvalue has the pair's own terms (as in ntxent\_pair) plus "
            r"the other anchors' log-sum-exp curvature, which, with equal weights for every "
            r"anchor, doubles the negatives' $-\bar c$ and $\bar s/\tau$ terms. CLOP at the "
            r"prototypes adds $w$ to every tangent eigenvalue. Collective modes need the full $H$."
        ),
        proof_steps=_batch_steps,
        checker=_batch_check,
        objects=lambda: {"relative_eta_c": RELATIVE_CRITICAL, "lambda_axes": LAMBDA_REL_AXES,
                         "lambda_simplex": LAMBDA_REL_SIMPLEX},
        notes=(
            "This is the claim to use for a SimCLR batch; ntxent_pair (negatives fixed) "
            "overestimates its rates (12 points at +-e_i in R^3: splitting modes at 0.316 "
            "(tau = 0.5) and 0.868 (tau = 0.2) against 0.379 and 1.202). At small tau a "
            "collective mode binds first (same arrangement, tau = 0.2: 0.782); eta_c is then "
            "2 / lambda_max(H) from the Hessian, not the splitting closed form. Numeric check: "
            "the literal update's tangent Jacobian (central differences of complex-step "
            "gradients) against P - eta H; the tests compare both rates with the dense spectrum "
            "of simulate.stability to 1e-6. Onset of collapse in training: these are linear "
            "edges of symmetric fixed points, not the onset. In training runs (raw steps) the "
            "healthy state is left through the splitting modes: a point's two views split, "
            "anti-align and the rows then gather on +-u*. Under the raw step the "
            "renormalisation cancels the positive's stiffness, so with isotropic other rows "
            "an aligned pair splits above eta = 2B tau / (2 qc) in SimCLR units (qc = sum_k "
            "q_k c_k over the other rows), half the isotropic collective edge (qc = s / tau "
            "on the sphere; simulate.stability.isotropic_statistics). "
            "simulate.stability.predict_onset takes the larger of the +-u* attraction edge "
            "and mirror_edge (the mean-field pair map from the views' initial angle theta0 must "
            "reach pi - theta0, the pair anti-aligned, within the updates a point takes); "
            "against measured onsets (python -m figures onset, 1000 steps) median |pred/meas - "
            "1| = 0.022 on the full grid (14 of 18 rows within 15%, 15 within 2x) and 0.040 on "
            "a held-out grid (11 of 13 within 15%, all within 2x). It misses tau = 0.1 (complete "
            "collapse only in a band of rates), B = 8 (no run gathers onto one line within its "
            "21 updates per point: the map follows the pairs, but after they anti-align the "
            "points' lines still merge, 13 to 17 updates per point far above the edge, which "
            "is not modelled, leaves the prediction low at d = 64 and tau = 1 and puts short "
            "runs out of reach: at 300 steps, 25 updates per point, median 0.11 on the full grid "
            "and 0.33 on the held-out grid) and SupCon (class positives keep the "
            "classes apart; its runs end at rank about k, not on +-u*)."
        ),
    )
)

"""Geometry of cosine-only losses: projection, norm growth, stationary collapse.

Claims registered here: ``projection``, ``norm_growth``, ``stationary_collapse``. Each is a
block of its SymPy objects, proof steps, numeric check and registration; together they are
the geometry every cosine-only loss shares. What CLOP does to the collapsed point is in
:mod:`theory.clop`; a shared offset far from the collapsed point in :mod:`theory.offset`.
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

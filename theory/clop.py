"""CLOP breaks collapse: with two or more labelled classes and orthonormal prototypes no
co-linear configuration is stationary (claim ``clop_breaks_collapse``), and the floor of the
sphere gradient there (:func:`clop_gradient_floor`). It builds on ``stationary_collapse``
(:mod:`theory.geometry`): the base loss contributes nothing at a co-linear point.
"""

from __future__ import annotations

import numpy as np
import sympy as sp

from . import _numeric as nm
from ._claim import Claim, is_zero, is_zero_modulo, register


def _clop_objects() -> dict:
    a = sp.Matrix(sp.symbols("a1:4", real=True))
    n = sp.symbols("n1:4", nonnegative=True)
    lam, m = sp.symbols("lambda m", positive=True)
    return {"ustar": a, "counts": n, "lam": lam, "m": m}


def _clop_steps() -> dict[str, bool]:
    o = _clop_objects()
    a, n, lam, m = o["ustar"], o["counts"], o["lam"], o["m"]
    rel = [sum(x**2 for x in a) - 1]
    protos = [sp.Matrix([1 if j == c else 0 for j in range(3)]) for c in range(3)]
    ok_norms = True
    for c, p in enumerate(protos):
        # CLOP term for one labelled row: (lam/m) (1 - u.p); sphere gradient at u = +-u*
        for sigma in (1, -1):
            u = sigma * a
            grad = -(lam / m) * (p - (u.T * p)[0] * u)
            sq = (grad.T * grad)[0]
            ok_norms &= is_zero_modulo(sq - (lam / m) ** 2 * (1 - a[c] ** 2), rel, [*a, lam, m])
    nmax = sp.Symbol("n_max", positive=True)
    decomposition = (nmax - sum(n[c] * a[c] ** 2 for c in range(3))) - (
        sum((nmax - n[c]) * a[c] ** 2 for c in range(3)) + nmax * (1 - sum(x**2 for x in a))
    )
    total = sum(n[c] * (1 - a[c] ** 2) for c in range(3))
    at_p1 = total.subs({a[0]: 1, a[1]: 0, a[2]: 0})
    return {
        "one labelled row: |grad|^2 = (lam/m)^2 (1 - (u*.p_c)^2), either sign": ok_norms,
        "n_max - sum_c n_c a_c^2 = sum_c (n_max - n_c) a_c^2 + n_max (1 - |a|^2)": is_zero(
            decomposition
        ),
        "bound attained at u* = p_1: sum_c n_c (1 - a_c^2) = n_2 + n_3": is_zero(
            at_p1 - (n[1] + n[2])
        ),
    }


def clop_gradient_floor(class_counts, lam: float) -> float:
    """Smallest sphere-gradient norm of ``base + CLOP`` over all co-linear configurations.

    ``(lam / m) * sqrt(m - n_max)`` with ``m`` labelled rows and ``n_max`` the largest class.
    """
    counts = np.asarray(class_counts, dtype=float)
    m = counts.sum()
    return float(lam / m * np.sqrt(m - counts.max()))


def _clop_check(rng: np.random.Generator):
    errors = []
    for _ in range(24):
        k = int(rng.integers(2, 5))
        d = int(rng.integers(k, k + 4))
        n = int(rng.integers(k + 1, 17))
        tau, lam = float(rng.uniform(0.1, 1.0)), float(rng.uniform(0.1, 3.0))
        protos = np.linalg.qr(rng.standard_normal((d, d)))[0][:, :k].T
        labels = rng.integers(-1, k, n)
        labels[:k] = np.arange(k)  # every class labelled at least once
        tight = rng.random() < 0.3
        counts = np.bincount(labels[labels >= 0], minlength=k)
        ustar = protos[np.argmax(counts)] if tight else nm.random_unit(rng, d)
        signs = rng.choice([-1.0, 1.0], n)
        u = signs[:, None] * ustar
        pos = rng.permutation(n)
        f = lambda x: nm.ntxent_sum(x, pos, tau) + nm.clop_sum(x, labels, protos, lam)  # noqa: E731
        g = nm.projected(u, nm.complex_step_grad(f, u))
        norm = np.linalg.norm(g)
        a = protos @ ustar
        m = counts.sum()
        exact = lam / m * np.sqrt(np.sum(counts * (1 - a**2)))
        floor = clop_gradient_floor(counts, lam)
        errors.append(abs(norm - exact) / exact)
        errors.append(max(0.0, floor - norm) / floor)
        if tight:
            errors.append(abs(norm - floor) / floor)
    return np.array(errors), 1e-9


CLOP = register(
    Claim(
        name="clop_breaks_collapse",
        title="With >= 2 labelled classes and orthonormal prototypes, no co-linear point is stationary",
        statement=(
            r"u_i = \sigma_i u^\ast \;\Rightarrow\; \big\|\mathrm{grad}_{S}(L_{base} + L_{CLOP})\big\|_F "
            r"= \tfrac{\lambda}{m}\sqrt{\textstyle\sum_c n_c (1 - \langle u^\ast, p_c\rangle^2)} "
            r"\ \ge\ \tfrac{\lambda}{m}\sqrt{m - n_{\max}} > 0"
        ),
        assumptions=(
            "L_CLOP = (lam/m) sum over labelled rows i of (1 - cos(z_i, p_{y_i})), m labelled rows "
            "(both views count; this is the paper's per-view average)",
            "prototypes p_1..p_K orthonormal, K <= d, n_c labelled rows in class c, at least two "
            "classes with n_c > 0; unlabelled rows carry no CLOP term",
            "L_base any cosine-only loss; grad_S is the sphere (projected) gradient over all rows; "
            "in the free mode divide row i by |z_i|",
        ),
        sketch=(
            r"By 'stationary collapse' the base loss contributes nothing at a co-linear point. A "
            r"labelled row contributes $-\tfrac{\lambda}{m}(p_c - \langle u_i,p_c\rangle u_i)$ of "
            r"squared norm $(\lambda/m)^2(1-a_c^2)$, $a_c = \langle u^\ast,p_c\rangle$. Orthonormality "
            r"gives $\sum_c a_c^2 \le 1$, hence $\sum_c n_c a_c^2 \le n_{\max}$ (the decomposition "
            r"step), with equality at $u^\ast = \pm p_{c_{\max}}$."
        ),
        proof_steps=_clop_steps,
        checker=_clop_check,
        objects=_clop_objects,
        notes=(
            "The floor is tight (attained at u* = p of the largest class) and positive exactly "
            "when two classes are labelled. Checked with NT-Xent as the base loss."
        ),
    )
)

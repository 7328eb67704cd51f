"""Float64 reference machinery for the numeric checks of :mod:`theory`.

Gradients are taken by complex-step differentiation, ``f'(x) = Im f(x + ih) / h`` with
``h = 1e-30``: exact to machine precision for real-analytic functions and independent of any
hand-derived gradient. Every function here is therefore written to be complex-analytic
(``sqrt(sum(z * z))`` rather than ``abs``; a log-sum-exp that shifts by the real part only).

All losses are written directly from their papers' formulas and take a stack of
configurations: arrays carry arbitrary leading dimensions before ``(N, d)``.
"""

from __future__ import annotations

import numpy as np

_H = 1e-30


def logsumexp(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Complex-safe log-sum-exp; ``-inf`` entries (masked) contribute nothing."""
    shift = np.max(x.real, axis=axis, keepdims=True)
    out = shift + np.log(np.sum(np.exp(x - shift), axis=axis, keepdims=True))
    return np.squeeze(out, axis=axis)


def norm(z: np.ndarray) -> np.ndarray:
    """Euclidean norm over the last axis, complex-analytic (no conjugation)."""
    return np.sqrt(np.sum(z * z, axis=-1))


def normalize(z: np.ndarray) -> np.ndarray:
    return z / norm(z)[..., None]


def complex_step_grad(f, z: np.ndarray) -> np.ndarray:
    """Gradient of a scalar function ``f`` of an array ``z`` (float64), by complex step.

    ``f`` must accept a stack: given an array of shape ``(P, *z.shape)`` it returns ``(P,)``.
    All ``z.size`` perturbations are evaluated in one call.
    """
    z = np.asarray(z, dtype=np.float64)
    p = z.size
    stack = np.broadcast_to(z.astype(np.complex128), (p, *z.shape)).copy()
    flat = stack.reshape(p, p)
    flat[np.arange(p), np.arange(p)] += 1j * _H
    values = f(stack)
    return (np.imag(values) / _H).reshape(z.shape)


def shift_derivative(f, z: np.ndarray, direction: np.ndarray) -> float:
    """``d/dh f(z + h direction)`` at ``h = 0``, every row of ``z`` shifted alike (the sum of the
    rows' gradients along ``direction``), by one complex step."""
    z = np.asarray(z, dtype=np.float64)
    return float(np.imag(f((z + 1j * _H * np.asarray(direction, dtype=np.float64))[None])[0]) / _H)


def projected(u: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Row-wise tangent projection ``(I - u u^T) g`` for unit rows ``u``."""
    return g - np.sum(u * g, axis=-1, keepdims=True) * u


def _diag_mask(n: int) -> np.ndarray:
    return np.eye(n, dtype=bool)


def _rows(z: np.ndarray, raw: bool) -> np.ndarray:
    return z if raw else normalize(z)


def ntxent_sum(z: np.ndarray, pos: np.ndarray, tau: float, raw: bool = False) -> np.ndarray:
    """NT-Xent (SimCLR, Chen et al. 2020, eq. 1) summed over anchors.

    ``l_i = -s_{i,pos(i)} + log sum_{j != i} exp(s_ij)``, ``s_ij = cos(z_i, z_j) / tau``.

    Shape: ``z`` (..., N, d); ``pos`` (N,) index of each row's positive; returns (...).
    ``raw=True`` uses dot products of the rows as given (the loss as a function on R^d
    whose restriction to the sphere is the cosine loss).
    """
    u = _rows(z, raw)
    s = np.einsum("...id,...jd->...ij", u, u) / tau
    n = s.shape[-1]
    s = np.where(_diag_mask(n), -np.inf, s)
    positive = np.take_along_axis(s, np.broadcast_to(pos[:, None], s.shape[:-1] + (1,)), -1)
    return np.sum(-positive[..., 0] + logsumexp(s, -1), axis=-1)


def supcon_sum(z: np.ndarray, labels: np.ndarray, tau: float, raw: bool = False) -> np.ndarray:
    """SupCon 'L_out' (Khosla et al. 2020, eq. 2) summed over anchors.

    ``l_i = -1/|P(i)| sum_{p in P(i)} [s_ip - log sum_{a != i} exp(s_ia)]``;
    anchors without positives contribute nothing.
    """
    u = _rows(z, raw)
    s = np.einsum("...id,...jd->...ij", u, u) / tau
    n = s.shape[-1]
    eye = _diag_mask(n)
    s_masked = np.where(eye, -np.inf, s)
    log_den = logsumexp(s_masked, -1)
    same = (labels[:, None] == labels[None, :]) & ~eye
    counts = same.sum(-1)
    has = counts > 0
    mean_pos = np.sum(np.where(same, s, 0.0), axis=-1) / np.maximum(counts, 1)
    return np.sum(np.where(has, log_den - mean_pos, 0.0), axis=-1)


def gram_weighted_sum(z: np.ndarray, weights: np.ndarray, raw: bool = False) -> np.ndarray:
    """A generic smooth cosine-only loss ``sum_ij W_ij exp(cos_ij) + (W_ij cos_ij)^2``."""
    u = _rows(z, raw)
    c = np.einsum("...id,...jd->...ij", u, u)
    return np.sum(weights * np.exp(c) + (weights * c) ** 2, axis=(-2, -1))


def clop_sum(z: np.ndarray, labels: np.ndarray, prototypes: np.ndarray, lam: float) -> np.ndarray:
    """CLOP term with cosine distance: ``lam / m * sum_{labelled i} (1 - cos(z_i, p_{y_i}))``.

    ``labels == -1`` marks unlabelled rows, which are skipped; ``m`` counts labelled rows.
    """
    u = normalize(z)
    labelled = labels >= 0
    p = prototypes[np.where(labelled, labels, 0)]
    cos = np.sum(u * p, axis=-1)
    m = max(int(labelled.sum()), 1)
    return lam / m * np.sum(np.where(labelled, 1.0 - cos, 0.0), axis=-1)


def random_unit(rng: np.random.Generator, *shape: int) -> np.ndarray:
    x = rng.standard_normal(shape)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def sphere_step(u: np.ndarray, grad: np.ndarray, eta: float, project: bool = True) -> np.ndarray:
    """One step of the literal update rule on the sphere: (projected) gradient, renormalise."""
    g = projected(u, grad) if project else grad
    out = u - eta * g
    return out / np.linalg.norm(out, axis=-1, keepdims=True)

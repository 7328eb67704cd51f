"""Edges of stability of the optimizers' literal steps on a quadratic (derived, not fitted).

Near a point, the loss along one eigenvector of its Hessian is ``L = lam x^2 / 2``, so the
gradient is ``g = lam x``. The rules are those of :mod:`simulate.engine.optimizers` (torch's
conventions). With weight decay ``wd`` SGD steps along ``d = g + wd p = (lam + wd) x``, so
write ``h = lam + wd`` (the curvature the step sees) and ``a = lr h``.

* Plain GD: ``x' = (1 - a) x``, stable iff ``|1 - a| < 1``: the edge is ``a = 2``, i.e.
  ``lr (lam + wd) = 2``.
* Heavy ball, torch's convention ``b' = mu b + d``, ``p' = p - lr b'``. In ``(x, y = lr b)``
  the step is the matrix ``[[1 - a, -mu], [a, mu]]`` (trace ``T = 1 + mu - a``, determinant
  ``D = mu``); eliminating ``b``: ``x_{t+1} = (1 + mu - a) x_t - mu x_{t-1}``, with
  characteristic polynomial ``P(z) = z^2 - T z + D``. Both roots lie inside the unit circle
  iff (Jury) ``|D| < 1``, ``P(1) = 1 - T + D > 0`` and ``P(-1) = 1 + T + D > 0``. Here
  ``P(1) = a``, ``P(-1) = 2 (1 + mu) - a`` and ``D = mu < 1``: stable iff
  ``0 < a < 2 (1 + mu)``. The edge ``lr h = 2 (1 + mu)`` is crossed at ``z = -1`` (a
  period-2 oscillation, as for GD).
* Nesterov, torch's convention ``b' = mu b + d``, ``p' = p - lr (d + mu b')``:
  ``x' = x - a x - mu (mu y + a x)``, the matrix ``[[1 - a (1 + mu), -mu^2], [a, mu]]``
  with ``T = 1 + mu - a (1 + mu)`` and ``D = mu (1 - a (1 + mu)) + a mu^2 = mu (1 - a)``.
  ``P(1) = a``, ``P(-1) = 2 (1 + mu) - a (1 + 2 mu)``, and ``|D| = mu |1 - a| < 1`` whenever
  ``0 < a < 2``. Stable iff ``0 < a < 2 (1 + mu) / (1 + 2 mu)``, again crossed at ``z = -1``.
  (At ``mu = 0`` all three edges are GD's 2.)
* The first update sets ``b = d``: the same as ``mu * 0 + d``, so the map is the same
  linear map started from ``b = 0``.
* ``h <= 0`` (a flat or saddle direction): ``P(1) = a <= 0``, a root at or beyond 1 at every
  rate: no edge (the functions return ``inf``). That is why the edge is set by the largest
  ALGEBRAIC eigenvalue of the Hessian (:func:`simulate.stability.curvature.lanczos_top`).

LARS (same module) steps an adapted weight of layer l along ``r_l (g + wd w)`` with the trust
ratio ``r_l = trust |w| / (|g| + wd |w| + eps)``, and biases along ``g`` (no weight decay).
Holding ``r_l`` at its current value, layer l is SGD with curvature ``r_l (lam_l + wd)`` and
the same momentum: its edge is ``lr r_l (lam_l + wd) = c`` with ``c`` the momentum factor
above (:func:`momentum_edge`), and ``lr lam_l = c`` for a bias. This is a frozen
linearisation: ``r_l`` depends on ``g`` (and ``w``), and its derivative adds terms of order
``|dg| / |g|`` to the Jacobian, which the frozen form drops. It holds while the perturbation
is small against the gradient itself (early training, far from a stationary point); near a
stationary point ``|g| -> 0``, ``r_l`` grows without bound and changes within one step, and
LARS is no longer a fixed-rate linear map. (On an exact quadratic with ``w`` along one
eigenvector, ``g = lam w`` and ``r_l (lam + wd) = trust`` up to eps: there the frozen ratio is
exact and the edge is ``lr trust = c`` whatever the curvature.) Each layer's block ignores
its coupling to the others; the whole frozen map's edge is
:func:`simulate.stability.curvature.lars_top`'s value, never above the blocks' (interlacing),
so the smallest layer edge is an upper bound on it.
"""

from __future__ import annotations

import math

import numpy as np


def _number(name: str, value, lo: float, hi: float = math.inf, hi_open: bool = False,
            accepted: str = "") -> float:
    bad = isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating))
    if bad or not math.isfinite(value) or value < lo or value > hi or (hi_open and value == hi):
        raise ValueError(f"{name} must be a finite number {accepted}, got {value!r}")
    return float(value)


def _check_rule(momentum, nesterov, weight_decay) -> tuple[float, bool, float]:
    mu = _number("momentum", momentum, 0.0, 1.0, hi_open=True, accepted="in [0, 1)")
    if not isinstance(nesterov, (bool, np.bool_)):
        raise ValueError(f"nesterov must be True or False, got {nesterov!r}")
    wd = _number("weight_decay", weight_decay, 0.0, accepted=">= 0")
    return mu, bool(nesterov), wd


def _array(name: str, value) -> np.ndarray:
    a = np.asarray(value, dtype=np.float64)
    if not np.isfinite(a).all():
        raise ValueError(f"{name} must be finite numbers, got {value!r}")
    return a


def _out(a: np.ndarray):
    return float(a) if a.ndim == 0 else a


def momentum_edge(momentum: float = 0.0, nesterov: bool = False) -> float:
    """The critical ``a = lr h`` of the rule: 2 (GD), ``2 (1 + mu)`` (heavy ball) or
    ``2 (1 + mu) / (1 + 2 mu)`` (Nesterov), torch's conventions (see the module docstring)."""
    mu, nesterov, _ = _check_rule(momentum, nesterov, 0.0)
    return 2 * (1 + mu) / (1 + 2 * mu) if nesterov else 2 * (1 + mu)


def sgd_edge(lam, momentum: float = 0.0, nesterov: bool = False, weight_decay: float = 0.0):
    """The learning rate at which SGD (torch's rule) on curvature ``lam`` loses stability:
    ``momentum_edge(momentum, nesterov) / (lam + weight_decay)``; ``inf`` where
    ``lam + weight_decay <= 0`` (no edge). ``lam`` a number or an array."""
    _, _, wd = _check_rule(momentum, nesterov, weight_decay)
    h = _array("lam", lam) + wd
    c = momentum_edge(momentum, nesterov)
    with np.errstate(divide="ignore"):
        return _out(np.where(h > 0, c / np.where(h > 0, h, 1.0), np.inf))


def sgd_step_matrix(lr: float, lam: float, momentum: float = 0.0, nesterov: bool = False,
                    weight_decay: float = 0.0) -> np.ndarray:
    """The 2 x 2 matrix of one SGD update (torch's rule) on ``L = lam x^2 / 2`` acting on
    ``(x, b)`` (the parameter and the momentum buffer): ``[[1 - a, -lr mu], [h, mu]]`` (heavy
    ball) or ``[[1 - a (1 + mu), -lr mu^2], [h, mu]]`` (Nesterov), ``h = lam + wd``,
    ``a = lr h``. Its spectral radius crosses 1 at :func:`sgd_edge`."""
    lr = _number("lr", lr, 0.0, accepted=">= 0")
    lam = _number("lam", lam, -math.inf)
    mu, nesterov, wd = _check_rule(momentum, nesterov, weight_decay)
    h = lam + wd
    a = lr * h
    if nesterov:
        return np.array([[1 - a * (1 + mu), -lr * mu * mu], [h, mu]])
    return np.array([[1 - a, -lr * mu], [h, mu]])


def lars_edges(lams, ratios, adapted=None, momentum: float = 0.0, nesterov: bool = False,
               weight_decay: float = 0.0) -> np.ndarray:
    """Per-layer critical learning rate of LARS with every trust ratio frozen at its current
    value (see the module docstring): ``c / (ratio_l (lam_l + wd))`` for an adapted layer,
    ``c / lam_l`` for one LARS leaves alone (biases: no ratio, no weight decay), ``inf`` where
    the curvature is not positive; ``c`` = :func:`momentum_edge`. The smallest entry is the
    block estimate of the edge (an upper bound on the frozen map's own edge).

    Args:
        lams: each layer's top algebraic eigenvalue of its diagonal Hessian block.
        ratios: each layer's LARS ratio (> 0; 1 for layers not adapted).
        adapted: which layers LARS scales (default: all).
    """
    mu, nesterov, wd = _check_rule(momentum, nesterov, weight_decay)
    lam = np.atleast_1d(_array("lams", lams))
    r = np.atleast_1d(_array("ratios", ratios))
    if r.shape != lam.shape or (r <= 0).any():
        raise ValueError(f"ratios must be numbers > 0, one per layer ({lam.shape[0]}), got {ratios!r}")
    use = np.ones(lam.shape, bool) if adapted is None else np.atleast_1d(np.asarray(adapted, bool))
    if use.shape != lam.shape:
        raise ValueError(f"adapted must hold one flag per layer ({lam.shape[0]}), got {adapted!r}")
    h = np.where(use, r * (lam + wd), lam)
    with np.errstate(divide="ignore"):
        return np.where(h > 0, momentum_edge(mu, nesterov) / np.where(h > 0, h, 1.0), np.inf)

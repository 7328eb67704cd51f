"""The predicted onset of MLP encoders (:func:`predict_encoder_onset`: the recovery law for
plain SGD and heavy ball, :mod:`simulate.stability.recovery`; LARS's weight-decay edge for its
complete level, :mod:`simulate.stability.lars_decay`) and the curvature-derived rates reported
beside it (no training): the edge of stability at initialisation and the catapult estimate.

The quantity that sets the edge is the largest algebraic eigenvalue ``lambda_0`` of the
Hessian of the run's objective at its initial parameters, on its first minibatch
(:func:`simulate.stability.curvature.hessian_top`), seen through the run's optimizer
(:mod:`simulate.stability.optimizer_edges`):

* plain SGD: gradient descent is linearly unstable at the initial point above
  ``eta_eos = 2 / (lambda_0 + wd)`` (the edge of stability); heavy-ball momentum mu moves it to
  ``2 (1 + mu) / (lambda_0 + wd)``, Nesterov to ``2 (1 + mu) / ((1 + 2 mu)(lambda_0 + wd))``;
* LARS: each weight's step is ``lr r_l (g + wd w)`` with the trust ratio ``r_l`` (biases
  ``lr g``); with the ratios frozen at their initial values the step is SGD on
  ``P^1/2 (H + wd M) P^1/2`` (:func:`simulate.stability.curvature.lars_top`), so
  ``lambda_0`` is that operator's top eigenvalue and the momentum factor is the same;
* Adam and AdamW: not derived (the step divides each coordinate by its own running gradient
  scale, so the edge depends on the second-moment estimate, which starts at zero): no
  prediction.

Above the edge the first updates grow along the top eigendirections instead of settling:
the *catapult* phase (Lewkowycz et al. 2020, "The large learning rate phase of deep
learning"): between ``2 / lambda_0`` and about ``12 / lambda_0`` wide ReLU networks trained
by gradient descent spike, then move to a flatter region where the curvature fits the rate.
:func:`encoder_edges` reports the catapult's upper end, :data:`CATAPULT_FACTOR` / 2 times the
edge, beside the tables' rows; it predicts no level. Under plain SGD it missed the measured
dimensional onsets by 2-40x (the recovery law replaced it). Under LARS, where it was
extrapolated (the same multiple of the frozen-ratio edge), the measurements refute it
(docs/onset.md): the ``paper`` grid's dimensional onsets lie within 2x of it in 2 of 8 rows
after 300 steps (median |ratio - 1| 17) and 3 of 8 after 3000; after 3000 steps they lie at
lr 13.5-32 (``lr x trust`` 0.013-0.032) for the mixture and the digits, with and without
CLOP (both ranks; the digits + CLOP projection, whose reference rank is 2.8, excepted),
while the estimate spans 8 to 136 with the data. LARS's dimensional level is therefore not predicted;
its complete level is, by the weight-decay edge (:mod:`simulate.stability.lars_decay`).
"""

from __future__ import annotations

import math
import time

from ..config import RunConfig
from ..engine import resolve_device
from .curvature import LayerCurvature, _check_run, hessian_top, lars_layer, lars_top, make_objective
from .optimizer_edges import momentum_edge

#: the catapult phase's upper end in units of ``1 / lambda_0`` for wide ReLU networks under
#: gradient descent (Lewkowycz et al. 2020; 4 for a linearised two-layer model)
CATAPULT_FACTOR = 12.0
#: Lanczos tolerance of the predictor's eigenvalues (relative; the edges need two digits)
PREDICT_TOL = 1e-3


def _lars_ratios(obj) -> list[LayerCurvature]:
    """Each parameter's LARS ratio at the initial point (what :func:`lars_top` reads; the
    per-layer curvature, which it does not need, is left NaN)."""
    g = obj.gradient(obj.theta0)
    return [lars_layer(obj, name, obj.theta0, g, obj.run.lr) for name in obj.names]


def _top_curvature(run: RunConfig, device: str):
    """``(lambda_0, how, hvps)``: the top algebraic eigenvalue that sets the edge of ``run``'s
    optimizer at initialisation (LARS: of the frozen-ratio operator, weight decay included;
    SGD: of the Hessian, plus the weight decay), or NaN for Adam/AdamW."""
    if run.optimizer in ("adam", "adamw"):
        return math.nan, "not derived for Adam (per-coordinate scaling)", 0
    obj = make_objective(run, device=device)
    if run.optimizer == "lars":
        top = lars_top(obj, _lars_ratios(obj), tol=PREDICT_TOL)
        return top.top, "LARS, trust ratios frozen at initialisation", top.hvps
    top = hessian_top(obj, tol=PREDICT_TOL)
    return top.top + run.weight_decay, "Hessian at initialisation", top.hvps


def encoder_edges(run: RunConfig, device: str = "cpu") -> dict:
    """The curvature-derived rates of an MLP run (see the module docstring): ``lambda_0``,
    ``eos_edge`` (the edge of stability at initialisation), ``catapult_max``
    (:data:`CATAPULT_FACTOR` / 2 times it), how ``lambda_0`` was taken, the HVPs used and
    the seconds it took. NaN where not derived (Adam; a non-positive top eigenvalue has no
    edge: inf)."""
    run = _check_run(run)
    device = str(resolve_device(device))
    t0 = time.perf_counter()
    lam, how, hvps = _top_curvature(run, device)
    c = momentum_edge(run.momentum, run.nesterov)
    if math.isnan(lam):
        edge = math.nan
    else:
        edge = c / lam if lam > 0 else math.inf
    return {"lambda_0": lam, "eos_edge": edge, "catapult_max": edge * CATAPULT_FACTOR / 2,
            "curvature": how, "hvps": hvps, "seconds": time.perf_counter() - t0}


def encoder_predictor(run: RunConfig, level: str, metric: str = "effective_rank") -> str:
    """What predicts ``run``'s onset at ``level`` on the rank ``metric``: ``"law"`` (the
    recovery law), ``"decay"`` (LARS's weight-decay edge: the complete level of the embeddings
    the loss sees), ``"overflow"`` (LARS without weight decay: the dimensional level of the
    embeddings the loss sees) or ``"none"`` (LARS's dimensional level with weight decay among
    others: module docstring)."""
    from .lars_decay import decay_edge_applies
    from .lars_overflow import overflow_applies
    from .recovery import law_applies

    if law_applies(run) == "":  # "" means no reason against it
        return "law"
    if level == "complete" and metric == "effective_rank" and decay_edge_applies(run) == "":
        return "decay"
    if level == "dimensional" and metric == "effective_rank" and overflow_applies(run) == "":
        return "overflow"
    return "none"


def predict_encoder_onset(run: RunConfig, level: str = "dimensional", device: str = "cpu",
                          reference_rank: float | None = None) -> float:
    """Predicted learning rate above which training the MLP ``run`` ends at collapse ``level``
    (of the embeddings the loss sees): by the recovery law where it applies (SGD and heavy ball
    at a constant rate on a loss blind to the embeddings' scale, both levels;
    :mod:`simulate.stability.recovery`, which reads ``reference_rank`` for the dimensional
    level or trains it); LARS's complete level by its weight-decay edge
    (:mod:`simulate.stability.lars_decay`, weight decay > 0) and, without weight decay, its
    dimensional level by the float32 overflow of the embeddings' norm
    (:mod:`simulate.stability.lars_overflow`); else NaN (not predicted: LARS's dimensional
    level with weight decay, Adam, ...; see the module docstring)."""
    from .lars_decay import lars_decay_edge
    from .lars_overflow import lars_overflow_onset
    from .recovery import predict_recovery_onset

    if level not in ("dimensional", "complete"):
        raise ValueError(f"level must be 'dimensional' or 'complete', got {level!r}")
    how = encoder_predictor(_check_run(run), level)
    if how == "law":
        return predict_recovery_onset(run, level, reference_rank, device=device)
    if how == "decay":
        return lars_decay_edge(run)
    if how == "overflow":
        return lars_overflow_onset(run, device)
    return math.nan

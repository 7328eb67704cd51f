"""The predicted onset of collapse of free embeddings trained with SGD momentum, and why the
other optimizers are out of reach.

The pair map (:mod:`simulate.stability.pair_map`) is plain SGD's: a point's two views move
by ``lr`` times their gradient each time the point is in a batch. Heavy-ball momentum in
torch's form (``b = mu b + g``, ``p -= lr b``) keeps moving a row after its gradient: one
gradient ``g`` taken at one update moves the row by ``lr g (1 + mu + mu^2 + ...)`` =
``lr g / (1 - mu)`` in all, and a gradient that repeats update after update moves it by
``lr / (1 - mu)`` per update once the buffer has filled. The escape of the pairs is such a
drift: it builds up over the ``updates_per_point`` a point takes, each far smaller than the
angle it must cover, so momentum multiplies the rate the pair map sees by ``1 / (1 - mu)``,
and the escape edge, and with it the predicted dimensional onset, by ``1 - mu``. Nesterov
(``p -= lr (g + mu b)``) has the same drift limit, ``lr / (1 - mu)`` per update. Weight
decay moves a row along itself, which the renormalisation of the ``sphere_raw`` step
removes (it rescales the rate by ``1 / (1 - lr wd)``, at most 1.0002 at the grids' rates
and wd 1e-6), so it is left out.

Not derived, so not predicted (NaN):

* the complete level with momentum: it needs +-u* to attract, a property of one step of the
  map near the collapsed state, where momentum's oscillatory modes (edge ``2 (1 + mu)``, not
  ``1 - mu``) and the buffer's history both enter;
* LARS: the trust ratio ``trust |W| / |g|`` of the run's whole table changes the rate with
  the gradient's norm at every update (the pair map would need that norm along the run);
* Adam and AdamW: each coordinate is divided by its own running gradient scale, so the step
  no longer follows the gradient's direction that the pair map is built on.

The (1 - mu) scaling is the drift limit: it neglects the updates of the last ``1 / (1 - mu)``
steps, whose momentum has not yet been delivered, and the decay of the buffer between a
point's appearances in batches (both shorten the effective drift a little).
"""

from __future__ import annotations

import math
from dataclasses import replace

from ..config import RunConfig
from .onset import predict_level_onset


def sgd_base(run: RunConfig) -> RunConfig | None:
    """The run with plain SGD in place of its momentum (None for another optimizer):
    the pair map's run."""
    if run.optimizer != "sgd":
        return None
    return replace(run, momentum=0.0, nesterov=False)


def why_not_predicted(run: RunConfig, level: str) -> str | None:
    """Why the optimizer puts ``run`` at ``level`` out of reach (None: it does not)."""
    if run.optimizer == "lars":
        return "LARS's trust ratio changes the rate with the gradient's norm at every update"
    if run.optimizer in ("adam", "adamw"):
        return "Adam divides each coordinate by its own gradient scale: the step leaves the gradient's direction"
    if run.momentum != 0 and level != "dimensional":
        return "the attraction of +-u* under heavy-ball momentum is not derived"
    return None


def predict_optimizer_onset(run: RunConfig, level: str = "complete") -> float:
    """The predicted onset at ``level`` of a free-embedding run under its optimizer: plain SGD
    as :func:`simulate.stability.onset.predict_level_onset`; SGD with momentum mu (heavy ball
    or Nesterov) at the dimensional level ``(1 - mu)`` times plain SGD's; NaN where
    :func:`why_not_predicted` says why."""
    if why_not_predicted(run, level) is not None:
        return math.nan
    value = predict_level_onset(sgd_base(run), level)
    return value * (1.0 - run.momentum)

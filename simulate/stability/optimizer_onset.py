"""Why the table step's optimizers other than plain SGD are out of reach of the pair map,
measured: the optimizer rows of ``python -m figures onset --grid optimizers``.

The pair map (:mod:`simulate.stability.pair_map`) is plain SGD's: a point's two views move
by ``lr`` times their gradient each time the point is in a batch.

* SGD momentum. Heavy ball in torch's form (``b = mu b + g``, ``p -= lr b``; Nesterov alike)
  moves a row by ``lr / (1 - mu)`` per update under a gradient that repeats (the drift
  limit), which would put the escape edge, and the dimensional onset, at ``(1 - mu)`` times
  plain SGD's. Measured (1000 steps, 3 seeds, the onset grids' base configuration), that is
  not what happens: at mu = 0.5 the runs collapse completely at 33.5 (the drift limit says 72;
  plain SGD's attraction edge is 34.4 and its escape edge 145), and at mu = 0.9 (heavy ball or
  Nesterov, tau = 0.2 or 0.5, B = 32 or 64) no run loses half its rank up to 3000 x 2B tau.
  With the rows renormalised after every step, the buffer's old directions keep turning the
  rows, and near +-u* momentum's own modes (edge ``2 (1 + mu)``) enter: neither is in the
  pair map. Momentum is therefore not predicted at either level.
* LARS: the trust ratio ``trust |W| / |g|`` of the run's whole table changes the rate with
  the gradient's norm at every update (the pair map would need that norm along the run).
  Measured: no collapse at either level up to 3000 x 2B tau (momentum 0.9, trust 1e-3).
* Adam and AdamW: each coordinate is divided by its own running gradient scale, so the step
  no longer follows the gradient's direction the pair map is built on. Measured: no
  collapse up to 3000 x 2B tau.
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
    if run.momentum != 0:
        return ("momentum's buffer keeps turning the renormalised rows; its drift limit, (1 - mu) "
                "times the escape edge, was measured wrong (mu 0.5 collapses at the attraction "
                "edge, mu 0.9 not at all)")
    return None


def predict_optimizer_onset(run: RunConfig, level: str = "complete") -> float:
    """The predicted onset at ``level`` of a free-embedding run under its optimizer: plain SGD
    as :func:`simulate.stability.onset.predict_level_onset`; NaN where
    :func:`why_not_predicted` says why."""
    if why_not_predicted(run, level) is not None:
        return math.nan
    return predict_level_onset(run, level)

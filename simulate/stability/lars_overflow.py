"""LARS without weight decay: the rate at which the embeddings' float32 norm overflows and the
network stops learning, the predicted onset of dimensional collapse of the embeddings the
loss sees (the stop derived below; that the stopped state is collapsed, measured).

**The step.** Without weight decay LARS steps each weight matrix ``w`` along
``lr trust |w| g / |g|``: its length is ``lr trust |w|`` whatever the gradient. Heavy ball
builds it up to ``lr trust |w| / (1 - mu)`` along a direction the gradient keeps (Nesterov
too), so a layer moves by the relative step ``eps_t = lr f_t trust / (1 - mu)`` per update,
``f_t`` the schedule's factor (:func:`simulate.engine.schedules.schedule_factors`).

**The growth.** For a layer the loss does not see the scale of (the output layer exactly, a
hidden ReLU layer up to its bias), the gradient is orthogonal to ``w``, so each update
multiplies ``|w|^2`` by ``1 + eps_t^2``. The embeddings are homogeneous in the ``L`` weight
matrices (ReLU; biases aside), so their norm grows as
``|z_T| = |z_0| exp(L/2 sum_t eps_t^2)`` (to first order in ``eps^2``), with ``L`` the number
of weight matrices of the encoder and the projector. Taking the full build-up ``1 / (1 - mu)``
assumes the gradient's direction persists over heavy ball's memory; where it turns, the
growth is slower and the onset higher (measured in docs/onset.md: the paper's recipe 0.74-0.97
of the measured onset; without a projector, less than half). Not for batch norm, which removes
the hidden layers' scale: measured, the norm there grows far slower than with ``L = 1``.

**The stop.** LARS's relative step does not depend on the norm, so in exact arithmetic the
growth changes nothing. In the engine's float32 the squared norm of an embedding overflows at
``|z| = sqrt(float32 max) = 1.8e19`` (:data:`OVERFLOW_NORM`): the normalised embeddings and the
gradient become 0, LARS's ``|g| = 0`` guard applies neither ratio nor step, and the weights
stop where they are. The predicted onset is the rate whose run reaches that norm by its last
update, ``lr* = (1 - mu) / trust x sqrt(2 ln(OVERFLOW_NORM / |z_0|) / (L sum_t f_t^2))``
(``|z_0|``: the root-mean-square norm of the initial embeddings on the first minibatch). It
falls as ``1 / sqrt(steps)``. That the stopped state is dimensionally collapsed is measured (its
rank 1.0-2.8 in the paper's recipe at 1000 and 3000 steps, not always at or below 1.5), as for
the weight-decay edge (:mod:`simulate.stability.lars_decay`): docs/onset.md.
"""

from __future__ import annotations

import math

import numpy as np

from ..config import RunConfig
from .lars_decay import lars_premise

#: the embeddings' norm whose square overflows float32 (the engine's MLP dtype)
OVERFLOW_NORM = math.sqrt(float(np.finfo(np.float32).max))
#: the largest relative step per update at the onset, ``eps* = lr* trust / (1 - mu)``, for which
#: the growth's first order in ``eps^2`` holds (``ln(1 + eps^2)`` within 12% of ``eps^2``);
#: shorter runs need larger steps to overflow, and there the onset is not predicted
MAX_ONSET_STEP = 0.5


def overflow_applies(run: RunConfig) -> str:
    """``""`` when the overflow onset predicts ``run``'s dimensional onset (of the embeddings
    the loss sees), else why not (a sentence)."""
    if why := lars_premise(run, "overflow onset"):
        return why
    if run.weight_decay > 0:
        return "the overflow onset needs weight_decay = 0 (decay bounds the weights: see the weight-decay edge)"
    if run.batch_norm:
        return "the overflow onset is not derived with batch norm (it removes the hidden layers' scale)"
    return ""


def growth_layers(run: RunConfig) -> int:
    """``L``: the weight matrices whose norms multiply into the embeddings' (module docstring)."""
    return run.depth + len(run.projector_widths)


def initial_norm(run: RunConfig, device: str = "cpu") -> float:
    """The root-mean-square norm of ``run``'s initial embeddings on its first minibatch."""
    from .curvature import make_objective

    obj = make_objective(run, device=device)
    z = obj.embed(obj.theta0)
    return float(z.pow(2).sum(-1).mean().sqrt())


def onset_step(run: RunConfig, device: str = "cpu") -> float:
    """``eps*``: the relative step per update at the schedule's peak that brings ``run``'s
    embeddings to :data:`OVERFLOW_NORM` by its last update (module docstring)."""
    from ..engine.schedules import schedule_factors

    s2 = float(np.sum(schedule_factors(run.steps, run.warmup_steps, run.schedule) ** 2))
    return math.sqrt(2 * math.log(OVERFLOW_NORM / initial_norm(run, device)) / (growth_layers(run) * s2))


def lars_overflow_onset(run: RunConfig, device: str = "cpu") -> float:
    """The learning rate ``eps* (1 - mu) / trust`` above which ``run``'s embeddings reach
    :data:`OVERFLOW_NORM` within its steps (module docstring); NaN where
    :func:`overflow_applies` says no or ``eps*`` exceeds :data:`MAX_ONSET_STEP` (too short a
    run)."""
    if overflow_applies(run):
        return math.nan
    eps = onset_step(run, device)
    return math.nan if eps > MAX_ONSET_STEP else (1 - run.momentum) / run.lars_trust * eps

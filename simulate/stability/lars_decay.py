"""The weight-decay edge of LARS: the rate above which LARS-trained encoders collapse
completely (derived; the evidence is in docs/onset.md).

LARS (:mod:`simulate.engine.optimizers`, torch's momentum convention) steps each adapted
weight ``w`` (every layer's matrix; biases get plain ``lr g``) along ``r (g + wd w)`` with
the trust ratio ``r = trust |w| / (|g| + wd |w| + eps)``.

1. *The loss barely sees a layer's scale.* It reads normalised outputs of a ReLU network: the
   output layer's scale is removed exactly (its gradient is orthogonal to it and shrinks as
   ``1 / |w|``), a hidden layer's up to its bias. So ``|g| |w|`` stays of order one while
   ``|w|`` changes.
2. *Large steps grow the weights.* A step orthogonal to ``w`` of relative length ``s``
   multiplies ``|w|`` by ``sqrt(1 + s^2)``. LARS's relative step is ``lr trust`` (times
   momentum's gain), whatever the gradient: at the rates in question (``lr trust`` of order
   one) every update grows the weights, ``|g|`` falls as ``1 / |w|`` and ``wd |w|`` grows,
   until ``|g| << wd |w|``.
3. *The weight-decay limit.* There ``r -> trust / wd`` and the step is
   ``trust w + (trust / wd) g``. Its first term is plain SGD on a quadratic of curvature
   ``trust``, the same for every layer whatever the data, the loss, the width or the value of
   ``wd``. Under torch's momentum rule it is stable iff ``lr trust < c``, with ``c`` the
   momentum factor of :func:`simulate.stability.optimizer_edges.momentum_edge`
   (``2 (1 + mu)``; Nesterov ``2 (1 + mu) / (1 + 2 mu)``), crossed at ``z = -1``.
4. *Below the edge* the decay term pulls the weights back until ``|g| ~ wd |w|``, where the
   gradient steers again: the run trains, and its rank recovers as the schedule lowers the
   rate. *Above it* the weights flip sign and grow by the unstable root's modulus at every
   update. The gradient's share of the step, ``|g| / (wd |w|)``, falls as ``1 / |w|^2``:
   the network stops learning and keeps the state its first large updates left. (In float64
   the norms reach 1e32-1e112 and shrink again once a cosine schedule takes the rate back
   under the edge; the embeddings stay collapsed. In the engine's float32 the embeddings'
   norm overflows first, near 1e19: the normalised embeddings and so the gradient become 0,
   LARS then applies neither its ratio nor the decay, and the weights stop where they are.)

What is derived is the edge and the freeze. That the frozen state is collapsed is measured:
the embeddings the loss sees end on one direction (effective rank <= 1.5) in the paper's
recipe. The representation before a projector freezes too but is not always collapsed, so
the prediction is for the embeddings the loss sees only.

The predicted complete onset is ``c / (trust * peak)``: ``peak`` is the largest factor the
schedule puts on ``lr`` (1, unless the warmup outlasts the run). It needs ``wd > 0``: without
weight decay nothing pulls the weights back at any rate, and there is no edge.
"""

from __future__ import annotations

import math

from ..config import RunConfig
from .optimizer_edges import momentum_edge
from .recovery import SCALE_FREE_LOSSES


def lars_premise(run: RunConfig, what: str) -> str:
    """``""`` when ``run`` is an MLP encoder trained by LARS on a loss blind to the embeddings'
    scale (what the LARS onsets ``what`` derive from), else why not (a sentence)."""
    if run.model != "mlp":
        return f"the {what} is for MLP encoders"
    if run.optimizer != "lars":
        return f"the {what} is LARS's"
    if run.loss not in SCALE_FREE_LOSSES:
        return f"the {what} needs a loss blind to the embeddings' scale; {run.loss} reads it"
    return ""


def decay_edge_applies(run: RunConfig) -> str:
    """``""`` when the weight-decay edge predicts ``run``'s complete onset (of the embeddings
    the loss sees), else why not (a sentence)."""
    if why := lars_premise(run, "weight-decay edge"):
        return why
    if not run.weight_decay > 0:
        return "the weight-decay edge needs weight_decay > 0 (without it nothing bounds LARS's weights)"
    return ""


def schedule_peak(run: RunConfig) -> float:
    """The largest factor ``run``'s schedule puts on ``lr``: ``steps / warmup_steps`` when the
    warmup outlasts the run, else 1 (the warmup ends at ``lr``; a cosine starts there)."""
    w = run.warmup_steps
    return run.steps / w if w > run.steps else 1.0


def lars_decay_edge(run: RunConfig) -> float:
    """The learning rate ``c / (trust * peak)`` above which LARS's weight-decay term is
    unstable (module docstring); NaN where :func:`decay_edge_applies` says no."""
    if decay_edge_applies(run):
        return math.nan
    return momentum_edge(run.momentum, run.nesterov) / (run.lars_trust * schedule_peak(run))

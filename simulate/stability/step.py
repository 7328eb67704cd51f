"""The step map: the engine's training step of free embeddings, written to be differentiated.

The step is the engine's update of free embeddings on one batch: rows ``z = [z1; z2]``
(2B, D), the loss of the run (any base loss of :mod:`simulate.losses`, plus CLOP), a plain
gradient step of size ``lr`` (with weight decay if the run has it), and, in the sphere modes,
renormalisation of every row (see :mod:`simulate.models`). A full batch is the batch of all
N points (B = N). :func:`make_step` builds that map in float64 (:class:`StepMap`, with
Jacobian-vector products of one or more steps); its spectra are in
:mod:`simulate.stability.spectra`.

What is written here rather than taken from the engine (the engine's pieces are not
twice-differentiable): NT-Xent is evaluated as :func:`simulate.losses.supcon` without labels
(the same value: SupCon falls back to the other view as the only positive) because
``nt_xent``'s analytic backward cannot be differentiated again; the cosine CLOP term is
written from its formula (``lambda * mean over labelled points of (d(z, p) + d(z', p)) / 2``
with ``d = 1 - cos``; :func:`simulate.losses.clop.clop_rows` uses an analytic backward for it).
Momentum is not covered (the state would include the momentum buffer); MLP encoders are not
covered (the state is the free embeddings).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
from torch.func import jvp, vjp

from ..config import RunConfig
from ..losses import BASE_LOSSES, dcl, make_prototypes, supcon
from ..losses.clop import clop_rows

DT = torch.float64


def _check_run(run: RunConfig) -> RunConfig:
    """``run``, checked to be one the analysis covers: free embeddings, plain SGD at a
    constant rate, no momentum."""
    if not isinstance(run, RunConfig):
        raise ValueError(f"run must be a simulate.config.RunConfig, got {type(run).__name__}")
    if run.model != "free":
        raise ValueError(f"run.model must be 'free' (the stability analysis acts on free "
                         f"embeddings), got {run.model!r}")
    if run.momentum != 0:
        raise ValueError(f"run.momentum must be 0 for the stability analysis, got {run.momentum!r}")
    if run.optimizer != "sgd" or run.schedule != "constant" or run.warmup_steps != 0:
        raise ValueError(f"run.optimizer must be 'sgd' with schedule 'constant' and no warmup for "
                         f"the stability analysis, got {run.optimizer!r}, {run.schedule!r}, "
                         f"warmup_steps {run.warmup_steps!r}")
    return run


def cosine_clop(z: torch.Tensor, labels: torch.Tensor, protos: torch.Tensor) -> torch.Tensor:
    """Cosine CLOP with weight 1 on rows ``z = [z1; z2]`` (2B, D), labels (B,): the mean over
    labelled points of ``(1 - cos(z_i, p) + 1 - cos(z'_i, p)) / 2``; 0 without labels."""
    b = labels.shape[0]
    lab = labels >= 0
    m = int(lab.sum())
    if m == 0:
        return z.new_zeros(())
    u = z / z.norm(dim=-1, keepdim=True)
    p = protos[labels.clamp(min=0)]
    cos = (u[:b] * p).sum(-1) + (u[b:] * p).sum(-1)
    return ((1 - cos / 2) * lab).sum() / m


@dataclass
class StepMap:
    """The training step of one run on one batch, as a function of the rows ``z`` (2B, D).

    Attributes:
        run: the configuration (loss, temperature, CLOP weight and distance, update mode,
            weight decay); ``lr`` the learning rate used (the run's unless overridden).
        labels: (B,) int64, -1 for unlabelled points (CLOP and SupCon read them).
        prototypes: (K, D) float64 or None (no CLOP).
    """

    run: RunConfig
    lr: float
    labels: torch.Tensor
    prototypes: torch.Tensor | None

    @property
    def raw(self) -> bool:
        return self.run.update_mode == "sphere_raw"

    def loss(self, z: torch.Tensor) -> torch.Tensor:
        """The run's objective on the rows ``z`` (2B, D): base loss + lambda * CLOP."""
        run, b = self.run, z.shape[0] // 2
        z1, z2 = z[:b], z[b:]
        norm = not self.raw
        if run.loss == "ntxent":
            val = supcon(z1, z2, None, run.temperature, norm)
        elif run.loss == "supcon":
            val = supcon(z1, z2, self.labels, run.temperature, norm)
        elif run.loss == "dcl":
            val = dcl(z1, z2, run.temperature, norm)
        else:
            val = BASE_LOSSES[run.loss]()(z1, z2, None, norm)
        if self.prototypes is not None and run.clop_weight > 0:
            if run.distance == "cosine":
                term = cosine_clop(z, self.labels, self.prototypes)
            else:
                term = clop_rows(z[None], self.labels[None], self.prototypes, run.distance)[0]
            val = val + run.clop_weight * term
        return val

    def grad(self, z: torch.Tensor) -> torch.Tensor:
        return torch.func.grad(self.loss)(z)

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        g = self.grad(z)
        if self.run.weight_decay:
            g = g + self.run.weight_decay * z
        new = z - self.lr * g
        if self.run.update_mode != "free":
            new = new / new.norm(dim=-1, keepdim=True)
        return new

    def iterate(self, z: torch.Tensor, steps: int) -> torch.Tensor:
        for _ in range(steps):
            z = self(z)
        return z

    def jvp(self, z: torch.Tensor, v: torch.Tensor, steps: int = 1) -> torch.Tensor:
        """``J v`` for the Jacobian ``J`` of ``steps`` steps at ``z``."""
        return jvp(lambda x: self.iterate(x, steps), (z,), (v,))[1]

    def vjp(self, z: torch.Tensor, v: torch.Tensor, steps: int = 1) -> torch.Tensor:
        """``J^T v`` for the Jacobian ``J`` of ``steps`` steps at ``z``."""
        _, pull = vjp(lambda x: self.iterate(x, steps), z)
        return pull(v)[0]


def make_step(run: RunConfig, labels=None, lr: float | None = None) -> StepMap:
    """The step map of ``run`` on a batch with ``labels`` (B,) (None: unlabelled).

    ``lr`` overrides the run's learning rate. The prototypes are the engine's
    (:func:`simulate.losses.make_prototypes` of the run's k, embedding dimension and kind).
    """
    run = _check_run(run)
    if lr is not None and not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
    if labels is not None:
        labels = torch.as_tensor(labels, dtype=torch.int64)
        if labels.dim() != 1:
            raise ValueError(f"labels must have shape (B,), got {tuple(labels.shape)}")
    protos = None
    if run.clop_weight > 0:
        protos = make_prototypes(run.k, run.embedding_dim, run.prototypes).to(DT)
    return StepMap(run, float(run.lr if lr is None else lr),
                   labels if labels is not None else torch.empty(0, dtype=torch.int64), protos)


def _labels_for(step: StepMap, b: int) -> StepMap:
    if step.labels.numel() == b:
        return step
    if step.labels.numel() == 0:
        return replace(step, labels=torch.full((b,), -1, dtype=torch.int64))
    raise ValueError(f"labels must have shape ({b},) for a state of {2 * b} rows, "
                     f"got {tuple(step.labels.shape)}")

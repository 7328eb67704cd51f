"""The objective of a chunk: each run's base loss plus its CLOP term, over stacked rows."""

from __future__ import annotations

import torch

from ..config import RunConfig
from ..losses import BASE_LOSSES, TEMPERATURE_LOSSES
from ..losses.clop import clop_rows
from .state import ChunkState


def base_loss_fn(run: RunConfig):
    """The validating loss module of a run's base loss."""
    cls = BASE_LOSSES[run.loss]
    return cls(run.temperature) if run.loss in TEMPERATURE_LOSSES else cls()


def objective(state: ChunkState, loss_fn, z: torch.Tensor, labels) -> torch.Tensor:
    """Per-run objective ``base + clop_weight_r * CLOP`` (R,) on the rows ``z = [z1; z2]``."""
    raw = state.runs[0].update_mode == "sphere_raw"
    b = labels.shape[1]
    if hasattr(loss_fn, "forward_rows") and z.dtype in (torch.float32, torch.float64):
        loss = loss_fn.forward_rows(z, labels, normalize=not raw)
    else:
        loss = loss_fn(z[:, :b], z[:, b:], labels, normalize=not raw)
    if state.prototypes is not None:
        # labels and prototypes were validated when the chunk was built
        loss = loss + state.clop_weight * clop_rows(z, labels, state.prototypes, state.runs[0].distance)
    return loss

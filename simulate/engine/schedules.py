"""The per-run learning-rate schedule: linear warmup, then constant or cosine decay, as factors
of each run's learning rate (the optimizers of :mod:`simulate.engine.optimizers` and the table
rules of :mod:`simulate.engine.table` read them)."""

from __future__ import annotations

import math

import numpy as np
import torch


def schedule_factors(steps: int, warmup_steps: int = 0, schedule: str = "constant") -> np.ndarray:
    """The learning-rate factor of each update ``t = 1 .. steps`` (float64, (steps,)): update
    ``t <= W`` (``W = warmup_steps``) uses ``t / W``; after it, ``constant`` keeps 1 and
    ``cosine`` uses ``(1 + cos(pi (t - W - 1) / (steps - W))) / 2``. The same factors as
    ``SequentialLR([LinearLR(start_factor=1/W, total_iters=W-1), CosineAnnealingLR(
    T_max=steps-W)], milestones=[W])`` stepped once after every update (without the cosine
    part for ``constant`` or when ``W >= steps``; without the warmup part for ``W = 0``)."""
    t = np.arange(1, steps + 1, dtype=np.float64)
    w = warmup_steps
    f = np.ones(steps)
    if schedule == "cosine" and steps > w:  # (no update after a warmup of W >= steps)
        f = 0.5 * (1.0 + np.cos(math.pi * (t - w - 1) / (steps - w)))
    elif schedule not in ("constant", "cosine"):
        raise ValueError(f"schedule must be constant or cosine, got {schedule!r}")
    if w > 0:
        f = np.where(t <= w, t / w, f)
    return f


def factor_table(runs) -> np.ndarray:
    """Per-run learning-rate factors (steps, R), float64 (:func:`schedule_factors`)."""
    return np.stack([schedule_factors(runs[0].steps, r.warmup_steps, r.schedule) for r in runs], 1)


def lr_table(runs, device) -> torch.Tensor | None:
    """Per-run learning-rate factors (steps, R) float64 on ``device``, or None when every run
    keeps its learning rate constant (no warmup, constant schedule)."""
    if all(r.warmup_steps == 0 and r.schedule == "constant" for r in runs):
        return None
    return torch.as_tensor(factor_table(runs), device=device)

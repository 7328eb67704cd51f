"""Shared helpers of the losses: shapes, validation, dtype-aware masking."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

HALF = (torch.float16, torch.bfloat16)


def as_runs(*xs: torch.Tensor) -> tuple[bool, list[torch.Tensor]]:
    """Give every tensor a leading run dimension. Returns (was_unbatched, tensors)."""
    if xs[0].dim() == 2:
        return True, [x.unsqueeze(0) for x in xs]
    return False, list(xs)


def finish(loss: torch.Tensor, unbatched: bool, dtype: torch.dtype) -> torch.Tensor:
    loss = loss.to(dtype)
    return loss[0] if unbatched else loss


def check_views(z1: torch.Tensor, z2: torch.Tensor, min_batch: int = 1, why: str = "") -> None:
    """Same shapes, (B, D) or (R, B, D), and at least ``min_batch`` rows per view."""
    if z1.shape != z2.shape:
        raise ValueError(f"z2 must have the shape of z1 {tuple(z1.shape)}, got {tuple(z2.shape)}")
    if z1.dim() not in (2, 3):
        raise ValueError(f"z1 must have shape (B, D) or (R, B, D), got {tuple(z1.shape)}")
    if z1.shape[-2] < min_batch:
        raise ValueError(f"batch size must be >= {min_batch} for {why}, got {z1.shape[-2]}")


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Half-precision inputs are reduced in float32 (the result is cast back)."""
    return torch.float32 if dtype in HALF else dtype


def unit(z: torch.Tensor, normalize: bool = True) -> torch.Tensor:
    return F.normalize(z, dim=-1) if normalize else z


def masked_logsumexp(s: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """log-sum-exp over the last dim of ``s`` where ``mask`` (broadcastable to ``s``) is True.

    Masked entries get ``torch.finfo(dtype).min`` added (dtype-aware, never a bare -1e9):
    they contribute exactly zero, and a row with every entry masked stays finite.
    """
    bias = torch.zeros(mask.shape, dtype=s.dtype, device=s.device)
    bias.masked_fill_(~mask, torch.finfo(s.dtype).min)
    return torch.logsumexp(s + bias, dim=-1)


def positive_number(name: str, value: float) -> float:
    v = float(value)
    if not (math.isfinite(v) and v > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return v


def nonnegative_number(name: str, value: float) -> float:
    v = float(value)
    if not (math.isfinite(v) and v >= 0):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return v


def check_labels(labels: torch.Tensor | None, runs: int, batch: int, k: int | None = None):
    """Labels (B,) or (R, B), int, -1 for unlabelled, else in [0, k)."""
    if labels is None:
        return None
    if labels.dim() == 1:
        labels = labels.unsqueeze(0).expand(runs, -1)
    if labels.shape != (runs, batch):
        raise ValueError(f"labels must have shape ({batch},) or ({runs}, {batch}), got {tuple(labels.shape)}")
    if labels.dtype.is_floating_point:
        raise ValueError("labels must be an integer tensor")
    if labels.numel() and int(labels.min()) < -1:
        raise ValueError(f"labels must be -1 (unlabelled) or in [0, k), got {int(labels.min())}")
    if k is not None and labels.numel() and int(labels.max()) >= k:
        raise ValueError(f"labels must be -1 (unlabelled) or in [0, {k}), got {int(labels.max())}")
    return labels


class TemperatureLoss(nn.Module):
    """Base of the temperature-scaled cosine losses: holds and validates ``temperature``.

    Subclasses implement ``forward(z1, z2, labels=None, normalize=True)``.
    """

    def __init__(self, temperature: float = 0.5):
        super().__init__()
        self.temperature = positive_number("temperature", temperature)

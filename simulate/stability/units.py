"""How many hidden units carry a layer's weights: the participation of an MLP's units.

Under LARS with weight decay the dimensional level is reached in long runs from a relative
step ``lr x trust / (1 - momentum)`` of about a quarter, and nothing derives it yet
(docs/onset.md, LARS's dimensional level). What is measured there: past that step each
layer's weight norm gathers on a few of its units (the paper's recipe, 3000 steps: the second
hidden layer's participation falls from 52-55 of its 64 units to 4-12), the units'
activation patterns take fewer values, and the embeddings gather into a few equal groups
(rank 5.0 and then 3.0). :func:`layer_participation` reads that off a trained model, and
:func:`dead_units` counts the dead ReLUs, units inactive on every training point (the recipe
near the onset: 10-35 of the first layer's 64, holding almost none of the weights).
"""

from __future__ import annotations

import torch

from ..models import StackedMLP


def unit_participation(weight: torch.Tensor) -> torch.Tensor:
    """The participation ratio of a layer's output units in its squared weight norm.

    With ``n_j = |w[:, j]|^2`` (unit ``j``'s incoming weights), ``(sum_j n_j)^2 / sum_j n_j^2``:
    the layer's width when every unit has the same norm, 1 when one unit has it all.

    Args:
        weight: ``(in, out)`` or stacked ``(R, in, out)``, as :class:`simulate.models.StackedMLP`
            keeps its layers.

    Returns:
        ``(R,)`` in float64 (``(1,)`` for an ``(in, out)`` weight), without a graph; NaN for
        a layer whose weights are all zero.
    """
    if not isinstance(weight, torch.Tensor):
        raise ValueError(f"weight must be a torch.Tensor of shape (in, out) or (R, in, out), "
                         f"got {type(weight).__name__}")
    w = weight.detach()
    if w.dim() == 2:
        w = w.unsqueeze(0)
    if w.dim() != 3:
        raise ValueError(f"weight must have shape (in, out) or (R, in, out), got {tuple(weight.shape)}")
    n = w.to(torch.float64).pow(2).sum(1)  # (R, out)
    return n.sum(-1) ** 2 / n.pow(2).sum(-1)


def _check_model(model) -> None:
    if not isinstance(model, StackedMLP):
        raise ValueError(f"model must be an MLP encoder (StackedMLP), got {type(model).__name__}")


def layer_participation(model) -> dict[str, torch.Tensor]:
    """:func:`unit_participation` of every linear layer of an MLP encoder, in order: the
    encoder's (``encoder.0``, ...) then the projector's (``projector.0``, ...). ``model`` is a
    :class:`simulate.models.StackedMLP` (``TrainResult.model`` of an MLP run)."""
    _check_model(model)
    out = {f"encoder.{i}": unit_participation(w) for i, w in enumerate(model.weights)}
    if model.has_projector:
        out |= {f"projector.{i}": unit_participation(w) for i, w in enumerate(model.proj_weights)}
    return out


def dead_units(model, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """How many units of each ReLU layer of an MLP encoder and its projector are dead on
    inputs ``x``: their ReLU's input is <= 0 for every row of ``x``, so they pass nothing on
    and get no gradient from those inputs.

    Args:
        model: a :class:`simulate.models.StackedMLP` (``TrainResult.model`` of an MLP run).
        x: ``(N, in_dim)``, the same inputs for every run (e.g. the training points), or
            ``(R, N, in_dim)``, one set per run; finite. With batch norm the statistics are
            taken over the rows of ``x`` (N >= 2), and a unit constant over them normalises
            to about 0, so whether it counts is a matter of rounding.

    Returns:
        per hidden layer (``encoder.i``, then ``projector.i``; the last layers have no ReLU),
        ``(R,)`` float64 counts without a graph; NaN for a run whose ReLU inputs in that layer
        are not all finite (a diverged run).
    """
    _check_model(model)
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"x must be a torch.Tensor of shape (N, in_dim) or (R, N, in_dim), "
                         f"got {type(x).__name__}")
    runs, in_dim = model.runs, model.weights[0].shape[1]
    shape, rows = tuple(x.shape), 2 if model.batch_norm else 1
    if not (x.dim() in (2, 3) and x.shape[-1] == in_dim and x.shape[-2] >= rows
            and (x.dim() == 2 or x.shape[0] == runs)):
        raise ValueError(f"x must have shape (N, {in_dim}) or ({runs}, N, {in_dim}) with N >= {rows}"
                         f"{' (batch norm)' if model.batch_norm else ''}, got {shape}")
    if x.is_complex() or not bool(torch.isfinite(x).all()):
        raise ValueError("x must be real and finite")
    w = model.weights[0]
    x = x.to(device=w.device, dtype=w.dtype)
    if x.dim() == 2:
        x = x.unsqueeze(0).expand(runs, -1, -1)
    with torch.no_grad():
        inputs = model.relu_inputs(x)
    out = {}
    for name, v in inputs.items():
        count = (v <= 0).all(1).sum(-1).to(torch.float64)
        out[name] = torch.where(torch.isfinite(v).flatten(1).all(1), count, torch.nan)
    return out

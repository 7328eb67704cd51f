"""Models over stacks of runs, and the update modes that match the theory's assumptions.

``FreeEmbeddings`` is the unconstrained-features model: one free vector per data point and
view-independent (both views of point i read row i). ``StackedMLP`` is an encoder whose
weights carry a leading run dimension and are applied with batched matmuls.

Update modes (``UPDATE_MODES``):

* ``free``: the loss normalises inside; parameters take plain gradient steps, so norms grow
  (claim ``norm_growth``).
* ``sphere``: as ``free``, then every embedding row is renormalised after the step: the
  projected step + renormalisation of claims ``anchor_map``, ``pair_map``, ``ntxent_pair``.
* ``sphere_raw``: the loss uses raw dot products of the (unit) rows, so the gradient is
  not projected, then rows are renormalised: claims ``pair_map_unprojected``, ``rank1_cycle``.

The sphere modes apply to free embeddings only.
"""

from __future__ import annotations

import math

import torch
from torch import nn

#: added to the batch variance in the MLP's batch norm (torch.nn.BatchNorm1d's default eps)
BATCH_NORM_EPS = 1e-5

UPDATE_MODES = {
    "free": "plain gradient step; the loss normalises; norms grow",
    "sphere": "projected gradient step, then renormalise rows",
    "sphere_raw": "raw dot-product gradient step, then renormalise rows",
}


def run_generators(seeds) -> list[torch.Generator]:
    """One torch generator per run from integer seeds (independent of the stack a run is in)."""
    return [torch.Generator(device="cpu").manual_seed(int(s)) for s in seeds]


class FreeEmbeddings(nn.Module):
    """Free embeddings ``(R, N, D)``, one row per data point (the engine starts them at the
    data's views, see :func:`simulate.engine.state.build_state`).

    Args:
        weight: the initial rows ``(R, N, D)`` (copied).
    """

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        if weight.dim() != 3:
            raise ValueError(f"weight must have shape (R, N, D), got {tuple(weight.shape)}")
        self.weight = nn.Parameter(weight.detach().clone())

    @property
    def runs(self) -> int:
        return self.weight.shape[0]

    def forward(self, index: torch.Tensor, x=None) -> torch.Tensor:
        """Rows ``index`` (R, B) of each run -> (R, B, D); ``x`` (the data) is ignored."""
        return torch.gather(self.weight, 1, index[..., None].expand(-1, -1, self.weight.shape[-1]))

    @torch.no_grad()
    def renormalise_(self) -> None:
        self.weight.copy_(nn.functional.normalize(self.weight, dim=-1))

    def embed_all(self, x=None) -> torch.Tensor:
        return self.weight


def _uniform_layers(gens, widths, dtype):
    """Weights (R, in, out) and biases (R, 1, out) of linear layers of ``widths``, each drawn
    U(-1/sqrt(in), 1/sqrt(in)) from the runs' generators (weight, then bias, layer by layer)."""
    weights, biases = nn.ParameterList(), nn.ParameterList()
    for fan_in, fan_out in zip(widths[:-1], widths[1:]):
        bound = 1 / math.sqrt(fan_in)
        w = torch.stack([(torch.rand(fan_in, fan_out, generator=g, dtype=torch.float64) * 2 - 1)
                         for g in gens]) * bound
        b = torch.stack([(torch.rand(1, fan_out, generator=g, dtype=torch.float64) * 2 - 1)
                         for g in gens]) * bound
        weights.append(nn.Parameter(w.to(dtype)))
        biases.append(nn.Parameter(b.to(dtype)))
    return weights, biases


class StackedMLP(nn.Module):
    """MLP encoder with weights ``(R, in, out)`` per layer: ReLU between layers, optional
    batch norm (per-run batch statistics, no affine), Kaiming-uniform init per run seed;
    optionally followed by a projector head (SimCLR's g(.)): linear layers of widths
    ``projector`` on the encoder's output, with ReLU (and batch norm) between them.

    The encoder's output is the *representation* (:meth:`represent`); with a projector the
    model's output (what the loss sees) is the *projection*. The projector's weights are
    drawn after the encoder's from the same per-run generators, so the encoder starts the
    same with or without a projector.

    Args:
        seeds: one integer seed per run.
        in_dim, hidden, out_dim: layer widths; depth: number of linear layers (>= 1).
        batch_norm: normalise hidden activations over the batch.
        projector: the projector's layer widths (empty: no projector).

    Shape:
        x: (R, B, in_dim) -> (R, B, projector[-1]) (or (R, B, out_dim) without a projector).
    """

    def __init__(self, seeds, in_dim: int, hidden: int, out_dim: int, depth: int = 3,
                 batch_norm: bool = False, dtype=torch.float32, projector=()):
        super().__init__()
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        for name, v in (("in_dim", in_dim), ("hidden", hidden), ("out_dim", out_dim)):
            if not (isinstance(v, int) and v >= 1):
                raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
        projector = tuple(projector)
        if not all(isinstance(v, int) and v >= 1 for v in projector):
            raise ValueError(f"projector widths must be integers >= 1, got {projector!r}")
        widths = [in_dim] + [hidden] * (depth - 1) + [out_dim]
        gens = run_generators(seeds)
        self.weights, self.biases = _uniform_layers(gens, widths, dtype)
        self.has_projector = bool(projector)
        if projector:
            self.proj_weights, self.proj_biases = _uniform_layers(gens, [out_dim, *projector], dtype)
        self.batch_norm = batch_norm

    @property
    def runs(self) -> int:
        return self.weights[0].shape[0]

    def _layers(self, h, weights, biases, relu_inputs: list | None = None):
        """The layers ``weights``, ``biases`` applied to ``h``; each ReLU's input is appended
        to the list ``relu_inputs`` when one is given."""
        last = len(weights) - 1
        for i, (w, b) in enumerate(zip(weights, biases)):
            h = torch.baddbmm(b, h, w)
            if i < last:
                if self.batch_norm:
                    h = (h - h.mean(1, keepdim=True)) / (h.var(1, unbiased=False, keepdim=True) + BATCH_NORM_EPS).sqrt()
                if relu_inputs is not None:
                    relu_inputs.append(h)
                h = torch.relu(h)
        return h

    def relu_inputs(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """What each ReLU of the model receives for inputs ``x`` (R, N, in_dim): ``(R, N, width)``
        per hidden layer, after batch norm when there is one, keyed ``encoder.i`` (the encoder's
        layer ``i``) and ``projector.i``; the encoder's and the projector's last layers have no
        ReLU and no entry."""
        enc: list = []
        h = self._layers(x, self.weights, self.biases, enc)
        out = {f"encoder.{i}": v for i, v in enumerate(enc)}
        if self.has_projector:
            proj: list = []
            self._layers(h, self.proj_weights, self.proj_biases, proj)
            out |= {f"projector.{i}": v for i, v in enumerate(proj)}
        return out

    def represent(self, x: torch.Tensor) -> torch.Tensor:
        """The encoder's output (the representation), before any projector."""
        return self._layers(x, self.weights, self.biases)

    def project(self, h: torch.Tensor) -> torch.Tensor:
        """The projector applied to representations ``h`` (``h`` itself without a projector)."""
        return self._layers(h, self.proj_weights, self.proj_biases) if self.has_projector else h

    def forward(self, index=None, x: torch.Tensor | None = None) -> torch.Tensor:
        return self.project(self.represent(x))

    def embed_all(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward(None, x)

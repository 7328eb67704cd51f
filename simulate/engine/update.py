"""Update rules over stacked parameters: the SGD step (per-run learning rate, momentum,
weight decay) and the sparse step of free embeddings, which moves only the batch's rows.

A run is updated only while it is alive and its new parameters are finite; the rules return
that per-run mask, and the loop marks the other runs diverged.
"""

from __future__ import annotations

import torch

from ..losses.clop import prototype_rows, prototype_weights
from .fused import ntxent_clop_value_and_grad
from .objective import objective
from .state import ChunkState
from .streams import EpochTable


@torch.no_grad()
def sgd_step(params, grads, bufs, state: ChunkState, alive: torch.Tensor, first: bool) -> torch.Tensor:
    """``torch.optim.SGD`` semantics (no dampening, no Nesterov) with per-run hyper-parameters,
    over stacked parameters. A run is updated only if it is alive and its new parameters are
    all finite; returns that per-run mask (the others keep their parameters and buffers)."""
    R = alive.shape[0]
    use_wd, use_mom = state.use_weight_decay, state.use_momentum
    new_p, new_b = [], []
    for p, g, buf in zip(params, grads, bufs):
        shape = (-1,) + (1,) * (p.dim() - 1)
        d_p = g + state.weight_decay.view(shape) * p if use_wd else g
        b = d_p if (first or not use_mom) else buf * state.momentum.view(shape) + d_p
        new_p.append(p - state.lr.view(shape) * b)
        new_b.append(b)
    ok = alive & finite_per_run(new_p, R)  # non-finite gradients or buffers reach the parameters
    for p, buf, u, b in zip(params, bufs, new_p, new_b):
        keep = ok.view((-1,) + (1,) * (p.dim() - 1))
        p.copy_(torch.where(keep, u, p))
        if use_mom:
            buf.copy_(torch.where(keep, b, buf))
    return ok


def relative_change(params, previous) -> torch.Tensor:
    """Per-run ``||theta - theta_prev|| / ||theta_prev||`` over all parameters (R,), float64.
    Exactly 0 when no parameter moved: a stationary point, or updates below the dtype's
    resolution (a frozen run)."""
    R = params[0].shape[0]
    num = sum(((p.double() - q.double()) ** 2).reshape(R, -1).sum(1) for p, q in zip(params, previous))
    den = sum((q.double() ** 2).reshape(R, -1).sum(1) for q in previous)
    return num.sqrt() / den.sqrt()


def finite_per_run(tensors, runs: int) -> torch.Tensor:
    """Per-run finiteness, via one sum per tensor (a NaN or inf anywhere makes the sum
    non-finite; so does a finite sum that overflows, which only happens to runaway runs)."""
    ok = torch.ones(runs, dtype=torch.bool, device=tensors[0].device)
    for t in tensors:
        ok &= torch.isfinite(t.reshape(runs, -1).sum(1))
    return ok



class SparseStep:
    """Plain SGD (no momentum, no weight decay) on free embeddings, touching only the rows of
    the batch: the same update as the dense step, whose gradient is zero on every other row.
    The rows live in an :class:`EpochTable` (the model's weight is brought up to date by
    :meth:`sync`); NT-Xent with or without cosine CLOP takes the fused value and gradient,
    every other objective autograd on the batch's rows."""

    def __init__(self, state: ChunkState, loss_fn, sphere: bool):
        self.state, self.loss_fn, self.sphere = state, loss_fn, sphere
        self.table = EpochTable(state.model.weight, state.runs[0].batch_size)
        # this epoch's CLOP targets and row weights (fused path): each batch's weights depend
        # on its own number of labelled points
        self.clop_targets: torch.Tensor | None = None  # (R, N', D)
        self.clop_row_weights: torch.Tensor | None = None  # (R, N')

    def sync(self) -> None:
        self.table.sync()

    def __call__(self, labels, alive, value: bool = True):
        """One step. Returns (per-run loss, or None when ``value`` is False and the fused
        path can skip it; per-run mask of the runs updated). A non-finite loss always shows
        in the gradient (through ``log zsum``, ``P = e / zsum`` or the rows), so the update
        check finds it."""
        state, stream = self.state, self.state.stream
        if stream.new_epoch:
            self.table.open(stream.perm)
        z = self.table.batch(stream.j - 1)  # a view: updated in place
        R = z.shape[0]
        if state.fused:
            # every run's gradient is its own; the runs that are dead or not finite are masked below
            clop = None
            if state.prototypes is not None:
                if stream.new_epoch:
                    used = stream.epoch_labels[:, : stream.per_epoch * stream.b]
                    self.clop_targets = prototype_rows(used, state.prototypes)
                    self.clop_row_weights = prototype_weights(used.reshape(-1, stream.b), z.dtype).view(used.shape)
                batch = stream.batch_slice()
                clop = (self.clop_targets[:, batch], self.clop_row_weights[:, batch], state.clop_weight)
            loss, g = ntxent_clop_value_and_grad(z, state.runs[0].temperature, clop, value=value)
            finite = alive if loss is None else torch.isfinite(loss)
        else:
            leaf = z.detach().requires_grad_(True)
            loss = objective(state, self.loss_fn, leaf, labels)
            finite = torch.isfinite(loss)
            total = torch.where(alive & finite, loss, torch.zeros_like(loss)).sum()
            (g,) = torch.autograd.grad(total, [leaf])
        with torch.no_grad():
            upd = torch.addcmul(z, state.lr.view(-1, 1, 1), g, value=-1.0)
            if self.sphere:
                upd = torch.nn.functional.normalize(upd, dim=-1)
            ok = alive & finite & finite_per_run([upd], R)
            if z.device.type == "cpu" and bool(ok.all()):  # (a device would wait for this test)
                z.copy_(upd)
            else:
                z.copy_(torch.where(ok.view(-1, 1, 1), upd, z))
        return loss, ok

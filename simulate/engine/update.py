"""Update rules over stacked parameters: the optimizers (``sgd``, ``lars``, ``adam``,
``adamw``; one update for all runs of a chunk, with per-run hyper-parameters), the per-run
learning-rate schedule, and the sparse step of free embeddings, which moves only the batch's
rows.

Every rule acts on parameters with a leading run dimension ``(R, ...)``; the runs of a chunk
share one optimizer (it is part of the chunk key) but each has its own learning rate, schedule,
momentum, Nesterov flag, weight decay, betas, eps and LARS trust coefficient (tensors (R,)).
A run is updated only while it is alive and its new parameters are finite; the rules return
that per-run mask (the other runs keep their parameters and optimizer state), and the loop
marks the other runs diverged.

The rules, for one run and one parameter tensor ``p`` with gradient ``g`` at update ``t``
(1-based) and learning rate ``lr_t`` (the schedule's, :func:`schedule_factors`):

* ``sgd``: ``torch.optim.SGD`` (no dampening): ``d = g + wd p``; ``b = d`` at t = 1, else
  ``b = mu b + d``; ``p -= lr_t (d + mu b)`` with Nesterov, else ``p -= lr_t b``.
* ``lars``: LARS (You, Gitman, Ginsburg 2017, eq. (6)) in the form of the SimCLR/BYOL
  reimplementations (lightly's ``lightly.utils.lars.LARS``, solo-learn's ``LARS``): for a
  weight matrix (each layer, each run) with ``|p| > 0`` and ``|g| > 0``,
  ``d = eta |p| / (|g| + wd |p| + eps) * (g + wd p)`` (``eta`` = ``lars_trust``, norms over
  the whole layer of the run); otherwise, and always for biases (and normalisation
  parameters; the MLP's batch norm has none), ``d = g``: no adaptation, no weight decay.
  Then the SGD momentum of the line above on ``d`` (Nesterov optional), ``p -= lr_t b``.
* ``adam``: ``torch.optim.Adam``: ``g += wd p``; ``m = b1 m + (1 - b1) g``,
  ``v = b2 v + (1 - b2) g^2``; ``p -= lr_t / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)``.
* ``adamw``: ``torch.optim.AdamW``: ``p *= 1 - lr_t wd`` first, then Adam's step without
  the L2 term.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..losses.clop import prototype_rows, prototype_weights
from .fused import ntxent_clop_value_and_grad
from .objective import objective
from .state import ChunkState
from .streams import EpochTable


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


def lr_table(runs, device) -> torch.Tensor | None:
    """Per-run learning-rate factors (steps, R) float64 on ``device``, or None when every run
    keeps its learning rate constant (no warmup, constant schedule)."""
    if all(r.warmup_steps == 0 and r.schedule == "constant" for r in runs):
        return None
    steps = runs[0].steps
    f = np.stack([schedule_factors(steps, r.warmup_steps, r.schedule) for r in runs], 1)
    return torch.as_tensor(f, device=device)


def _col(v: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """A per-run tensor (R,) shaped to broadcast over ``p`` (R, ...)."""
    return v.view((-1,) + (1,) * (p.dim() - 1))


@torch.no_grad()
def sgd_step(params, grads, bufs, state: ChunkState, alive: torch.Tensor, first: bool,
             lr: torch.Tensor | None = None) -> torch.Tensor:
    """``torch.optim.SGD`` semantics (no dampening; Nesterov per run) with per-run
    hyper-parameters, over stacked parameters; ``lr`` (R,) this update's learning rate (None:
    ``state.lr``). A run is updated only if it is alive and its new parameters are all finite;
    returns that per-run mask (the others keep their parameters and buffers)."""
    R = alive.shape[0]
    lr = state.lr if lr is None else lr
    use_wd, use_mom = state.use_weight_decay, state.use_momentum
    new_p, new_b = [], []
    for p, g, buf in zip(params, grads, bufs):
        d_p = g + _col(state.weight_decay, p) * p if use_wd else g
        b = d_p if (first or not use_mom) else buf * _col(state.momentum, p) + d_p
        step = b
        if state.use_nesterov:
            step = torch.where(_col(state.nesterov, p), d_p + _col(state.momentum, p) * b, b)
        new_p.append(p - _col(lr, p) * step)
        new_b.append(b)
    return _commit(params, new_p, [(bufs, new_b)] if use_mom else [], alive, R)


def _commit(params, new_p, states, alive, R) -> torch.Tensor:
    """Write the new parameters (and optimizer state: pairs of (old list, new list)) of the
    runs that are alive and finite; return that mask. When every run passes (on the CPU,
    where the test costs no device wait), the new tensors are taken whole."""
    ok = alive & finite_per_run(new_p, R)  # non-finite gradients or buffers reach the parameters
    every = params[0].device.type == "cpu" and bool(ok.all())
    for i, p in enumerate(params):
        if every:
            p.copy_(new_p[i])
            for old, new in states:
                old[i] = new[i]
            continue
        keep = _col(ok, p)
        p.copy_(torch.where(keep, new_p[i], p))
        for old, new in states:
            old[i] = torch.where(keep, new[i], old[i])
    return ok


class StackedOptimizer:
    """One optimizer for all runs of a chunk (see the module docstring for the rules).

    Args:
        state: the chunk (per-run hyper-parameters as tensors (R,); ``runs[0].optimizer``).
        named_params: ``(name, parameter)`` pairs of the model; LARS leaves the parameters
            whose name contains ``bias`` out of adaptation and weight decay.
    """

    def __init__(self, state: ChunkState, named_params):
        self.state = state
        self.kind = state.runs[0].optimizer
        self.names = [n for n, _ in named_params]
        self.params = [p for _, p in named_params]
        self.adapt = ["bias" not in n for n in self.names]
        zeros = lambda: [torch.zeros_like(p) for p in self.params]  # noqa: E731
        self.bufs = zeros()
        if self.kind in ("adam", "adamw"):
            self.exp_avg, self.exp_avg_sq = zeros(), zeros()
        self.lr_table = lr_table(state.runs, state.lr.device)

    def lr_at(self, t: int) -> torch.Tensor:
        """Learning rate (R,) of update ``t`` (1-based), in the parameters' dtype."""
        if self.lr_table is None:
            return self.state.lr
        return (self.state.lr.double() * self.lr_table[t - 1]).to(self.state.lr.dtype)

    @torch.no_grad()
    def step(self, grads, alive: torch.Tensor, t: int) -> torch.Tensor:
        """Update ``t`` (1-based) with ``grads``; returns the per-run mask of the runs updated."""
        lr = self.lr_at(t)
        if self.kind == "sgd":
            return sgd_step(self.params, grads, self.bufs, self.state, alive, first=t == 1, lr=lr)
        if self.kind == "lars":
            return self._lars(grads, alive, t, lr)
        return self._adam(grads, alive, t, lr)

    def _lars(self, grads, alive, t, lr):
        s = self.state
        R = alive.shape[0]
        new_p, new_b = [], []
        for p, g, buf, adapt in zip(self.params, grads, self.bufs, self.adapt):
            d_p = g
            if adapt:
                w_norm = p.reshape(R, -1).norm(dim=1)
                g_norm = g.reshape(R, -1).norm(dim=1)
                use = (w_norm > 0) & (g_norm > 0)  # else: no adaptation, no decay
                one = torch.ones_like(w_norm)
                trust = torch.where(use, s.lars_trust * w_norm / (g_norm + s.weight_decay * w_norm + s.eps), one)
                if s.use_weight_decay:
                    d_p = torch.addcmul(g, p, _col(torch.where(use, s.weight_decay, 0 * one), p))
                    d_p.mul_(_col(trust, p))
                else:
                    d_p = g * _col(trust, p)
            b = d_p if t == 1 else torch.addcmul(d_p, buf, _col(s.momentum, p))
            step = b
            if s.use_nesterov:
                step = torch.where(_col(s.nesterov, p), torch.addcmul(d_p, b, _col(s.momentum, p)), b)
            new_p.append(torch.addcmul(p, _col(lr, p), step, value=-1.0))
            new_b.append(b)
        return _commit(self.params, new_p, [(self.bufs, new_b)] if s.use_momentum else [], alive, R)

    def _adam(self, grads, alive, t, lr):
        s = self.state
        R = alive.shape[0]
        b1, b2, eps = s.beta1, s.beta2, s.eps
        step_size = lr / (1 - b1 ** t)  # (R,), with the first bias correction
        c2_sqrt = (1 - b2 ** t).sqrt()
        decoupled = self.kind == "adamw"
        new_p, new_m, new_v = [], [], []
        for p, g, m, v in zip(self.params, grads, self.exp_avg, self.exp_avg_sq):
            base = p
            if decoupled:
                base = p * _col(1 - lr * s.weight_decay, p)
            elif s.use_weight_decay:
                g = torch.addcmul(g, p, _col(s.weight_decay, p))
            m2 = torch.lerp(m, g, _col(1 - b1, p))
            v2 = torch.lerp(v, g * g, _col(1 - b2, p))
            denom = torch.addcdiv(_col(eps, p), v2.sqrt(), _col(c2_sqrt, p))
            new_p.append(torch.addcmul(base, _col(step_size, p), m2.div(denom), value=-1.0))
            new_m.append(m2)
            new_v.append(v2)
        return _commit(self.params, new_p, [(self.exp_avg, new_m), (self.exp_avg_sq, new_v)], alive, R)


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
    """Plain SGD (no momentum, no weight decay; any schedule) on free embeddings, touching only the rows of
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

    def __call__(self, labels, alive, value: bool = True, lr: torch.Tensor | None = None):
        """One step at the learning rate ``lr`` (R,) (None: ``state.lr``). Returns (per-run loss, or None when ``value`` is False and the fused
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
            upd = torch.addcmul(z, (state.lr if lr is None else lr).view(-1, 1, 1), g, value=-1.0)
            if self.sphere:
                upd = torch.nn.functional.normalize(upd, dim=-1)
            ok = alive & finite & finite_per_run([upd], R)
            if z.device.type == "cpu" and bool(ok.all()):  # (a device would wait for this test)
                z.copy_(upd)
            else:
                z.copy_(torch.where(ok.view(-1, 1, 1), upd, z))
        return loss, ok

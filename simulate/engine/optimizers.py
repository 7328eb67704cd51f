"""The stacked optimizers ``sgd``, ``lars``, ``adam``, ``adamw``: one update for all runs of a
chunk, with per-run hyper-parameters (:class:`StackedOptimizer`: the dense step of encoders,
and of free embeddings under the padded table rule; the sparse step reads its learning rates
from one). LARS's trust ratio (:func:`lars_ratio`) is shared with the table
rules of free embeddings (:mod:`simulate.engine.table`, :mod:`simulate.engine.linear_momentum`),
which apply these same formulas without writing the rows outside the batch. Also the per-run
checks of an update (:func:`finite_per_run`, :func:`relative_change`).

Every rule acts on parameters with a leading run dimension ``(R, ...)``; the runs of a chunk
share one optimizer (it is part of the chunk key) but each has its own learning rate, schedule,
momentum, Nesterov flag, weight decay, betas, eps and LARS trust coefficient (tensors (R,)).
A run is updated only while it is alive and its new parameters are finite; the rules return
that per-run mask (the other runs keep their parameters and optimizer state), and the loop
marks the other runs diverged.

The rules, for one run and one parameter tensor ``p`` with gradient ``g`` at update ``t``
(1-based) and learning rate ``lr_t`` (the schedule's,
:func:`simulate.engine.schedules.schedule_factors`):

* ``sgd``: ``torch.optim.SGD`` (no dampening): ``d = g + wd p``; ``b = d`` at t = 1, else
  ``b = mu b + d``; ``p -= lr_t (d + mu b)`` with Nesterov, else ``p -= lr_t b``.
* ``lars``: LARS (You, Gitman, Ginsburg 2017, eq. (6)) in the form of the SimCLR/BYOL
  reimplementations (lightly's ``lightly.utils.lars.LARS``, solo-learn's ``LARS``): for a
  weight matrix (each layer, each run) with ``|p| > 0`` and ``|g| > 0``,
  ``d = eta |p| / (|g| + wd |p| + eps) * (g + wd p)`` (``eta`` = ``lars_trust``, norms over
  the whole layer of the run); otherwise, and for biases (and normalisation parameters; the
  MLP's batch norm has none) unless ``lars_biases`` is ``lars`` (:func:`lars_adapts`),
  ``d = g``: no adaptation, no weight decay.
  Then the SGD momentum of the line above on ``d`` (Nesterov optional), ``p -= lr_t b``.
* ``adam``: ``torch.optim.Adam``: ``g += wd p``; ``m = b1 m + (1 - b1) g``,
  ``v = b2 v + (1 - b2) g^2``; ``p -= lr_t / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)``.
* ``adamw``: ``torch.optim.AdamW``: ``p *= 1 - lr_t wd`` first, then Adam's step without
  the L2 term.
"""

from __future__ import annotations

import numpy as np
import torch

from .schedules import lr_table
from .state import ChunkState


def lars_adapts(name: str, run) -> bool:
    """Whether LARS adapts (and decays) the parameter ``name`` of ``run``'s model: the weights
    always, the biases (every name holding ``bias``) only with ``run.lars_biases == "lars"``.
    The one statement of the rule; the curvature and onset code read it too."""
    return "bias" not in name or run.lars_biases == "lars"


def lars_ratio(w_norm, g_norm, trust, weight_decay, eps):
    """LARS's per-run factor ``trust |w| / (|g| + weight_decay |w| + eps)`` (1 where ``|w|`` or
    ``|g|`` is 0) and the mask of the runs it adapts (the others get no weight decay either);
    torch tensors or numpy arrays."""
    use = (w_norm > 0) & (g_norm > 0)
    with np.errstate(all="ignore"):
        ratio = trust * w_norm / (g_norm + weight_decay * w_norm + eps)
    if isinstance(ratio, np.ndarray):
        return np.where(use, ratio, 1.0), use
    return torch.where(use, ratio, torch.ones_like(w_norm)), use


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
        named_params: ``(name, parameter)`` pairs of the model; LARS adapts those
            :func:`lars_adapts` names (by default not the biases).
    """

    def __init__(self, state: ChunkState, named_params):
        self.state = state
        self.kind = state.runs[0].optimizer
        self.names = [n for n, _ in named_params]
        self.params = [p for _, p in named_params]
        self.adapt = [lars_adapts(n, state.runs[0]) for n in self.names]
        zeros = lambda: [torch.zeros_like(p) for p in self.params]  # noqa: E731
        adam = self.kind in ("adam", "adamw")
        self.bufs = zeros() if state.use_momentum and not adam else [None] * len(self.params)
        if adam:
            self.exp_avg, self.exp_avg_sq = zeros(), zeros()
        self.lr_table = lr_table(state.runs, state.lr.device)

    def state_lists(self) -> list[list[torch.Tensor]]:
        """The optimizer's state, as lists of tensors shaped like the parameters."""
        if self.kind in ("adam", "adamw"):
            return [self.exp_avg, self.exp_avg_sq]
        return [self.bufs] if self.state.use_momentum else []

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
                trust, use = lars_ratio(w_norm, g_norm, s.lars_trust, s.weight_decay, s.eps)
                one = torch.ones_like(w_norm)
                if s.use_weight_decay:
                    d_p = torch.addcmul(g, p, _col(torch.where(use, s.weight_decay, 0 * one), p))
                    d_p.mul_(_col(trust, p))
                else:
                    d_p = g * _col(trust, p)
            b = d_p if (t == 1 or not s.use_momentum) else torch.addcmul(d_p, buf, _col(s.momentum, p))
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
    """Per-run finiteness, via one sum per run over all tensors (a NaN or inf anywhere makes
    the sum non-finite; so does a finite sum that overflows, which only happens to runaway
    runs)."""
    total = tensors[0].reshape(runs, -1).sum(1)
    for t in tensors[1:]:
        total = total + t.reshape(runs, -1).sum(1)
    return torch.isfinite(total)

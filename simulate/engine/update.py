"""Update rules over stacked parameters: the optimizers (``sgd``, ``lars``, ``adam``,
``adamw``; one update for all runs of a chunk, with per-run hyper-parameters), the per-run
learning-rate schedule, and the table step of free embeddings (:class:`TableStep`), whose
gradient lives on the batch's rows: plain SGD moves only those rows, the other optimizers
every row (:class:`TableOptimizer`; on the CPU SGD and LARS with momentum keep the moves of
the rows outside the batch implicit, :class:`LinearMomentum`).

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


def factor_table(runs) -> np.ndarray:
    """Per-run learning-rate factors (steps, R), float64 (:func:`schedule_factors`)."""
    return np.stack([schedule_factors(runs[0].steps, r.warmup_steps, r.schedule) for r in runs], 1)


def lr_table(runs, device) -> torch.Tensor | None:
    """Per-run learning-rate factors (steps, R) float64 on ``device``, or None when every run
    keeps its learning rate constant (no warmup, constant schedule)."""
    if all(r.warmup_steps == 0 and r.schedule == "constant" for r in runs):
        return None
    return torch.as_tensor(factor_table(runs), device=device)


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


class _Uploaded:
    """Per-run values on the device: ``h[name]`` (R,) in float64 and ``h.col(name)``
    (R, 1, 1) in the table's dtype (all converted at once)."""

    def __init__(self, names, values: torch.Tensor, dtype):
        self.index = {n: i for i, n in enumerate(names)}
        self.values = values
        self.low = values.to(dtype).view(len(names), -1, 1, 1)

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.values[self.index[name]]

    def col(self, name: str) -> torch.Tensor:
        return self.low[self.index[name]]


#: a run's lazily kept scale (momentum buffer, Adam's moments) is folded into its rows once
#: it falls below this value, so that the stored rows stay within a few decades of the true
#: ones
RESCALE_BELOW = 1e-4


class TableOptimizer:
    """The chunk's optimizer over free embeddings (R, M, D) whose gradient at each update
    lives on the batch's rows only: the rules of :class:`StackedOptimizer` (see the module
    docstring), with the zero gradient of the other rows left implicit. Every row still
    moves (momentum, weight decay, Adam's moments); only the batch's rows take the gradient.

    The state that decays geometrically on rows without gradient is kept as rows times a
    per-run scale, so that a decay is one multiplication of the scale instead of a pass over
    the table: the momentum buffer is ``b = mu B`` (``mu`` times ``momentum`` per update);
    Adam's moments are ``m = mu M`` (``mu`` times ``beta1``) and ``sqrt(v) = sigma S``
    (``sigma`` times ``sqrt(beta2)``). A scale is folded into its run's rows once it falls
    below :data:`RESCALE_BELOW` (a run's own schedule: the rows of a run do not depend on its
    chunk-mates). An update then takes one pass over the table for SGD with momentum, two with
    weight decay, one more for LARS's norm, and for Adam one pass for the denominator and one
    for the step, written as ``p - M / (a S + c)`` with ``a = sigma / (k mu)``,
    ``c = eps c2 / (k mu)``, ``k = lr_t c2 / (1 - beta1^t)``, ``c2 = sqrt(1 - beta2^t)``: the
    same update as ``p - lr_t / (1 - beta1^t) m / (sqrt(v) / c2 + eps)``. The per-run
    scalars are computed in float64 on the host.

    :attr:`simulate.config.RunConfig.table_rule` picks the rule (part of the chunk key):
    ``lazy`` for SGD and LARS and for Adam and AdamW, with decays of at least
    :data:`simulate.config.LAZY_MIN_DECAY` and without Adam's L2 weight decay; ``linear``
    for SGD and LARS with momentum on rows that are not renormalised (on the CPU
    :class:`LinearMomentum`: a row and its momentum buffer outside the batch follow one
    linear map per run, kept as a 2x2 matrix, so an update writes only the batch's rows; on
    a device the lazy rule); ``padded`` otherwise (the gradient padded with zeros to the whole
    table, then :class:`StackedOptimizer`).
    """

    def __init__(self, state: ChunkState, weight: torch.Tensor):
        self.state = state
        runs = state.runs
        self.kind = runs[0].optimizer
        self.rule = runs[0].table_rule
        self.dtype, self.device = weight.dtype, weight.device
        self.linear: LinearMomentum | None = None
        if self.rule == "padded":
            self.dense = StackedOptimizer(state, [("weight", weight)])
            return
        f64 = lambda name: np.array([float(getattr(r, name)) for r in runs])  # noqa: E731
        self.host_lr = f64("lr")[None, :] * factor_table(runs)  # (steps, R)
        self.wd, self.eps, self.trust = f64("weight_decay"), f64("eps"), f64("lars_trust")
        self.nesterov = np.array([bool(r.nesterov) for r in runs])
        R = len(runs)
        self._spares: list[torch.Tensor] = []
        if self.kind in ("adam", "adamw"):
            self.b1, self.b2 = f64("beta1"), f64("beta2")
            self.M, self.S = torch.zeros_like(weight), torch.zeros_like(weight)
            self.mu, self.sigma = np.ones(R), np.ones(R)
        else:
            self.momentum = f64("momentum")
            self.B = torch.zeros_like(weight) if state.use_momentum else None
            self.mu = np.ones(R)
            if self.rule == "linear" and self.device.type == "cpu" and LINEAR_ON_CPU:
                self.B = None
                self.linear = LinearMomentum(self, weight)

    def _spare(self, p: torch.Tensor) -> torch.Tensor:
        """A buffer shaped like ``p`` for the new rows: one of two that this optimizer owns and
        hands out in turn, never ``p`` itself (the rows a step returns are the next step's
        ``p``; the buffer returned the step before is free again once the table holds newer
        rows)."""
        spares = self._spares
        for i, buf in enumerate(spares):
            if buf.data_ptr() != p.data_ptr() and buf.shape == p.shape:
                spares.append(spares.pop(i))
                return buf
        spares.append(torch.empty_like(p))
        del spares[:-2]
        return spares[-1]

    def _upload(self, **values) -> "_Uploaded":
        """Per-run host values (each (R,), float64) on the device, in one transfer (pinned and
        asynchronous on CUDA: the step never waits on the device)."""
        names = list(values)
        host = torch.from_numpy(np.stack([np.broadcast_to(np.asarray(values[n], dtype=np.float64),
                                                          (len(self.state.runs),)) for n in names]))
        if self.device.type == "cuda":
            dev = host.pin_memory().to(self.device, non_blocking=True)
        else:
            dev = host.to(self.device)
        return _Uploaded(names, dev, self.dtype)

    def _col(self, x: torch.Tensor) -> torch.Tensor:
        """A per-run float64 device tensor (R,) in the table's dtype, shaped (R, 1, 1)."""
        return x.to(self.dtype).view(-1, 1, 1)

    def _fold(self, rows: torch.Tensor, scale: np.ndarray) -> None:
        """Fold the scales below :data:`RESCALE_BELOW` into their runs' rows (in place)."""
        due = scale < RESCALE_BELOW
        if due.any():
            rows.mul_(self._upload(f=np.where(due, scale, 1.0)).col("f"))
            scale[due] = 1.0

    @torch.no_grad()
    def reorder(self, order) -> None:
        """Lay the state out like the rows after ``order`` (:meth:`EpochTable.reorder`)."""
        if self.rule == "padded":
            for lst in self.dense.state_lists():
                lst[:] = [order(x) for x in lst]
            return
        for name in ("M", "S", "B"):
            if getattr(self, name, None) is not None:
                setattr(self, name, order(getattr(self, name)))
        if self.linear is not None:
            self.linear.Q = order(self.linear.Q)

    @torch.no_grad()
    def rows(self, p: torch.Tensor, block: slice = slice(None)) -> torch.Tensor:
        """The rows ``block`` of the table ``p`` as they stand: a view of ``p``, or with the
        linear rule the rows written out (a new tensor; the state is left as it is)."""
        return p[:, block] if self.linear is None else self.linear.rows(p, block)

    @torch.no_grad()
    def step(self, p: torch.Tensor, g: torch.Tensor, block: slice, alive: torch.Tensor, t: int,
             sphere: bool = False):
        """Update ``t`` (1-based) of the rows ``p`` (R, M, D) with the gradient ``g`` (R, n, D)
        of the rows ``block`` (zero elsewhere), then, with ``sphere``, every row back to unit
        norm. Returns the new rows and the per-run mask of the runs updated (alive, with
        finite new rows); the other runs keep their rows exactly (their optimizer state is not
        used again once they stop). The linear rule updates the batch's rows of ``p`` in place
        and returns ``p``; the other rules leave ``p`` as it was and write the new rows into one
        of two buffers that the optimizer owns and hands out in turn (never ``p``), so they
        stay valid until the second update after this one (the table step passes them back
        as the next update's ``p``)."""
        R = p.shape[0]
        if self.rule == "padded":
            full = torch.zeros_like(p)
            full[:, block] = g
            new_p = p.clone()
            self.dense.params = [new_p]
            ok = self.dense.step([full], alive, t)  # the runs not updated keep p in new_p
            if sphere:
                new_p = torch.where(_col(ok, p), torch.nn.functional.normalize(new_p, dim=-1), new_p)
            return new_p, ok
        if self.linear is not None:
            return self.linear.step(p, g, block, alive, t)
        if self.kind in ("adam", "adamw"):
            new_p = self._adam(p, g, block, t)
        else:
            new_p = self._momentum(p, g, block, t)
        if sphere:  # in place (the rows are this optimizer's buffer): torch's normalize
            new_p.div_(new_p.norm(2, -1, keepdim=True).clamp_min_(1e-12))
        ok = alive & finite_per_run([new_p], R)
        if p.device.type == "cpu" and bool(ok.all()):  # (a device would wait for this test)
            return new_p, ok
        return torch.where(_col(ok, p), new_p, p), ok

    def _momentum(self, p, g, block, t):
        """``sgd`` and ``lars``: ``d = trust (g + wd p)`` (trust 1 for sgd), ``b = d`` at the
        first update, else ``momentum b + d``; ``p -= lr_t (d + momentum b)`` with Nesterov,
        else ``p -= lr_t b``."""
        R = p.shape[0]
        col = self._col
        lr = self.host_lr[t - 1]
        if self.B is not None:
            self._fold(self.B, self.mu)
            if t > 1:
                self.mu = self.mu * self.momentum
        mu = self.mu
        nest = self.nesterov & (self.momentum > 0)
        h = self._upload(lr=lr, wd=self.wd, trust=self.trust, eps=self.eps, inv_mu=1.0 / mu,
                         coef_b=np.where(nest, -lr * self.momentum * mu, -lr * mu), nest=nest)
        lr_d, wd = h["lr"], h["wd"]
        if self.kind == "lars":  # on the device: no wait for the norms
            w_norm = p.reshape(R, -1).norm(dim=1).double()
            g_norm = g.reshape(R, -1).norm(dim=1).double()
            trust, use = lars_ratio(w_norm, g_norm, h["trust"], wd, h["eps"])
            wd = torch.where(use, wd, torch.zeros_like(wd)) * trust
            g = g * col(trust)
        use_wd = self.state.use_weight_decay
        new_p = self._spare(p)
        if self.B is None:  # no momentum: p (1 - lr wd) - lr trust g
            if use_wd:
                torch.mul(p, col(1.0 - lr_d * wd), out=new_p)
            else:
                new_p.copy_(p)
            new_p[:, block].addcmul_(g, col(-lr_d))
            return new_p
        if use_wd:
            self.B.addcmul_(p, col(wd * h["inv_mu"]))
        self.B[:, block].addcmul_(g, h.col("inv_mu"))
        torch.addcmul(p, h.col("coef_b"), self.B, out=new_p)
        if bool(nest.any()):  # the d term of Nesterov's step
            on = h["nest"] > 0
            zero = torch.zeros_like(lr_d)
            if use_wd:
                new_p.addcmul_(p, col(torch.where(on, -lr_d * wd, zero)))
            new_p[:, block].addcmul_(g, col(torch.where(on, -lr_d, zero)))
        return new_p

    def _adam(self, p, g, block, t):
        lr = self.host_lr[t - 1]
        b1, b2 = self.b1, self.b2
        self._fold(self.M, self.mu)
        self._fold(self.S, self.sigma)
        sigma_prev = self.sigma
        self.mu = self.mu * b1
        self.sigma = sigma_prev * np.sqrt(b2)
        c2 = np.sqrt(1 - b2 ** t)
        k = lr / (1 - b1 ** t) * c2
        # a and c within the dtype's range: a row without gradient yet (M = S = 0) then steps
        # by 0 / c = 0 even where eps c2 / (k mu) underflows, as torch.optim's does
        info = torch.finfo(self.dtype)
        with np.errstate(over="ignore", divide="ignore"):
            a = np.minimum(self.sigma / (k * self.mu), info.max)
            c = np.clip(self.eps * c2 / (k * self.mu), info.tiny, info.max)
        adamw = self.kind == "adamw" and self.state.use_weight_decay
        h = self._upload(m_coef=(1 - b1) / self.mu, g_coef=np.sqrt(1 - b2) / self.sigma,
                         a=-a if adamw else a, c=-c if adamw else c, decay=1.0 - lr * self.wd)
        col = h.col
        # on the batch's rows, M += (1 - b1) g / mu and (b2 v + (1 - b2) g^2 = (sigma S')^2 with
        # sigma = sigma_prev sqrt(b2)) S' = sqrt(S^2 + (1 - b2) g^2 / sigma^2)
        self.M[:, block].addcmul_(g, col("m_coef"))
        s_rows = self.S[:, block]
        g_scaled = g * col("g_coef")
        s_rows.mul_(s_rows).addcmul_(g_scaled, g_scaled).sqrt_()
        out = self._spare(p)
        torch.mul(self.S, col("a"), out=out).add_(col("c"))  # a S + c, or -(a S + c) for adamw
        if adamw:  # decay p - M / (a S + c)
            torch.div(self.M, out, out=out)
            return torch.addcmul(out, p, col("decay"), out=out)
        return torch.addcdiv(p, self.M, out, value=-1.0, out=out)


#: the linear rule (:class:`LinearMomentum`) folds a run's state matrix into its rows once the
#: matrix's determinant (momentum per update) falls below this value: the rows' increments
#: then stay within a few decades of the moves they stand for
FOLD_DET = 1 / 16
#: ... or once an entry of the matrix exceeds this magnitude
FOLD_ENTRY = 1e3
#: whether SGD and LARS with momentum on free embeddings on the CPU take the linear rule (a
#: device takes the lazy rule, which moves every row each update: it reads its norms without
#: waiting for the device)
LINEAR_ON_CPU = True


class LinearMomentum:
    """SGD and LARS with momentum on free embeddings (no renormalisation) on the CPU, moving
    only the batch's rows: the rows outside the batch follow one linear map per run, kept as a
    2x2 matrix instead of being written (the ``linear`` table rule).

    With ``d = tau g + omega p`` (``tau`` LARS's trust ratio and ``omega`` = ``tau`` times its
    weight decay; ``tau = 1`` and ``omega`` = weight decay for sgd), a row and its momentum
    buffer step to ``b' = mu b + d`` and ``p' = p - lr (kappa d + mu nu b)`` (Nesterov:
    ``kappa = 1 + mu``, ``nu = mu``; else both 1), i.e.
    ``[p'; b'] = A [p; b] + [-lr kappa; 1] tau g`` with
    ``A = [[1 - lr kappa omega, -lr mu nu], [omega, mu]]``, the same for every row of a run
    (``det A = mu``, and ``mu (1 - lr omega)`` with Nesterov, which the rule's bound on
    ``lr omega`` keeps at least ``mu / 2``: :attr:`simulate.config.RunConfig.table_rule`).
    The table holds ``P`` and this rule ``Q`` with ``[p; b] = Phi [P; Q]``: an update sets
    ``Phi' = A Phi`` and adds ``Phi'^-1 [-lr kappa; 1] tau`` times the gradient to the
    batch's ``P`` and ``Q``. LARS's ``|p|`` comes from the per-run Gram matrix of ``P`` and
    ``Q``, kept from inner products with the gradient:
    ``|p|^2 = phi11^2 |P|^2 + 2 phi11 phi12 <P, Q> + phi12^2 |Q|^2``.

    A run's ``Phi`` is folded into its rows (``[P; Q] = Phi [P; Q]``, ``Phi = I``, the Gram
    matrix summed afresh) once its determinant falls below :data:`FOLD_DET` or an entry
    exceeds :data:`FOLD_ENTRY`, each run on its own schedule, so that its rows do not depend
    on its chunk-mates (nor on when the metrics read the rows: :meth:`rows` writes them out
    without folding). Inner products are summed per block of rows in the table's dtype, then
    in float64 (the same sums whatever the number of runs; a block that overflows float32 is
    summed again in float64). The matrices and scalars are float64 on the host. A run is
    updated only if its inner products are finite and ``P``, ``Q``, the rows and the buffers
    written out stay within half the table dtype's range (in float64 the squared norms
    overflow first: a run stops once its table's norm nears 1e154, where the lazy rule
    goes on to about 1e308).
    """

    def __init__(self, opt: "TableOptimizer", table: torch.Tensor):
        self.opt = opt
        R = table.shape[0]
        mu = opt.momentum
        self.nest = opt.nesterov & (mu > 0)
        self.kappa = np.where(self.nest, 1.0 + mu, 1.0)
        self.nu = np.where(self.nest, mu, 1.0)
        self.Q = torch.zeros_like(table)
        self.phi = np.tile(np.eye(2), (R, 1, 1))
        self.det = np.ones(R)  # det Phi, the product of the updates' det A
        self.gram = self._gram(table, self.Q)  # (R, 3): |P|^2, <P, Q>, |Q|^2
        self.half = float(torch.finfo(table.dtype).max) / 2  # a bound on |P|, |Q|, |p|, |b|

    @staticmethod
    def _dots(pairs) -> np.ndarray:
        """Per-run inner products ``<x, y>`` of the tensor pairs (each (R, rows, D)) as float64
        (R, len(pairs)): sums over blocks of whole rows of at most about 2048 numbers (torch
        sums a block on one thread, so a run's sums do not depend on the other runs), then
        over the blocks in float64."""
        R, rows, D = pairs[0][0].shape
        per = max(d for d in range(1, min(rows, max(1, 2048 // D)) + 1) if rows % d == 0)
        parts = torch.stack([torch.linalg.vecdot(x.reshape(R, -1, per * D), y.reshape(R, -1, per * D))
                             for x, y in pairs], 1).numpy()  # (R, len, blocks)
        out = parts.sum(2, dtype=np.float64)
        bad = ~np.isfinite(out)
        if bad.any():  # the blocks overflowed the table's dtype (or the rows are not finite)
            for r, i in zip(*np.nonzero(bad)):
                x, y = (v[r].reshape(-1).numpy() for v in pairs[i])
                with np.errstate(all="ignore"):
                    out[r, i] = np.dot(x.astype(np.float64), y.astype(np.float64))
        return out

    def _gram(self, P: torch.Tensor, Q: torch.Tensor) -> np.ndarray:
        """Per-run ``|P|^2, <P, Q>, |Q|^2`` (R, 3)."""
        return self._dots([(P, P), (P, Q), (Q, Q)])

    def _cols(self, *values) -> torch.Tensor:
        """Per-run host values as (len(values), R, 1, 1) in the table's dtype."""
        return torch.from_numpy(np.stack(values)).to(self.opt.dtype).view(len(values), -1, 1, 1)

    @staticmethod
    def _norm2(phi: np.ndarray, gram: np.ndarray) -> np.ndarray:
        """Per-run ``|p|^2 = phi11^2 |P|^2 + 2 phi11 phi12 <P, Q> + phi12^2 |Q|^2``."""
        return (phi[:, 0, 0] ** 2 * gram[:, 0] + 2 * phi[:, 0, 0] * phi[:, 0, 1] * gram[:, 1]
                + phi[:, 0, 1] ** 2 * gram[:, 2])

    @property
    def w2(self) -> np.ndarray:
        """Per-run ``|p|^2`` of the rows as they stand."""
        return self._norm2(self.phi, self.gram)

    def _within(self, phi: np.ndarray, gram: np.ndarray) -> np.ndarray:
        """Per run: ``Phi``'s entries, ``|P|``, ``|Q|`` and both terms of each row of
        ``Phi [P; Q]`` within half the dtype's range (no product of the write-out overflows)."""
        with np.errstate(all="ignore"):
            p, q = np.sqrt(np.maximum(gram[:, 0], 0.0)), np.sqrt(np.maximum(gram[:, 2], 0.0))
            rows = np.abs(phi[:, :, 0]) * p[:, None] + np.abs(phi[:, :, 1]) * q[:, None]
            return (np.isfinite(gram).all(1) & (np.abs(phi) <= self.half).all((1, 2)) & (p <= self.half)
                    & (q <= self.half) & (rows <= self.half).all(1))

    def rows(self, P: torch.Tensor, block: slice = slice(None)) -> torch.Tensor:
        """The rows ``block`` written out, ``p = phi11 P + phi12 Q`` (a new tensor; the state
        is left as it is)."""
        a, b = self._cols(self.phi[:, 0, 0], self.phi[:, 0, 1])
        return torch.addcmul(P[:, block] * a, b, self.Q[:, block])

    def step(self, P, g, block, alive, t):
        o = self.opt
        R = P.shape[0]
        lr, mu, wd = o.host_lr[t - 1], o.momentum, o.wd
        Pb, Qb = P[:, block], self.Q[:, block]
        pg, qg, gg = self._dots([(Pb, g), (Qb, g), (g, g)]).T
        if o.kind == "lars":
            tau, use = lars_ratio(np.sqrt(np.maximum(self.w2, 0.0)), np.sqrt(gg), o.trust, wd, o.eps)
            omega = np.where(use, wd, 0.0) * tau
        else:
            tau, omega = np.ones(R), wd
        A = np.empty((R, 2, 2))
        A[:, 0, 0] = 1.0 - lr * self.kappa * omega
        A[:, 0, 1] = -lr * mu * self.nu
        A[:, 1, 0] = omega
        A[:, 1, 1] = mu
        with np.errstate(all="ignore"):
            phi = A @ self.phi
            # Phi'^-1 [-lr kappa; 1] tau = Phi^-1 A^-1 [-lr kappa; 1] tau, with A^-1 in closed
            # form: det A = mu, or mu (1 - lr omega) with Nesterov, and
            # A^-1 [-lr kappa; 1] tau = [lr mu (nu - kappa), 1] tau / det A (no difference of
            # large numbers however large lr omega is)
            det_a = np.where(self.nest, mu * (1.0 - lr * omega), mu)
            u1, u2 = lr * mu * (self.nu - self.kappa) * tau / det_a, tau / det_a
            old = self.phi
            c1 = (old[:, 1, 1] * u1 - old[:, 0, 1] * u2) / self.det
            c2 = (old[:, 0, 0] * u2 - old[:, 1, 0] * u1) / self.det
            det = self.det * det_a
            # the Gram matrix after P += c1 g, Q += c2 g on the batch's rows
            gram = self.gram + np.stack([2 * c1 * pg + c1 * c1 * gg, c2 * pg + c1 * qg + c1 * c2 * gg,
                                         2 * c2 * qg + c2 * c2 * gg], 1)
            w2 = self._norm2(phi, gram)
            c = np.maximum(np.abs(c1), np.abs(c2))
            ok = (alive.numpy() & np.isfinite(gg) & np.isfinite(w2) & (c <= self.half)
                  & (c * np.sqrt(gg) <= self.half) & self._within(phi, gram))
        cp, cq = self._cols(np.where(ok, c1, 0.0), np.where(ok, c2, 0.0))
        if ok.all():  # (the checks above need only the inner products: the rows are written once)
            Pb.addcmul_(g, cp)
            Qb.addcmul_(g, cq)
            self.phi, self.det, self.gram = phi, det, gram
        else:
            keep = torch.from_numpy(ok).view(-1, 1, 1)
            Pb.copy_(torch.where(keep, torch.addcmul(Pb, g, cp), Pb))
            Qb.copy_(torch.where(keep, torch.addcmul(Qb, g, cq), Qb))
            self.phi = np.where(ok[:, None, None], phi, self.phi)
            self.det = np.where(ok, det, self.det)
            self.gram = np.where(ok[:, None], gram, self.gram)
        due = (np.abs(self.det) < FOLD_DET) | (np.abs(self.phi).max((1, 2)) > FOLD_ENTRY)
        if due.any():
            self.fold(P, np.flatnonzero(due))
        return P, torch.from_numpy(ok)

    @torch.no_grad()
    def fold(self, P: torch.Tensor, runs: np.ndarray) -> None:
        """``[P; Q] = Phi [P; Q]`` and ``Phi = I`` for the runs ``runs`` (in place), their
        Gram matrices summed afresh."""
        runs = runs[(self.phi[runs] != np.eye(2)).any((1, 2))]  # (Phi = I: nothing to fold)
        if len(runs) == 0:
            return
        phi = self.phi[runs]
        a, b, c, d = self._cols(*(phi[:, i, j] for i in (0, 1) for j in (0, 1)))
        if len(runs) == P.shape[0]:  # every run: in place, without copies of the rows
            new_q = torch.addcmul(P * c, d, self.Q)
            new_p = P.mul_(a).addcmul_(b, self.Q)
            self.Q = new_q
        else:
            idx = torch.from_numpy(runs)
            Pi, Qi = P[idx], self.Q[idx]
            new_p, new_q = torch.addcmul(Pi * a, b, Qi), torch.addcmul(Pi * c, d, Qi)
            P[idx], self.Q[idx] = new_p, new_q
        self.phi[runs] = np.eye(2)
        self.det[runs] = 1.0
        gram = self._gram(new_p, new_q)
        self.gram[runs] = gram


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



class TableStep:
    """A step of free embeddings, whose gradient lives on the batch's rows only.
    NT-Xent with or without cosine CLOP on unit rows takes the fused value and gradient
    (:func:`simulate.engine.fused.ntxent_clop_value_and_grad`), every other objective autograd
    on the batch's rows.

    Plain SGD (no momentum, no weight decay; any schedule) moves only the batch's rows: the
    same update as the dense step, whose gradient is zero on every other row (the *sparse*
    step). Any other optimizer (momentum, weight decay, LARS, Adam) moves every row: the
    chunk's :class:`TableOptimizer` updates them from the batch's gradient. LARS's layer is
    the run's whole table, as it is the run's whole weight in the dense step. The rows live
    in an :class:`EpochTable`, laid out so that each batch is one block (an optimizer's state
    follows the same order); :meth:`sync` brings the model's weight up to date.
    """

    def __init__(self, state: ChunkState, loss_fn, sphere: bool):
        self.state, self.loss_fn, self.sphere = state, loss_fn, sphere
        self.table = EpochTable(state.model.weight, state.runs[0].batch_size)
        self.optimizer = None if state.sparse else TableOptimizer(state, self.table.table)
        # this epoch's CLOP targets and row weights (fused path): each batch's weights depend
        # on its own number of labelled points
        self.clop_targets: torch.Tensor | None = None  # (R, N', D)
        self.clop_row_weights: torch.Tensor | None = None  # (R, N')

    def sync(self) -> None:
        self.table.sync(None if self.optimizer is None else self.optimizer.rows(self.table.table))

    def _gradient(self, z, labels, alive, value: bool):
        """(per-run loss or None, gradient (R, 2B, D) of the batch's rows, per-run finite
        mask of the loss)."""
        state, stream = self.state, self.state.stream
        if state.fused:
            # every run's gradient is its own; the runs that are dead or not finite are masked later
            clop = None
            if state.prototypes is not None:
                if stream.new_epoch:
                    used = stream.epoch_labels[:, : stream.per_epoch * stream.b]
                    self.clop_targets = prototype_rows(used, state.prototypes)
                    self.clop_row_weights = prototype_weights(used.reshape(-1, stream.b), z.dtype).view(used.shape)
                batch = stream.batch_slice()
                clop = (self.clop_targets[:, batch], self.clop_row_weights[:, batch], state.clop_weight)
            loss, g = ntxent_clop_value_and_grad(z, state.runs[0].temperature, clop, value=value)
            return loss, g, (alive if loss is None else torch.isfinite(loss))
        leaf = z.detach().requires_grad_(True)
        loss = objective(state, self.loss_fn, leaf, labels)
        finite = torch.isfinite(loss)
        total = torch.where(alive & finite, loss, torch.zeros_like(loss)).sum()
        (g,) = torch.autograd.grad(total, [leaf])
        return loss, g, finite

    def __call__(self, labels, alive, t: int, lr: torch.Tensor | None = None, value: bool = True):
        """Update ``t`` (1-based) at the learning rate ``lr`` (R,) (None: ``state.lr``; the
        sparse step's; an optimizer takes its own schedule). Returns (per-run loss, or None
        when ``value`` is False and the fused path can skip it; per-run mask of the runs
        updated). A non-finite loss always shows in the gradient (through ``log zsum``,
        ``P = e / zsum`` or the rows), so the update check finds it."""
        state, stream = self.state, self.state.stream
        if stream.new_epoch:
            self.table.open(stream.perm)
            if self.optimizer is not None:
                self.optimizer.reorder(self.table.reorder)
        if self.optimizer is not None:  # every row moves
            j = stream.j - 1
            block = slice(2 * j * stream.b, 2 * (j + 1) * stream.b)
            loss, g, finite = self._gradient(self.optimizer.rows(self.table.table, block), labels, alive, value)
            rows, ok = self.optimizer.step(self.table.table, g, block, alive & finite, t, sphere=self.sphere)
            self.table.table = rows
            return loss, ok
        z = self.table.batch(stream.j - 1)  # a view: updated in place
        R = z.shape[0]
        loss, g, finite = self._gradient(z, labels, alive, value)
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

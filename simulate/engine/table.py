"""The table step of free embeddings (:class:`TableStep`), whose gradient lives on the batch's
rows, and the optimizer that moves every row from that gradient (:class:`TableOptimizer`).

:attr:`simulate.config.RunConfig.table_rule` picks the rule (part of the chunk key):

* ``sparse``: plain SGD (no momentum, no weight decay; any schedule) moves only the batch's
  rows, in place (:class:`TableStep` without an optimizer);
* ``lazy``: every row moves, the state that decays geometrically on the rows outside the
  batch kept as rows times a per-run scale (:class:`TableOptimizer`): SGD and LARS with
  momentum 0 or at least :data:`simulate.config.LAZY_MIN_DECAY`, Adam and AdamW with decays
  of at least that and without Adam's L2 weight decay;
* ``linear``: SGD and LARS with momentum on rows that are not renormalised: on the CPU
  (:data:`LINEAR_ON_CPU`) a row and its momentum buffer outside the batch follow one linear
  map per run, kept as a 2x2 matrix, so an update writes only the batch's rows
  (:class:`simulate.engine.linear_momentum.LinearMomentum`); on a device the lazy rule;
* ``padded``: the rest: the gradient padded with zeros to the whole table, then the dense
  rule (:class:`simulate.engine.optimizers.StackedOptimizer`).

The optimizers' formulas are those of :mod:`simulate.engine.optimizers`.
"""

from __future__ import annotations

import numpy as np
import torch

from ..losses.clop import prototype_rows, prototype_weights
from .fused import ntxent_clop_value_and_grad
from .linear_momentum import LinearMomentum
from .objective import objective
from .optimizers import StackedOptimizer, finite_per_run, lars_ratio
from .schedules import factor_table
from .state import ChunkState
from .streams import EpochTable

#: whether SGD and LARS with momentum on free embeddings on the CPU take the linear rule (a
#: device takes the lazy rule, which moves every row each update: it reads its norms without
#: waiting for the device)
LINEAR_ON_CPU = True


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
    lives on the batch's rows only: the rules of :class:`StackedOptimizer`
    (:mod:`simulate.engine.optimizers`), with the zero gradient of the other rows left
    implicit. Every row still moves (momentum, weight decay, Adam's moments); only the batch's
    rows take the gradient.

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

    The rule is ``runs[0].table_rule`` (see the module docstring): ``lazy`` as above,
    ``linear`` through :class:`LinearMomentum` (on the CPU), ``padded`` through a
    :class:`StackedOptimizer` over the whole table.
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
                new_p = torch.where(ok.view(-1, 1, 1), torch.nn.functional.normalize(new_p, dim=-1), new_p)
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
        return torch.where(ok.view(-1, 1, 1), new_p, p), ok

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

"""The ``linear`` table rule: SGD and LARS with momentum on free embeddings on the CPU, moving
only the batch's rows (:class:`LinearMomentum`; :class:`simulate.engine.table.TableOptimizer`
holds one when :attr:`simulate.config.RunConfig.table_rule` is ``linear`` and
:data:`simulate.engine.table.LINEAR_ON_CPU` is set). The rules it implements are those of
:mod:`simulate.engine.optimizers` (``sgd`` with momentum, ``lars``)."""

from __future__ import annotations

import numpy as np
import torch

from .optimizers import lars_ratio

#: the linear rule (:class:`LinearMomentum`) folds a run's state matrix into its rows once the
#: matrix's determinant (momentum per update) falls below this value: the rows' increments
#: then stay within a few decades of the moves they stand for
FOLD_DET = 1 / 16
#: ... or once an entry of the matrix exceeds this magnitude
FOLD_ENTRY = 1e3


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

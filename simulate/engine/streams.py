"""The randomness of a chunk and the layout of its free-embedding rows.

Every run draws its minibatches (shuffled epochs) and view noise from its own generator,
seeded from its own seed (:func:`run_seeds`), so a run's trajectory does not depend on which
chunk it lands in. Free embeddings trained by the table step keep their rows in an
:class:`EpochTable`, laid out in the epoch's order so that every batch is one block.
"""

from __future__ import annotations

import numpy as np
import torch

from ..config import RunConfig

#: steps of view noise drawn per generator call
NOISE_BLOCK = 64


def run_seeds(seed: int) -> tuple[int, int]:
    """(initialisation seed, minibatch seed) of a run, spawned from its seed
    (``numpy.random.SeedSequence.spawn``)."""
    a, b = np.random.SeedSequence(seed).spawn(2)
    return int(a.generate_state(1)[0]), int(b.generate_state(1)[0])


class BatchStream:
    """The randomness of one run's minibatches, from its own generator: a permutation of the
    N points per epoch and, for encoders, view noise (and signs) in blocks of steps. The
    draws depend only on the run and the step count, never on the other runs of the chunk."""

    def __init__(self, seed: int, n: int, batch: int, views_shape: tuple | None, run: RunConfig):
        self.g = torch.Generator().manual_seed(seed)
        self.n, self.b, self.views_shape, self.run = n, batch, views_shape, run

    def permutation(self) -> torch.Tensor:
        return torch.randperm(self.n, generator=self.g)

    def noise_block(self):
        """(noise (BLOCK, 2, B, d), signs (BLOCK, 2, B, 1) or None, shifts (BLOCK, 2, B, 2)
        or None). Digits views (``run.data == "digits"`` with ``max_shift > 0``) draw their
        image shifts (:func:`simulate.digits.draw_shifts`) before the block's noise; mixture
        views draw noise, then signs."""
        shifts = None
        if self.run.data == "digits" and self.run.max_shift > 0:
            from ..digits import draw_shifts

            shifts = draw_shifts((NOISE_BLOCK, 2, self.b), self.run.max_shift, self.g)
        # noise is drawn in float32 (whatever the chunk's dtype): same law, a fifth of the time
        noise = torch.randn((NOISE_BLOCK, 2, self.b) + self.views_shape, generator=self.g) * self.run.aug_sigma
        signs = None
        if self.run.sign_flip:
            signs = torch.randint(0, 2, (NOISE_BLOCK, 2, self.b, 1), generator=self.g) * 2 - 1
        return noise, signs, shifts


class StackedStream:
    """The per-run streams of a chunk, stacked onto the device.

    Minibatches run through epochs: each epoch is a fresh random permutation of the N points
    per run, cut into ``N // B`` batches of B distinct points (a remainder of ``N mod B`` is
    left out for that epoch), as a shuffled ``DataLoader`` with ``drop_last`` does.
    """

    def __init__(self, streams: list[BatchStream], labels: torch.Tensor, device, dtype):
        self.streams, self.labels, self.device, self.dtype = streams, labels, device, dtype
        s0 = streams[0]
        self.n, self.b = s0.n, s0.b
        self.per_epoch = s0.n // s0.b
        self.j = self.per_epoch  # batch index within the epoch; the first next() opens one
        self.perm: torch.Tensor | None = None  # (R, N), this epoch's order
        self.epoch_labels: torch.Tensor | None = None  # (R, N), the labels in that order
        self.new_epoch = False
        self.shifts: torch.Tensor | None = None
        self._pos = NOISE_BLOCK

    def _fill(self):
        blocks = [s.noise_block() for s in self.streams]
        self._noise = torch.stack([b[0] for b in blocks], 1).to(self.device, self.dtype)
        self._signs = self._shifts = None
        if blocks[0][1] is not None:
            self._signs = torch.stack([b[1] for b in blocks], 1).to(self.device, self.dtype)
        if any(b[2] is not None for b in blocks):  # a run with max_shift 0 draws no shifts
            self._shifts = torch.stack([torch.zeros(NOISE_BLOCK, 2, self.b, 2, dtype=torch.int64)
                                        if b[2] is None else b[2] for b in blocks], 1).to(self.device)
        self._pos = 0

    def next(self):
        """(indices (R, B), labels (R, B), noise (R, 2, B, d) or None, signs (R, 2, B, 1) or
        None) of the next step; ``new_epoch`` tells whether it opened an epoch and ``j`` is
        its batch index; ``shifts`` holds the step's image shifts (R, 2, B, 2) of digits
        views (None otherwise)."""
        self.new_epoch = self.j == self.per_epoch
        if self.new_epoch:
            self.perm = torch.stack([s.permutation() for s in self.streams]).to(self.device)
            self.epoch_labels = self.labels.gather(1, self.perm)
            self.j = 0
        self.j += 1
        idx = self.perm[:, self.batch_slice()]
        labels = self.epoch_labels[:, self.batch_slice()]
        if self.streams[0].views_shape is None:
            return idx, labels, None, None
        if self._pos == NOISE_BLOCK:
            self._fill()
        i = self._pos
        self._pos += 1
        self.shifts = None if self._shifts is None else self._shifts[i]
        return idx, labels, self._noise[i], None if self._signs is None else self._signs[i]

    def batch_slice(self) -> slice:
        """Epoch positions of the current (last drawn) batch."""
        return slice((self.j - 1) * self.b, self.j * self.b)


class EpochTable:
    """The free-embedding rows laid out in the order of the current epoch, so that every
    minibatch is a view of one block: one gather when an epoch opens instead of a gather and
    a scatter per step. The model's weight (in point order) is brought up to date by
    :meth:`sync`.

    With ``F = (N // B) * B`` points in the epoch's batches, batch j occupies table rows
    ``[2jB, 2jB + 2B)``: view 1 of its B points, then their view 2 (the ``[z1; z2]`` layout of
    the losses); the ``N - F`` points left out follow, view 1 then view 2.
    """

    def __init__(self, weight: torch.Tensor, batch: int):
        self.weight = weight.detach()
        self.runs, rows, self.dim = self.weight.shape
        n = self.n = rows // 2
        dev = self.weight.device
        full = (n // batch) * batch
        q = torch.arange(n, device=dev)
        in_batch = q < full
        rest = q - full
        # slots[v, q]: table row of view v of the point at epoch position q
        self.slots = torch.stack([
            torch.where(in_batch, 2 * (q // batch) * batch + q % batch, 2 * full + rest),
            torch.where(in_batch, 2 * (q // batch) * batch + batch + q % batch, n + full + rest),
        ])
        self.row_view = torch.empty(2 * n, dtype=torch.int64, device=dev)  # table row -> view
        for v in (0, 1):
            self.row_view[self.slots[v]] = v
        self._points = torch.cat([q, q]).expand(self.runs, -1)  # weight row -> point
        self._views = torch.cat([torch.zeros_like(q), torch.ones_like(q)])  # weight row -> view
        self._base = 2 * n * torch.arange(self.runs, device=dev)[:, None]
        self.b, self.full = batch, full
        self.table = self.weight.clone()
        self.position = None  # (R, N): epoch position of each point; None: weight order

    def _rows_of(self, points: torch.Tensor, views: torch.Tensor) -> torch.Tensor:
        """Current table rows (R, M) of views ``views`` (M,) of points ``points`` (R, M)."""
        if self.position is None:
            return points + views * self.n
        return torch.take(self.slots, self.position.gather(1, points) + views * self.n)

    def _gather(self, rows: torch.Tensor, source: torch.Tensor | None = None) -> torch.Tensor:
        source = self.table if source is None else source
        flat = (rows + self._base).reshape(-1)
        return source.reshape(-1, self.dim).index_select(0, flat).view(self.runs, -1, self.dim)

    def reorder(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (R, 2N, D), laid out like the table before the last :meth:`open`, in the
        table's new order (an optimizer's state follows its rows)."""
        return self._gather(self._order, x)

    def open(self, perm: torch.Tensor) -> None:
        """Lay the rows out for the epoch ``perm`` (R, N): position q holds point perm[:, q]."""
        # the point of each table row: batch rows repeat their B points for the two views
        f = self.full
        batches = perm[:, :f].view(self.runs, -1, 1, self.b).expand(-1, -1, 2, -1).reshape(self.runs, 2 * f)
        points = torch.cat([batches, perm[:, f:], perm[:, f:]], 1)
        self._order = self._rows_of(points, self.row_view)
        self.table = self._gather(self._order)
        self.position = torch.empty_like(perm).scatter_(
            1, perm, torch.arange(self.n, device=perm.device).expand(self.runs, -1))

    def sync(self, rows: torch.Tensor | None = None) -> None:
        """Copy the rows (``rows``, laid out like the table; None: the table) into the weight,
        in point order."""
        self.weight.copy_(self._gather(self._rows_of(self._points, self._views), rows))

    def batch(self, j: int) -> torch.Tensor:
        """Rows ``[z1; z2]`` (R, 2B, D) of batch ``j``: a view of the table."""
        return self.table[:, 2 * j * self.b: 2 * (j + 1) * self.b]

"""Train a stack of runs as one program.

``train_chunk(runs)`` takes runs that share a chunk key (same shapes and loss program) and
trains them together: parameters carry a leading run dimension, one SGD update serves all
runs (per-run learning rate, momentum, weight decay), and every run draws its minibatches
(shuffled epochs) and view noise from its own generator, seeded from its own seed, so a
run's trajectory does not depend on which chunk it lands in.

Free embeddings trained without momentum or weight decay take a sparse step: only the
batch's rows move, read and written in place as one block of a table laid out in the
epoch's order (:class:`EpochRows`); NT-Xent with or without cosine CLOP on unit rows gets
its value and gradient in one pass without autograd (:mod:`simulate.fastpath`), and the
loss value only at logged steps.

A run whose loss or parameters become non-finite is marked diverged at that step and frozen;
its later rows carry ``state = "diverged"`` and NaN metrics. The others go on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from . import metrics as M
from .config import RunConfig
from .data import make_mixture
from .fastpath import ntxent_clop_value_and_grad, supported
from .losses import BASE_LOSSES, TEMPERATURE_LOSSES, make_prototypes
from .losses.clop import clop_rows, prototype_rows, prototype_weights
from .models import FreeEmbeddings, StackedMLP

DIVERGED = "diverged"
#: changes whenever one configuration would train along a different trajectory (minibatch
#: sampling, initial draws, update rule); a sweep folder of another version is not resumed
#: into (see :func:`simulate.sweep.run_sweep`). 2: shuffled epochs, float32 noise draws.
#: 3: VICReg variance term averaged over the two branches (the reference convention); the
#: softmax's exponential as exp (float exp2 rounds by tensor size).
TRAJECTORY_VERSION = 3
#: per-run numbers logged at every logged step (besides objective, state and divergence)
METRIC_COLUMNS = (
    "effective_rank", "variance", "mean_cos", "max_cos", "mean_norm", "proto_cos",
    "min_class_angle", "knn_acc", "probe_acc",
)
#: steps of randomness drawn per generator call
_BLOCK = 64


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` picks CUDA when available, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise ValueError(f"device must be auto, cpu or cuda, got {device!r}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but no CUDA device is available")
    return torch.device(device)


def run_seeds(seed: int) -> tuple[int, int]:
    """(initialisation seed, minibatch seed) of a run, spawned from its seed."""
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
        """(noise (BLOCK, 2, B, d), signs (BLOCK, 2, B, 1) or None)."""
        # noise is drawn in float32 (whatever the chunk's dtype): same law, a fifth of the time
        noise = torch.randn((_BLOCK, 2, self.b) + self.views_shape, generator=self.g) * self.run.aug_sigma
        signs = None
        if self.run.sign_flip:
            signs = torch.randint(0, 2, (_BLOCK, 2, self.b, 1), generator=self.g) * 2 - 1
        return noise, signs


class StackedStream:
    """The per-run streams of a chunk, stacked onto the device.

    Minibatches run through epochs: each epoch is a fresh random permutation of the N points
    per run, cut into ``N // B`` batches of B distinct points (a remainder of ``N mod B`` is
    left out for that epoch), as a shuffled ``DataLoader`` with ``drop_last`` does.
    """

    def __init__(self, streams: list[BatchStream], device, dtype):
        self.streams, self.device, self.dtype = streams, device, dtype
        s0 = streams[0]
        self.n, self.b = s0.n, s0.b
        self.per_epoch = s0.n // s0.b
        self.j = self.per_epoch  # batch index within the epoch; the first next() opens one
        self.perm: torch.Tensor | None = None  # (R, N), this epoch's order
        self.new_epoch = False
        self._pos = _BLOCK

    def _fill(self):
        blocks = [s.noise_block() for s in self.streams]
        self._noise = torch.stack([b[0] for b in blocks], 1).to(self.device, self.dtype)
        self._signs = None
        if blocks[0][1] is not None:
            self._signs = torch.stack([b[1] for b in blocks], 1).to(self.device, self.dtype)
        self._pos = 0

    def next(self):
        """(indices (R, B), noise (R, 2, B, d) or None, signs (R, 2, B, 1) or None) of the next
        step; ``new_epoch`` tells whether it opened an epoch and ``j`` is its batch index."""
        self.new_epoch = self.j == self.per_epoch
        if self.new_epoch:
            self.perm = torch.stack([s.permutation() for s in self.streams]).to(self.device)
            self.j = 0
        self.j += 1
        idx = self.perm[:, self.batch_slice()]
        if self.streams[0].views_shape is None:
            return idx, None, None
        if self._pos == _BLOCK:
            self._fill()
        i = self._pos
        self._pos += 1
        return idx, self._noise[i], None if self._signs is None else self._signs[i]

    def batch_slice(self) -> slice:
        """Epoch positions of the current (last drawn) batch."""
        return slice((self.j - 1) * self.b, self.j * self.b)


class EpochRows:
    """Free-embedding rows laid out in the order of the current epoch, so that every
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

    def _gather(self, rows: torch.Tensor) -> torch.Tensor:
        flat = (rows + self._base).reshape(-1)
        return self.table.view(-1, self.dim).index_select(0, flat).view(self.runs, -1, self.dim)

    def open(self, perm: torch.Tensor) -> None:
        """Lay the rows out for the epoch ``perm`` (R, N): position q holds point perm[:, q]."""
        # the point of each table row: batch rows repeat their B points for the two views
        f = self.full
        batches = perm[:, :f].view(self.runs, -1, 1, self.b).expand(-1, -1, 2, -1).reshape(self.runs, 2 * f)
        points = torch.cat([batches, perm[:, f:], perm[:, f:]], 1)
        self.table = self._gather(self._rows_of(points, self.row_view))
        self.position = torch.empty_like(perm).scatter_(
            1, perm, torch.arange(self.n, device=perm.device).expand(self.runs, -1))

    def sync(self) -> None:
        """Copy the rows into the weight, in point order."""
        self.weight.copy_(self._gather(self._rows_of(self._points, self._views)))

    def batch(self, j: int) -> torch.Tensor:
        """Rows ``[z1; z2]`` (R, 2B, D) of batch ``j``: a view of the table."""
        return self.table[:, 2 * j * self.b: 2 * (j + 1) * self.b]


@dataclass
class Chunk:
    """Stacked state of a chunk: data, model, optimiser tensors, per-run flags."""

    runs: list
    model: torch.nn.Module
    x_train: torch.Tensor  # (R, N, d)
    y_train: torch.Tensor  # (R, N)
    labels: torch.Tensor  # (R, N), -1 unlabelled
    x_test: torch.Tensor
    y_test: torch.Tensor
    streams: StackedStream
    prototypes: torch.Tensor | None
    lr: torch.Tensor
    momentum: torch.Tensor
    weight_decay: torch.Tensor
    clop: torch.Tensor
    epoch_labels: torch.Tensor | None = None  # (R, N), labels in this epoch's order
    epoch_targets: torch.Tensor | None = None  # (R, N', D), their prototypes (fused CLOP)
    epoch_weights: torch.Tensor | None = None  # (R, N'), their CLOP weights in their batch

    def __post_init__(self):
        # decided once per chunk, so the step itself never waits on the device
        self.use_momentum = bool((self.momentum != 0).any())
        self.use_weight_decay = bool((self.weight_decay != 0).any())
        #: NT-Xent (+ cosine CLOP) on unit rows: value and gradient in one pass (fastpath)
        self.fused = supported(self.runs[0], self.lr.dtype)


def _per_run(values, device, dtype):
    return torch.tensor(values, device=device, dtype=dtype)


def build_chunk(runs: list[RunConfig], device: torch.device, dtype=torch.float32) -> Chunk:
    keys = {r.chunk_key() for r in runs}
    if len(keys) != 1:
        raise ValueError("runs must share one chunk key (same shapes and loss program)")
    r0 = runs[0]
    mixtures: dict = {}  # runs of a chunk often share their data
    for r in runs:
        if r.data_config() not in mixtures:
            mixtures[r.data_config()] = make_mixture(r.data_config())
    datas = [mixtures[r.data_config()] for r in runs]
    stack = lambda name, dt=dtype: torch.stack([getattr(d, name) for d in datas]).to(device=device, dtype=dt)  # noqa: E731
    x_train, x_test = stack("x_train"), stack("x_test")
    y_train, y_test = stack("y_train", torch.int64), stack("y_test", torch.int64)
    labels = stack("labels_train", torch.int64)
    seeds = [run_seeds(r.seed) for r in runs]
    n = x_train.shape[1]
    if r0.model == "free":
        # rows [0, N) hold view 1 and [N, 2N) view 2 of each point, initialised at the views
        init = []
        for (init_seed, _), d, r in zip(seeds, datas, runs):
            g = torch.Generator().manual_seed(init_seed)
            noise = torch.randn((2,) + tuple(d.x_train.shape), generator=g).double()  # float32 draw
            v = d.x_train.unsqueeze(0) + r.aug_sigma * noise
            if r.sign_flip:
                v = v * (torch.randint(0, 2, (2, n, 1), generator=g) * 2 - 1)
            v = v.reshape(2 * n, -1)
            if r.init_norm is not None:  # every row at norm init_norm (a zero row stays zero)
                v = v * (r.init_norm / v.norm(dim=-1, keepdim=True).clamp_min(1e-300))
            init.append(v)
        model = FreeEmbeddings.from_tensor(torch.stack(init).to(dtype))
        if r0.update_mode != "free":
            model.renormalise_()
        views_shape = None
    else:
        model = StackedMLP([s for s, _ in seeds], r0.d, r0.hidden, r0.out_dim, r0.depth,
                           r0.batch_norm, dtype=dtype)
        views_shape = (r0.d,)
    model = model.to(device)
    streams = StackedStream([BatchStream(bs, n, r0.batch_size, views_shape, r)
                             for (_, bs), r in zip(seeds, runs)], device, dtype)
    protos = None
    if any(r.clop_weight > 0 for r in runs):
        protos = make_prototypes(r0.k, r0.embedding_dim, r0.prototypes).to(device=device, dtype=dtype)
    f = lambda name: _per_run([getattr(r, name) for r in runs], device, dtype)  # noqa: E731
    return Chunk(runs, model, x_train, y_train, labels, x_test, y_test, streams, protos,
                 f("lr"), f("momentum"), f("weight_decay"), f("clop_weight"))


def base_loss_fn(run: RunConfig):
    cls = BASE_LOSSES[run.loss]
    return cls(run.temperature) if run.loss in TEMPERATURE_LOSSES else cls()


def draw_batch(chunk: Chunk):
    """Indices (R, B), labels (R, B) and the two views of this step for every run."""
    stream = chunk.streams
    idx, noise, signs = stream.next()
    if stream.new_epoch:
        chunk.epoch_labels = chunk.labels.gather(1, stream.perm)
    labels = chunk.epoch_labels[:, stream.batch_slice()]
    if noise is None:
        return idx, labels, None, None
    x = torch.gather(chunk.x_train, 1, idx[..., None].expand(-1, -1, chunk.x_train.shape[-1]))
    v1, v2 = x + noise[:, 0], x + noise[:, 1]
    if signs is not None:
        v1, v2 = v1 * signs[:, 0], v2 * signs[:, 1]
    return idx, labels, v1, v2


def forward_views(chunk: Chunk, idx, v1, v2):
    if isinstance(chunk.model, FreeEmbeddings):
        return chunk.model(idx), chunk.model(idx + chunk.x_train.shape[1])
    return chunk.model(None, v1), chunk.model(None, v2)


def chunk_loss(chunk: Chunk, loss_fn, z: torch.Tensor, labels) -> torch.Tensor:
    """Per-run objective ``base + lambda_r * CLOP`` (R,) on the rows ``z = [z1; z2]``."""
    raw = chunk.runs[0].update_mode == "sphere_raw"
    b = labels.shape[1]
    if hasattr(loss_fn, "forward_rows") and z.dtype in (torch.float32, torch.float64):
        loss = loss_fn.forward_rows(z, labels, normalize=not raw)
    else:
        loss = loss_fn(z[:, :b], z[:, b:], labels, normalize=not raw)
    if chunk.prototypes is not None:
        # labels and prototypes were validated when the chunk was built
        loss = loss + chunk.clop * clop_rows(z, labels, chunk.prototypes, chunk.runs[0].distance)
    return loss


@torch.no_grad()
def sgd_step(params, grads, bufs, chunk: Chunk, alive: torch.Tensor, first: bool) -> torch.Tensor:
    """``torch.optim.SGD`` semantics (no dampening, no Nesterov) with per-run hyper-parameters,
    over stacked parameters. A run is updated only if it is alive and its new parameters are
    all finite; returns that per-run mask (the others keep their parameters and buffers)."""
    R = alive.shape[0]
    use_wd, use_mom = chunk.use_weight_decay, chunk.use_momentum
    new_p, new_b = [], []
    for p, g, buf in zip(params, grads, bufs):
        shape = (-1,) + (1,) * (p.dim() - 1)
        d_p = g + chunk.weight_decay.view(shape) * p if use_wd else g
        b = d_p if (first or not use_mom) else buf * chunk.momentum.view(shape) + d_p
        new_p.append(p - chunk.lr.view(shape) * b)
        new_b.append(b)
    ok = alive & _finite_per_run(new_p, R)  # non-finite gradients or buffers reach the parameters
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


def _finite_per_run(tensors, runs: int) -> torch.Tensor:
    """Per-run finiteness, via one sum per tensor (a NaN or inf anywhere makes the sum
    non-finite; so does a finite sum that overflows, which only happens to runaway runs)."""
    ok = torch.ones(runs, dtype=torch.bool, device=tensors[0].device)
    for t in tensors:
        ok &= torch.isfinite(t.reshape(runs, -1).sum(1))
    return ok


def _sparse_free_step(chunk: Chunk, loss_fn, rows: EpochRows, labels, alive, sphere: bool,
                      value: bool = True):
    """Plain SGD (no momentum, no weight decay) on free embeddings, touching only the rows of
    the batch (this step's slice of ``rows``): the same update as the dense step, whose
    gradient is zero on every other row.

    Returns (per-run loss, or None when ``value`` is False and the fused path can skip it;
    per-run mask of the runs updated). A non-finite loss always shows in the gradient
    (through ``log zsum``, ``P = e / zsum`` or the rows), so the update check finds it."""
    stream = chunk.streams
    z = rows.batch(stream.j - 1)  # a view: updated in place
    R = z.shape[0]
    if chunk.fused:
        # every run's gradient is its own; the runs that are dead or not finite are masked below
        clop = None
        if chunk.prototypes is not None:
            if stream.new_epoch:
                # each batch's CLOP weights depend on its own number of labelled points
                used = chunk.epoch_labels[:, : stream.per_epoch * stream.b]
                chunk.epoch_targets = prototype_rows(used, chunk.prototypes)
                chunk.epoch_weights = prototype_weights(used.reshape(-1, stream.b), z.dtype).view(used.shape)
            batch = stream.batch_slice()
            clop = (chunk.epoch_targets[:, batch], chunk.epoch_weights[:, batch], chunk.clop)
        loss, g = ntxent_clop_value_and_grad(z, chunk.runs[0].temperature, clop, value=value)
        finite = alive if loss is None else torch.isfinite(loss)
    else:
        leaf = z.detach().requires_grad_(True)
        loss = chunk_loss(chunk, loss_fn, leaf, labels)
        finite = torch.isfinite(loss)
        total = torch.where(alive & finite, loss, torch.zeros_like(loss)).sum()
        (g,) = torch.autograd.grad(total, [leaf])
    with torch.no_grad():
        upd = torch.addcmul(z, chunk.lr.view(-1, 1, 1), g, value=-1.0)
        if sphere:
            upd = torch.nn.functional.normalize(upd, dim=-1)
        ok = alive & finite & _finite_per_run([upd], R)
        if z.device.type == "cpu" and bool(ok.all()):  # (a device would wait for this test)
            z.copy_(upd)
        else:
            z.copy_(torch.where(ok.view(-1, 1, 1), upd, z))
    return loss, ok


@torch.no_grad()
def evaluate(chunk: Chunk, final: bool) -> dict:
    """Per-run metrics of the embeddings of all training points (float64). With ``final``
    (the first and the last logged step), also kNN and linear-probe accuracy on the held-out
    points (MLP encoders; free embeddings have no held-out points: NaN)."""
    model = chunk.model
    if isinstance(model, FreeEmbeddings):
        emb = model.weight
        y = torch.cat([chunk.y_train, chunk.y_train], 1)
    else:
        emb = model.embed_all(chunk.x_train)
        y = chunk.y_train
    finite = _finite_per_run([emb], emb.shape[0])
    emb = torch.where(finite.view(-1, 1, 1), emb, torch.ones_like(emb))  # keep linalg defined
    e64 = emb.double()  # the metrics work in float64 (max_cos in the embeddings' dtype)
    u64 = torch.nn.functional.normalize(e64, dim=-1)
    out = {
        "effective_rank": M.effective_rank(e64),
        "variance": M.embedding_variance(u64),
        "mean_cos": M.mean_pairwise_cosine(u64, unit=True),
        "max_cos": M.max_pairwise_cosine(emb),
        "mean_norm": M.mean_norm(e64),
        "state_code": M.collapse_state(u64, unit=True),
        "min_class_angle": M.min_class_angle(e64, y, chunk.runs[0].k),
    }
    nan = torch.full_like(out["mean_norm"], math.nan)
    # runs without CLOP get NaN whatever their chunk-mates use
    out["proto_cos"] = nan if chunk.prototypes is None else torch.where(
        chunk.clop > 0, M.prototype_cosine(u64, y, chunk.prototypes, unit=True), nan)
    out["knn_acc"], out["probe_acc"] = nan, nan
    out["finite"] = finite
    if final and not isinstance(model, FreeEmbeddings) and chunk.x_test.shape[1] > 0:
        test = model.embed_all(chunk.x_test)
        test_ok = _finite_per_run([test], test.shape[0])
        out["finite"] = finite & test_ok
        test = torch.where(out["finite"].view(-1, 1, 1), test, torch.ones_like(test))
        emb = torch.where(out["finite"].view(-1, 1, 1), emb, torch.ones_like(emb))
        k = chunk.runs[0].k
        tr_u = torch.nn.functional.normalize(emb.double(), dim=-1)
        te_u = torch.nn.functional.normalize(test.double(), dim=-1)
        out["knn_acc"] = M.knn_accuracy(tr_u, chunk.y_train, te_u, chunk.y_test, k)
        out["probe_acc"] = M.linear_probe_accuracy(tr_u, chunk.y_train, te_u, chunk.y_test, k)
    return out


@torch.no_grad()
def final_embeddings(chunk: Chunk):
    """Long table of the embeddings of every training point: run_id, point, label, e0..e{D-1}.
    Free embeddings contribute their view-1 rows."""
    import pandas as pd

    model = chunk.model
    n = chunk.x_train.shape[1]
    emb = model.weight[:, :n] if isinstance(model, FreeEmbeddings) else model.embed_all(chunk.x_train)
    emb = emb.double().cpu().numpy()
    frames = []
    for i, run in enumerate(chunk.runs):
        f = pd.DataFrame(emb[i], columns=[f"e{j}" for j in range(emb.shape[-1])])
        f.insert(0, "label", chunk.y_train[i].cpu().numpy())
        f.insert(0, "point", np.arange(n))
        f.insert(0, "run_id", run.run_id)
        frames.append(f)
    return pd.concat(frames, ignore_index=True)


def train_chunk(runs: list[RunConfig], device: str | torch.device = "cpu", dtype=torch.float32,
                progress=None, state: dict | None = None) -> list[dict]:
    """Train ``runs`` (one chunk) together; return one row per run and logged step.

    Args:
        runs: runs sharing one chunk key.
        device: ``auto``, ``cpu``, ``cuda`` or a torch device.
        dtype: parameter dtype (float32 by default).
        progress: called with 1 after every step (e.g. a tqdm bar's ``update``).
        state: if given, receives the trained ``model`` and the ``chunk`` at the end.
    """
    device = resolve_device(device) if isinstance(device, str) else device
    chunk = build_chunk(runs, device, dtype)
    r0, R = runs[0], len(runs)
    loss_fn = base_loss_fn(r0)
    params = [p for p in chunk.model.parameters()]
    bufs = [torch.zeros_like(p) for p in params]
    alive = torch.ones(R, dtype=torch.bool, device=device)
    diverged_step = torch.full((R,), -1, dtype=torch.int64, device=device)
    last_loss = torch.full((R,), math.nan, dtype=torch.float64, device=device)
    rows: list[dict] = []
    sphere = r0.update_mode != "free"

    previous: list[torch.Tensor] | None = None  # the parameters at the last logged step

    def log(step: int, final: bool):
        nonlocal alive, previous
        ev = evaluate(chunk, final)
        ev["param_change"] = (torch.full((R,), math.nan, dtype=torch.float64, device=device)
                              if previous is None else relative_change(params, previous))
        previous = [p.detach().clone() for p in params]
        # embeddings that overflow although the parameters are finite also end a run
        diverged_step.copy_(torch.where(~ev["finite"] & (diverged_step < 0), step, diverged_step))
        alive = alive & ev["finite"]
        ev_cpu = {k: v.detach().cpu() for k, v in ev.items()}
        div, obj = diverged_step.cpu(), last_loss.cpu()
        for i, run in enumerate(runs):
            dead = bool(div[i] >= 0)
            row = {"run_id": run.run_id, "step": step, "objective": float(obj[i])}
            row.update({k: math.nan if dead else float(ev_cpu[k][i]) for k in METRIC_COLUMNS})
            row["state"] = DIVERGED if dead else M.STATE_NAMES[int(ev_cpu["state_code"][i])]
            row["param_change"] = math.nan if dead else float(ev_cpu["param_change"][i])
            row["frozen"] = row["param_change"] == 0.0
            row["diverged"] = dead
            row["diverged_step"] = int(div[i])
            rows.append(row)

    log(0, True)
    sparse = isinstance(chunk.model, FreeEmbeddings) and not (chunk.use_momentum or chunk.use_weight_decay)
    layout = EpochRows(chunk.model.weight, r0.batch_size) if sparse else None
    for step in range(1, r0.steps + 1):
        idx, labels, v1, v2 = draw_batch(chunk)
        logged = step % r0.log_every == 0 or step == r0.steps
        if sparse:
            if chunk.streams.new_epoch:
                layout.open(chunk.streams.perm)
            loss, ok = _sparse_free_step(chunk, loss_fn, layout, labels, alive, sphere, value=logged)
            if logged:
                layout.sync()  # the metrics read the weight
        else:
            z1, z2 = forward_views(chunk, idx, v1, v2)
            loss = chunk_loss(chunk, loss_fn, torch.cat([z1, z2], 1), labels)
            finite = torch.isfinite(loss)
            total = torch.where(alive & finite, loss, torch.zeros_like(loss)).sum()
            grads = torch.autograd.grad(total, params)
            ok = sgd_step(params, grads, bufs, chunk, alive & finite, first=step == 1)
            if sphere:
                chunk.model.renormalise_()
        diverged_step.copy_(torch.where(alive & ~ok, step, diverged_step))
        alive = alive & ok
        if loss is not None:
            last_loss = torch.where(torch.isfinite(loss), loss.detach().double(),
                                    torch.full_like(last_loss, math.nan))
        if logged:
            log(step, step == r0.steps)
        if progress is not None:
            progress(1)
    if state is not None:
        state.update(model=chunk.model, chunk=chunk)
        if r0.save_embeddings:
            state["embeddings"] = final_embeddings(chunk)
    return rows

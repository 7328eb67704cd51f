"""A chunk's stacked state: the runs' data, model and per-run hyper-parameters as tensors with
a leading run dimension, and the minibatches drawn from it.

A *chunk* is a list of runs sharing one chunk key (:meth:`simulate.config.RunConfig.chunk_key`);
:func:`build_state` turns it into one :class:`ChunkState`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import RunConfig
from ..data import augment, make_mixture
from ..digits import background_value, make_digits, shift_images
from ..losses import make_prototypes
from ..models import FreeEmbeddings, StackedMLP
from .fused import supported
from .streams import BatchStream, StackedStream, run_seeds


@dataclass
class ChunkState:
    """Stacked state of a chunk: data, model, minibatch stream, per-run hyper-parameters."""

    runs: list
    model: torch.nn.Module
    x_train: torch.Tensor  # (R, N, d)
    y_train: torch.Tensor  # (R, N)
    x_test: torch.Tensor
    y_test: torch.Tensor
    stream: StackedStream
    prototypes: torch.Tensor | None  # (k, D), when the chunk's runs use CLOP
    lr: torch.Tensor  # (R,) each
    momentum: torch.Tensor
    weight_decay: torch.Tensor
    clop_weight: torch.Tensor
    nesterov: torch.Tensor | None = None  # (R,) bool
    lars_trust: torch.Tensor | None = None  # (R,) each
    beta1: torch.Tensor | None = None
    beta2: torch.Tensor | None = None
    eps: torch.Tensor | None = None

    def __post_init__(self):
        fill = lambda v, dt=self.lr.dtype: torch.full_like(self.lr, v, dtype=dt)  # noqa: E731
        for name in ("lars_trust", "beta1", "beta2", "eps"):  # the defaults, if not given
            if getattr(self, name) is None:
                setattr(self, name, fill(getattr(RunConfig, name)))
        if self.nesterov is None:
            self.nesterov = fill(False, torch.bool)
        # decided once per chunk, so the step itself never waits on the device
        self.use_momentum = bool((self.momentum != 0).any())
        self.use_weight_decay = bool((self.weight_decay != 0).any())
        self.use_nesterov = bool(self.nesterov.any())
        #: free embeddings with plain SGD (no momentum, no weight decay): only the batch's rows move
        self.sparse = (isinstance(self.model, FreeEmbeddings) and self.runs[0].optimizer == "sgd"
                       and not (self.use_momentum or self.use_weight_decay))
        #: NT-Xent (+ cosine CLOP) on unit rows: value and gradient in one pass (fused)
        self.fused = supported(self.runs[0], self.lr.dtype)


def _per_run(values, device, dtype):
    return torch.tensor(values, device=device, dtype=dtype)


def build_state(runs: list[RunConfig], device: torch.device, dtype=torch.float32) -> ChunkState:
    """The stacked state of the chunk ``runs`` at step 0."""
    keys = {r.chunk_key() for r in runs}
    if len(keys) != 1:
        raise ValueError("runs must share one chunk key (same shapes and program)")
    r0 = runs[0]
    mixtures: dict = {}  # runs of a chunk often share their data
    for r in runs:
        if r.data_config() not in mixtures:
            mixtures[r.data_config()] = (make_digits(r.data_config()) if r.data == "digits"
                                         else make_mixture(r.data_config()))
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
            signs = (torch.randint(0, 2, (2, n, 1), generator=g) * 2 - 1) if r.sign_flip else None
            v = augment(d.x_train.unsqueeze(0), r.aug_sigma * noise, signs).reshape(2 * n, -1)
            if r.init_norm is not None:  # every row at norm init_norm (a zero row stays zero)
                v = v * (r.init_norm / v.norm(dim=-1, keepdim=True).clamp_min(1e-300))
            init.append(v)
        model = FreeEmbeddings(torch.stack(init).to(dtype))
        if r0.update_mode != "free":
            model.renormalise_()
        views_shape = None
    else:
        model = StackedMLP([s for s, _ in seeds], r0.d, r0.hidden, r0.out_dim, r0.depth,
                           r0.batch_norm, dtype=dtype, projector=r0.projector_widths)
        views_shape = (r0.d,)
    model = model.to(device)
    stream = StackedStream([BatchStream(bs, n, r0.batch_size, views_shape, r)
                            for (_, bs), r in zip(seeds, runs)], labels, device, dtype)
    prototypes = None
    if any(r.clop_weight > 0 for r in runs):  # (all or none, except on the fused step)
        prototypes = make_prototypes(r0.k, r0.embedding_dim, r0.prototypes).to(device=device, dtype=dtype)
    f = lambda name: _per_run([getattr(r, name) for r in runs], device, dtype)  # noqa: E731
    return ChunkState(runs, model, x_train, y_train, x_test, y_test, stream, prototypes,
                      f("lr"), f("momentum"), f("weight_decay"), f("clop_weight"),
                      _per_run([r.nesterov for r in runs], device, torch.bool), f("lars_trust"),
                      f("beta1"), f("beta2"), f("eps"))


def draw_views(state: ChunkState):
    """Indices (R, B), labels (R, B) and this step's two views of every run as one block
    ``[v1; v2]`` (R, 2B, d), the losses' layout (None for free embeddings)."""
    idx, labels, noise, signs = state.stream.next()
    if noise is None:
        return idx, labels, None
    R, B = idx.shape
    n, d = state.x_train.shape[1:]
    rows = (idx + n * torch.arange(R, device=idx.device)[:, None]).reshape(-1)
    x = state.x_train.reshape(R * n, d).index_select(0, rows).view(R, 1, B, d)
    if state.stream.shifts is not None:  # digits: shift each image (background fill), then add the noise
        x = shift_images(x.expand(-1, 2, -1, -1), state.stream.shifts, background_value())
    return idx, labels, augment(x, noise, signs).view(R, 2 * B, d)


def draw_batch(state: ChunkState):
    """Indices (R, B), labels (R, B) and the two views (None for free embeddings) of this
    step for every run (:func:`draw_views`, split)."""
    idx, labels, views = draw_views(state)
    if views is None:
        return idx, labels, None, None
    b = idx.shape[1]
    return idx, labels, views[:, :b], views[:, b:]


def forward_views(state: ChunkState, idx, v1, v2):
    """The embeddings ``(z1, z2)`` (R, B, D) of this step's two views."""
    if isinstance(state.model, FreeEmbeddings):
        return state.model(idx), state.model(idx + state.x_train.shape[1])
    return state.model(None, v1), state.model(None, v2)

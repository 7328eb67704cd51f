"""Independent ways to train the MLP bench's runs, for ``python -m simulate bench --model mlp``
(:mod:`simulate.bench_mlp`): one configuration at a time as an ``nn.Sequential`` with its own
``torch.optim`` optimizer (:func:`loop_one`), and a ``torch.func`` vmap ensemble
(:func:`vmap_chunk`, plain SGD); and the grid's batched matmuls alone (:func:`mlp_floor_s`).
Both references read the engine's own data, initial weights and minibatches (``build_state``
and ``draw_batch``), so they follow the engine's trajectory up to float32 rounding.
"""

from __future__ import annotations

import time

import torch
from torch import nn

from .bench import loop_optimizer
from .config import RunConfig
from .engine.state import build_state, draw_batch
from .losses import clop_term, nt_xent


def _linear_layers(model):
    """``(weight (R, in, out), bias (R, 1, out), relu_after)`` of the StackedMLP's layers:
    the encoder's, then the projector's (no ReLU after either's last layer)."""
    groups = [(model.weights, model.biases)]
    if model.has_projector:
        groups.append((model.proj_weights, model.proj_biases))
    out = []
    for weights, biases in groups:
        out += [(w, b, i < len(weights) - 1) for i, (w, b) in enumerate(zip(weights, biases))]
    return out


def sequential_from(model, r: int) -> nn.Sequential:
    """Run ``r`` of a :class:`simulate.models.StackedMLP` (no batch norm; with its projector,
    if any) as an ``nn.Sequential`` of Linear/ReLU with the same weights."""
    layers: list[nn.Module] = []
    for w, b, relu in _linear_layers(model):
        lin = nn.Linear(w.shape[1], w.shape[2], device=w.device, dtype=w.dtype)
        with torch.no_grad():
            lin.weight.copy_(w[r].t())
            lin.bias.copy_(b[r].reshape(-1))
        layers.append(lin)
        if relu:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def params_flat(seq: nn.Sequential) -> torch.Tensor:
    """A Sequential's parameters in the StackedMLP's layout ((in, out) weights), flattened
    layer by layer (weight, bias)."""
    out = []
    for m in seq:
        if isinstance(m, nn.Linear):
            out += [m.weight.detach().t().reshape(-1), m.bias.detach().reshape(-1)]
    return torch.cat(out)


def stacked_flat(model) -> torch.Tensor:
    """(R, P) the StackedMLP's parameters in the order of :func:`params_flat`."""
    R = model.weights[0].shape[0]
    out = []
    for w, b, _ in _linear_layers(model):
        out += [w.detach().reshape(R, -1), b.detach().reshape(R, -1)]
    return torch.cat(out, 1)


def loop_one(run: RunConfig, device) -> torch.Tensor:
    """Train ``run`` alone: an nn.Sequential and its torch.optim optimizer
    (:func:`simulate.bench.loop_optimizer`: ``torch.optim.SGD``, or the per-configuration
    LARS) on the engine's data, init and batches. Stops at the first non-finite loss (the
    engine freezes such a run). Returns its final parameters, flattened."""
    chunk = build_state([run], device)
    seq = sequential_from(chunk.model, 0)
    opt = loop_optimizer(run, seq.parameters())
    protos = chunk.prototypes
    for _ in range(run.steps):
        _, labels, v1, v2 = draw_batch(chunk)
        z1, z2 = seq(v1[0]), seq(v2[0])
        loss = nt_xent(z1, z2, run.temperature)
        if protos is not None:
            loss = loss + run.clop_weight * clop_term(z1, z2, labels[0], protos)
        if not torch.isfinite(loss):
            break
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return params_flat(seq)


def vmap_chunk(runs: list[RunConfig], device) -> torch.Tensor:
    """Train one chunk's runs (plain SGD) as a torch.func ensemble: the Sequentials' stacked
    parameters (``stack_module_state``), the forward as ``vmap(functional_call)``, the same
    batched losses, gradients by ``torch.autograd.grad``, ``p -= lr_r g`` (no divergence
    masking). (``vmap(grad(...))`` is not used: the cosine CLOP is a custom autograd Function
    without vmap support.) Returns (R, P) final parameters."""
    from torch.func import functional_call, stack_module_state

    state = build_state(runs, device)
    seqs = [sequential_from(state.model, r) for r in range(len(runs))]
    params, buffers = stack_module_state(seqs)
    base = sequential_from(state.model, 0).to("meta")
    names = list(params)
    tensors = [params[n] for n in names]
    lr, cw, tau = state.lr, state.clop_weight, runs[0].temperature
    forward = torch.vmap(lambda p, b, x: functional_call(base, (p, b), (x,)))
    for _ in range(runs[0].steps):
        _, labels, v1, v2 = draw_batch(state)
        p = dict(zip(names, tensors))
        z1, z2 = forward(p, buffers, v1), forward(p, buffers, v2)
        loss = nt_xent(z1, z2, tau)
        if state.prototypes is not None:
            loss = loss + cw * clop_term(z1, z2, labels, state.prototypes)
        grads = torch.autograd.grad(loss.sum(), tensors)
        with torch.no_grad():
            for t, g in zip(tensors, grads):
                t.sub_(lr.view((-1,) + (1,) * (t.dim() - 1)) * g)
    R = len(runs)
    return torch.cat([(t.detach().transpose(1, 2) if t.dim() == 3 else t.detach()).reshape(R, -1)
                      for t in tensors], 1)


def mlp_floor_s(runs: int, batch: int, widths, emb: int, steps: int, device) -> float:
    """Wall time of the grid's batched matmuls alone, at its shapes, ``steps`` times: per layer
    (in -> out) the forward ``(R, 2B, in) @ (R, in, out)``, the weight gradient
    ``(R, in, 2B) @ (R, 2B, out)`` and (after the first layer) the input gradient
    ``(R, 2B, out) @ (R, out, in)``; then the similarities ``(R, 2B, D) @ (R, D, 2B)`` and their
    two backward matmuls ``(R, 2B, 2B) @ (R, 2B, D)``."""
    rows = 2 * batch
    ops = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        ops.append((torch.randn(runs, rows, a, device=device), torch.randn(runs, a, b, device=device)))
        ops.append((torch.randn(runs, a, rows, device=device), torch.randn(runs, rows, b, device=device)))
        if i > 0:
            ops.append((torch.randn(runs, rows, b, device=device), torch.randn(runs, b, a, device=device)))
    u = torch.randn(runs, rows, emb, device=device)
    ops.append((u, torch.randn(runs, emb, rows, device=device)))
    e = torch.randn(runs, rows, rows, device=device)
    ops += [(e, u), (e, u)]
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for x, y in ops:
        torch.bmm(x, y)
    sync()
    t = time.perf_counter()
    for _ in range(steps):
        for x, y in ops:
            torch.bmm(x, y)
    sync()
    return time.perf_counter() - t

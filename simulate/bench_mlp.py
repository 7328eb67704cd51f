"""``python -m simulate bench --model mlp``: the engine on MLP encoders against an idiomatic
per-configuration loop and a ``torch.func`` vmap ensemble, in one process.

The grid is the quick preset's lr sweep shape for NT-Xent (:func:`mlp_grid`): CLOP weight 0
and 1, 8 learning rates from 1e-3 to 1e4 (log-spaced), 2 seeds = 32 configurations; MLP
hidden 64, depth 3, out 16; mixture d = 16, k = 4, 128 points per class, batch 64, 300 steps;
plain SGD (the only optimizer this bench takes).

Three ways, alternating within each of ``repeats`` rounds (the JSON reports medians):

* ``engine``: :func:`simulate.engine.train_chunk` on the grid's chunks (CLOP off and on are
  two programs), as ``python -m simulate bench`` times it for free embeddings;
* ``loop``: one configuration at a time, one ``nn.Sequential`` (Linear/ReLU) per run and its
  own ``torch.optim.SGD``, losses :func:`nt_xent` and :func:`clop_term` at R = 1. Its data,
  initial weights and minibatches (indices, labels, augmentation noise) are the engine's own
  for that run (``build_state([run])`` copied into the Sequential), so the two follow the same
  trajectory up to float32 rounding. The loop stops a run at its first non-finite loss (the
  engine freezes it); it does no evaluation;
* ``vmap``: ``torch.func.stack_module_state`` over the same Sequentials, the forward as
  ``vmap(functional_call)`` over the stacked parameters, the same batched losses, gradients by
  ``torch.autograd.grad`` on the stacked parameters, SGD as ``p -= lr_r * g`` (no divergence
  masking). The batches come from the engine's own stream (``build_state`` of each chunk).
  (``vmap(grad(...))`` is not used: the cosine CLOP is a custom autograd Function without
  vmap support.)

JSON: ``engine_s``, ``loop_s``, ``vmap_s`` (medians) and ``*_all``; ``speedup`` =
loop_s / engine_s; ``vmap_speedup`` = vmap_s / engine_s; ``floor_fraction`` = median over
rounds of (the grid's batched matmuls of forward and backward alone, :func:`mlp_floor_s`) /
engine time; ``max_abs_diff``: the largest |engine - loop| over the final parameters of the
runs with lr <= 1 that stayed finite on both sides (``runs_compared``); at larger learning
rates float32 rounding is amplified by the dynamics (or the runs diverge), so those are
reported apart as ``max_abs_diff_all_finite`` over every run finite on both sides, and
``max_rel_diff_all_finite``: per run max |engine - loop| / max |engine|, the largest.
``vmap_max_abs_diff``: the same lr <= 1 comparison, vmap against engine.
"""

from __future__ import annotations

import json
import math
import time

import numpy as np
import torch
from torch import nn

from .config import RunConfig, SpecError, expand
from .engine import resolve_device, train_chunk
from .engine.state import build_state, draw_batch
from .losses import clop_term, nt_xent
from .plan import plan_chunks

#: learning rates at or below this are compared exactly (engine vs loop, engine vs vmap)
COMPARE_LR_MAX = 1.0


def mlp_grid(steps: int = 300, lrs=None, seeds=(0, 1), clop_weights=(0.0, 1.0)) -> list[RunConfig]:
    """The quick preset's lr sweep shape (NT-Xent only), plain SGD."""
    lrs = [float(x) for x in np.geomspace(1e-3, 1e4, 8)] if lrs is None else [float(x) for x in lrs]
    return expand({
        "loss": "ntxent", "temperature": 0.5, "clop_weight": [float(c) for c in clop_weights],
        "lr": lrs, "seed": list(seeds), "model": "mlp", "hidden": 64, "depth": 3, "out_dim": 16,
        "k": 4, "d": 16, "per_class": 128, "mean_scale": 2.0, "sigma": 1.0, "aug_sigma": 0.5,
        "label_fraction": 0.5, "batch_size": 64, "steps": steps, "log_every": steps,
        "optimizer": "sgd",
    })


def sequential_from(model, r: int) -> nn.Sequential:
    """Run ``r`` of a :class:`simulate.models.StackedMLP` (no batch norm, no projector) as an
    ``nn.Sequential`` of Linear/ReLU with the same weights."""
    layers: list[nn.Module] = []
    last = len(model.weights) - 1
    for i, (w, b) in enumerate(zip(model.weights, model.biases)):
        lin = nn.Linear(w.shape[1], w.shape[2], device=w.device, dtype=w.dtype)
        with torch.no_grad():
            lin.weight.copy_(w[r].t())
            lin.bias.copy_(b[r].reshape(-1))
        layers.append(lin)
        if i < last:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def _params_flat(seq: nn.Sequential) -> torch.Tensor:
    """A Sequential's parameters in the StackedMLP's layout ((in, out) weights), flattened."""
    out = []
    for m in seq:
        if isinstance(m, nn.Linear):
            out += [m.weight.detach().t().reshape(-1), m.bias.detach().reshape(-1)]
    return torch.cat(out)


def _stacked_flat(model) -> torch.Tensor:
    """(R, P) the StackedMLP's parameters in the same order as :func:`_params_flat`."""
    R = model.weights[0].shape[0]
    out = []
    for w, b in zip(model.weights, model.biases):
        out += [w.detach().reshape(R, -1), b.detach().reshape(R, -1)]
    return torch.cat(out, 1)


def loop_one(run: RunConfig, device) -> torch.Tensor:
    """Train ``run`` alone: an nn.Sequential and torch.optim.SGD on the engine's data, init and
    batches. Returns its final parameters, flattened."""
    chunk = build_state([run], device)
    seq = sequential_from(chunk.model, 0)
    opt = torch.optim.SGD(seq.parameters(), lr=run.lr)
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
    return _params_flat(seq)


def vmap_chunk(runs: list[RunConfig], device) -> torch.Tensor:
    """Train one chunk's runs as a torch.func ensemble; (R, P) final parameters."""
    from torch.func import functional_call, stack_module_state

    state = build_state(runs, device)
    seqs = [sequential_from(state.model, r) for r in range(len(runs))]
    params, buffers = stack_module_state(seqs)
    base = sequential_from(state.model, 0).to("meta")
    names = list(params)
    tensors = [params[n] for n in names]
    lr = state.lr
    cw = state.clop_weight
    tau = runs[0].temperature

    def fmodel(p, b, x):
        return functional_call(base, (p, b), (x,))

    forward = torch.vmap(fmodel)
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
    out = []
    for n in names:
        t = tensors[names.index(n)].detach()
        out.append((t.transpose(1, 2) if t.dim() == 3 else t).reshape(R, -1))
    return torch.cat(out, 1)


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


def _timed(fn, sync):
    """``fn()`` and its wall time in seconds (after the device has finished)."""
    t = time.perf_counter()
    out = fn()
    sync()
    return out, time.perf_counter() - t


def _one_round(runs, chunks, dev, sync, times: dict):
    """Time the engine, the loop, vmap and the matmul floor once (appended to ``times``) and
    return the final parameters of each side, (R, P) in the engine's run order."""
    r0 = runs[0]
    widths = [r0.d] + [r0.hidden] * (r0.depth - 1) + [r0.out_dim]
    times["floor"].append(mlp_floor_s(len(runs), r0.batch_size, widths, r0.out_dim, r0.steps, dev))
    results, t = _timed(lambda: [train_chunk(c, dev) for c in chunks], sync)
    times["engine"].append(t)
    looped, t = _timed(lambda: [loop_one(r, dev) for r in runs], sync)
    times["loop"].append(t)
    vm, t = _timed(lambda: [vmap_chunk(c, dev) for c in chunks], sync)
    times["vmap"].append(t)
    ordered = [r for res in results for r in res.state.runs]
    position = {r.run_id: i for i, r in enumerate(runs)}
    engine_p = torch.cat([_stacked_flat(res.state.model) for res in results])
    loop_p = torch.stack(looped)[[position[r.run_id] for r in ordered]]
    return ordered, engine_p, loop_p, torch.cat(vm)


def _differences(ordered, engine_p, loop_p, vmap_p) -> dict:
    """Engine against the loop (runs at lr <= COMPARE_LR_MAX, and every run finite on both
    sides) and against vmap."""
    small = torch.tensor([r.lr <= COMPARE_LR_MAX for r in ordered], device=engine_p.device)
    fin = lambda x: torch.isfinite(x).all(-1)  # noqa: E731

    def diff(a, b, mask):
        m = mask & fin(a) & fin(b)
        return (float((a[m] - b[m]).abs().max()) if m.any() else math.nan), int(m.sum())

    def rel(a, b):  # per run |a - b| / max |a|, over the runs finite on both sides
        m = fin(a) & fin(b)
        r = (a[m] - b[m]).abs().amax(-1) / a[m].abs().amax(-1).clamp_min(1e-30)
        return float(r.max()) if m.any() else math.nan

    mad, compared = diff(engine_p, loop_p, small)
    mad_all, compared_all = diff(engine_p, loop_p, torch.ones_like(small))
    return {"max_abs_diff": mad, "runs_compared": compared, "compare_lr_max": COMPARE_LR_MAX,
            "max_abs_diff_all_finite": mad_all, "runs_finite_both": compared_all,
            "max_rel_diff_all_finite": rel(engine_p, loop_p),
            "vmap_max_abs_diff": diff(engine_p, vmap_p, small)[0]}


def run_mlp_bench(device: str = "auto", steps: int = 300, repeats: int = 3, verbose: bool = True,
                  runs: list[RunConfig] | None = None) -> dict:
    if not (isinstance(repeats, int) and repeats >= 1):
        raise ValueError(f"repeats must be an integer >= 1, got {repeats!r}")
    runs = mlp_grid(steps) if runs is None else runs
    dev = resolve_device(device)
    say = print if verbose else (lambda *a, **k: None)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    chunks = plan_chunks(runs, 2**62)
    times: dict = {"engine": [], "loop": [], "vmap": [], "floor": []}
    for rep in range(repeats):
        params = _one_round(runs, chunks, dev, sync, times)
        say(f"round {rep + 1}: engine {times['engine'][-1]:.2f} s, loop {times['loop'][-1]:.2f} s, "
            f"vmap {times['vmap'][-1]:.2f} s, matmuls alone {times['floor'][-1]:.2f} s")
    med = {k: float(np.median(v)) for k, v in times.items()}
    out = {
        "model": "mlp", "configs": len(runs), "steps": runs[0].steps, "optimizer": "sgd",
        "engine_s": round(med["engine"], 4), "loop_s": round(med["loop"], 4), "vmap_s": round(med["vmap"], 4),
        "matmul_s": round(med["floor"], 4),
        "engine_s_all": [round(x, 4) for x in times["engine"]],
        "loop_s_all": [round(x, 4) for x in times["loop"]],
        "vmap_s_all": [round(x, 4) for x in times["vmap"]],
        "matmul_s_all": [round(x, 4) for x in times["floor"]],
        "speedup": round(med["loop"] / med["engine"], 3),
        "vmap_speedup": round(med["vmap"] / med["engine"], 3),
        "floor_fraction": round(float(np.median([f / e for f, e in zip(times["floor"], times["engine"])])), 4),
        **_differences(*params),
        "device": str(dev) if dev.type == "cpu" else torch.cuda.get_device_name(dev),
        "torch_threads": torch.get_num_threads(),
    }
    say(f"{'method':<8} {'median s':>10} {'vs engine':>10}")
    for name in ("engine", "loop", "vmap"):
        say(f"{name:<8} {med[name]:>10.3f} {med[name] / med['engine']:>10.2f}x")
    say(f"{'matmuls':<8} {med['floor']:>10.3f} {med['floor'] / med['engine']:>10.2f}x")
    return out


def main_bench_mlp(device, steps: int, repeats: int = 3, optimizers=("sgd",)) -> int:
    if list(optimizers) != ["sgd"]:
        raise SpecError(f"--model mlp takes only --optimizer sgd, got {','.join(optimizers)!r}")
    print(json.dumps(run_mlp_bench(device, steps, repeats)))
    return 0

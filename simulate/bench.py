"""``python -m simulate bench``: the batched engine against a per-configuration loop.

One fixed grid of 64 configurations shaped like the default figure sweeps (NT-Xent with and
without CLOP, 8 learning rates from 0.01 to 10, 4 seeds; free embeddings from an 8-class
mixture, 512 points, d = 16, batch 64, 300 steps) is trained two ways in one process:

* ``loop_s``: one configuration at a time, each with its own ``torch.optim.SGD`` and the same
  loss functions at R = 1 (as a per-configuration training script runs), once;
* the engine (all 64 runs as one stack), ``repeats`` times, each right after the grid's
  essential matmuls run alone (:func:`matmul_floor_s`), so that both sides of the floor
  comparison share the machine's state (shared machines drift by tens of percent).

The last line printed is one JSON object:

* ``loop_s``; ``batched_s_all`` (every engine run) and ``batched_s`` (their median);
* ``speedup`` = loop_s / batched_s and ``max_abs_diff`` between the loop's and the engine's
  final embeddings;
* ``flops``: the similarity matmuls forward and backward (3 batched matmuls of
  ``2 (2B)^2 D`` flops per run and step) and ``matmul_s_all``, the time they take alone;
  ``matmul_flops_per_s`` = flops / median(matmul_s_all), the measured batched-matmul
  throughput at the grid's shapes;
* ``floor_fraction``: the median over repeats of (matmul time alone / engine time), i.e.
  (flops / throughput) / batched time: how close the engine runs to the machine's limit;
* ``matmul_peak_flops_per_s``: the best throughput of short bursts of the similarity matmul,
  and ``floor_fraction_peak`` = (flops / that peak) / min(batched_s_all): the same ratio
  against the machine's quietest moments, a stricter figure on a shared machine.
"""

from __future__ import annotations

import json
import time

import numpy as np
import torch

from .config import RunConfig, expand
from .losses import clop_term, nt_xent
from .engine import resolve_device, train_chunk
from .engine.evaluate import evaluate
from .engine.state import build_state, draw_batch, forward_views
from .plan import plan_chunks


def bench_grid(steps: int = 300) -> list[RunConfig]:
    return expand({
        "loss": "ntxent", "temperature": 0.5, "clop_weight": [0.0, 1.0],
        "lr": [float(x) for x in np.geomspace(0.01, 10.0, 8)], "seed": [0, 1, 2, 3],
        "model": "free", "k": 8, "d": 16, "per_class": 64, "holdout_fraction": 0.0,
        "label_fraction": 0.5, "batch_size": 64, "steps": steps, "log_every": steps,
    })


def loop_one(run: RunConfig, device) -> torch.Tensor:
    """Train one configuration alone with torch.optim.SGD; return its final embeddings."""
    chunk = build_state([run], device)
    params = list(chunk.model.parameters())
    opt = torch.optim.SGD(params, lr=run.lr, momentum=run.momentum, weight_decay=run.weight_decay)
    evaluate(chunk, final=False)
    for _ in range(run.steps):
        idx, labels, v1, v2 = draw_batch(chunk)
        z1, z2 = forward_views(chunk, idx, v1, v2)
        loss = nt_xent(z1, z2, run.temperature)
        if chunk.prototypes is not None:
            loss = loss + run.clop_weight * clop_term(z1, z2, labels, chunk.prototypes, 1.0)
        opt.zero_grad(set_to_none=True)
        loss.sum().backward()
        opt.step()
    evaluate(chunk, final=True)
    return chunk.model.weight.detach()[0]


def _synchronizer(device):
    """A callable that waits for the device's queued work (a no-op on the CPU)."""
    return torch.cuda.synchronize if device.type == "cuda" else (lambda: None)


def matmul_floor_s(runs: int, rows: int, dim: int, steps: int, device) -> float:
    """Wall time of the grid's essential matmuls alone, at its shapes: per step one
    ``(R, 2B, D) @ (R, D, 2B)`` (the similarities) and two ``(R, 2B, 2B) @ (R, 2B, D)``
    (their backward), ``steps`` times over, back to back."""
    u = torch.randn(runs, rows, dim, device=device)
    ut = torch.randn(runs, dim, rows, device=device)
    e = torch.randn(runs, rows, rows, device=device)
    sync = _synchronizer(device)
    torch.bmm(u, ut), torch.bmm(e, u)
    sync()
    t = time.perf_counter()
    for _ in range(steps):
        torch.bmm(u, ut)
        torch.bmm(e, u)
        torch.bmm(e, u)
    sync()
    return time.perf_counter() - t


def matmul_peak_flops_per_s(runs: int, rows: int, dim: int, device, repeats: int = 50) -> float:
    """Best throughput of the similarity matmul ``(R, 2B, D) @ (R, D, 2B)`` over three short
    bursts of ``repeats`` calls: the machine's limit at its quietest moment."""
    a = torch.randn(runs, rows, dim, device=device)
    b = torch.randn(runs, dim, rows, device=device)
    sync = _synchronizer(device)
    best = float("inf")
    for _ in range(3):
        torch.bmm(a, b)
        sync()
        t = time.perf_counter()
        for _ in range(repeats):
            torch.bmm(a, b)
        sync()
        best = min(best, time.perf_counter() - t)
    return 2.0 * runs * rows * rows * dim * repeats / best


def run_bench(device: str = "auto", steps: int = 300, repeats: int = 3, loop: bool = True,
              verbose: bool = True) -> dict:
    if not (isinstance(repeats, int) and repeats >= 1):
        raise ValueError(f"repeats must be an integer >= 1, got {repeats!r}")
    dev = resolve_device(device)
    runs = bench_grid(steps)
    say = print if verbose else (lambda *a, **k: None)
    sync = _synchronizer(dev)
    r0 = runs[0]
    rows = 2 * r0.batch_size
    flops = 3 * 2.0 * len(runs) * rows * rows * r0.d * steps
    out: dict = {"configs": len(runs), "steps": steps}
    looped = None
    if loop:
        t = time.perf_counter()
        looped = torch.stack([loop_one(r, dev) for r in runs])
        sync()
        out["loop_s"] = round(time.perf_counter() - t, 4)
        say(f"loop: {len(runs)} configurations one at a time in {out['loop_s']:.2f} s")
    times, floors, peaks = [], [], []
    for i in range(repeats):
        peaks.append(matmul_peak_flops_per_s(len(runs), rows, r0.d, dev))
        floors.append(matmul_floor_s(len(runs), rows, r0.d, steps, dev))
        t = time.perf_counter()
        # the grid's two chunks (CLOP on and off are two programs), one after the other
        results = [train_chunk(c, dev) for c in plan_chunks(runs, 2**62)]
        sync()
        times.append(time.perf_counter() - t)
        say(f"batched: {len(runs)} configurations as {len(results)} stacks in {times[-1]:.2f} s "
            f"(their matmuls alone: {floors[-1]:.2f} s)")
    final = torch.cat([r.model.weight.detach() for r in results])
    order = [r.run_id for res in results for r in res.state.runs]
    out["batched_s"] = round(float(np.median(times)), 4)
    out["batched_s_all"] = [round(x, 4) for x in times]
    if loop:
        out["speedup"] = round(out["loop_s"] / out["batched_s"], 3)
        position = {r.run_id: i for i, r in enumerate(runs)}
        out["max_abs_diff"] = float((final - looped[[position[i] for i in order]]).abs().max())
    out["flops"] = flops
    out["matmul_s_all"] = [round(x, 4) for x in floors]
    out["matmul_flops_per_s"] = flops / float(np.median(floors))
    out["floor_fraction"] = round(float(np.median([f / t for f, t in zip(floors, times)])), 4)
    out["matmul_peak_flops_per_s"] = max(peaks)
    out["floor_fraction_peak"] = round(flops / max(peaks) / min(times), 4)
    out["device"] = str(dev) if dev.type == "cpu" else torch.cuda.get_device_name(dev)
    out["torch_threads"] = torch.get_num_threads()
    return out


def main_bench(device: str, steps: int, repeats: int = 3, loop: bool = True) -> int:
    result = run_bench(device, steps, repeats, loop)
    print(json.dumps(result))
    return 0

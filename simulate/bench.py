"""``python -m simulate bench``: the batched engine against a per-configuration loop.

One fixed grid of 64 configurations shaped like the default figure sweeps (NT-Xent with and
without CLOP, 8 learning rates from 0.01 to 10, 4 seeds; free embeddings from an 8-class
mixture, 512 points, d = 16, batch 64, 300 steps) is trained two ways in one process, for
each optimizer asked for (``optimizers``; ``sgd`` by default: plain SGD, which moves only
the batch's rows; ``sgd-momentum``: SGD with momentum 0.9; ``lars`` with momentum 0.9 and
weight decay 1e-6, the paper's recipe; ``adam`` and ``adamw`` with their torch defaults
(AdamW's weight decay 0.01); the last four move every row each step: on the CPU
``sgd-momentum`` and ``lars`` keep the moves of the rows outside the batch as one linear map
per run and write only the batch's rows (:class:`simulate.engine.linear_momentum.LinearMomentum`),
``adam`` and ``adamw`` write every row, see :class:`simulate.engine.table.TableOptimizer`):

* ``loop_s``: one configuration at a time, each with its own ``torch.optim`` optimizer
  (``SGD``, ``Adam``, ``AdamW``, or :class:`LoopLARS` for ``lars``) and the same loss
  functions at R = 1 (as a per-configuration training script runs), once;
* the engine (all 64 runs as one stack), ``repeats`` times, each right after the grid's
  essential matmuls run alone (:func:`matmul_floor_s`), so that both sides of the floor
  comparison share the machine's state (shared machines drift by tens of percent).

The last line printed is one JSON object; its top-level numbers are those of the first
optimizer asked for, and ``optimizers`` holds, per optimizer, ``batched_s``,
``batched_s_all``, ``loop_s``, ``speedup`` and ``max_abs_diff`` (over the runs finite on both
sides, ``runs_compared``), and the same in process CPU time (``batched_cpu_s``,
``loop_cpu_s``, ``speedup_cpu``: steadier than wall time on a shared machine); with ``sgd``
among them, ``time_vs_sgd`` and ``cpu_time_vs_sgd`` give each optimizer's time over sgd's.
The other fields:

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

from .config import RunConfig, SpecError, expand
from .losses import clop_term, nt_xent
from .engine import resolve_device, train_chunk
from .engine.evaluate import evaluate
from .engine.state import build_state, draw_batch, forward_views
from .cli import json_value
from .plan import plan_chunks


#: each optimizer's settings on the bench grid (the rest are the RunConfig defaults)
OPTIMIZER_SETTINGS = {
    "sgd": {},
    "sgd-momentum": {"momentum": 0.9},
    "lars": {"momentum": 0.9, "weight_decay": 1e-6},
    "adam": {},
    "adamw": {"weight_decay": 0.01},
}


def bench_grid(steps: int = 300, optimizer: str = "sgd") -> list[RunConfig]:
    if optimizer not in OPTIMIZER_SETTINGS:
        raise SpecError(f"--optimizer must be one of {', '.join(OPTIMIZER_SETTINGS)}, got {optimizer!r}")
    return expand({
        "loss": "ntxent", "temperature": 0.5, "clop_weight": [0.0, 1.0],
        "lr": [float(x) for x in np.geomspace(0.01, 10.0, 8)], "seed": [0, 1, 2, 3],
        "model": "free", "k": 8, "d": 16, "per_class": 64, "holdout_fraction": 0.0,
        "label_fraction": 0.5, "batch_size": 64, "steps": steps, "log_every": steps,
        "optimizer": optimizer.split("-")[0], **OPTIMIZER_SETTINGS[optimizer],
    })


class LoopLARS(torch.optim.Optimizer):
    """LARS for one configuration, as the SimCLR/BYOL reimplementations write it (lightly's
    ``LARS``): per parameter tensor with ``|p| > 0`` and ``|g| > 0`` (biases, 1-D tensors,
    excluded), ``d = eta |p| / (|g| + wd |p| + eps) (g + wd p)``; then SGD momentum (Nesterov
    optional), ``p -= lr b``. The per-configuration counterpart of the engine's ``lars`` at
    its default ``lars_biases`` (sgd; :func:`loop_optimizer` refuses the other)."""

    def __init__(self, params, lr, momentum=0.0, weight_decay=0.0, trust=1e-3, eps=1e-8, nesterov=False):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay,
                                      trust=trust, eps=eps, nesterov=nesterov))

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            wd, mu = group["weight_decay"], group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                d = p.grad
                if p.dim() > 1:
                    pn, gn = torch.norm(p), torch.norm(d)
                    if pn != 0 and gn != 0:
                        d = d.add(p, alpha=wd) * (group["trust"] * pn / (gn + wd * pn + group["eps"]))
                if mu != 0:
                    st = self.state[p]
                    if "buf" not in st:
                        st["buf"] = d.clone()
                    else:
                        st["buf"].mul_(mu).add_(d)
                    d = d.add(st["buf"], alpha=mu) if group["nesterov"] else st["buf"]
                p.add_(d, alpha=-group["lr"])


def loop_optimizer(run: RunConfig, params):
    """The per-configuration optimizer of ``run``."""
    if run.optimizer == "sgd":
        return torch.optim.SGD(params, lr=run.lr, momentum=run.momentum, weight_decay=run.weight_decay,
                               nesterov=run.nesterov)
    if run.optimizer == "lars":
        if run.lars_biases != "sgd":
            raise ValueError(f"lars_biases must be 'sgd' for the loop baseline, got {run.lars_biases!r}")
        return LoopLARS(params, run.lr, run.momentum, run.weight_decay, run.lars_trust, run.eps, run.nesterov)
    cls = torch.optim.Adam if run.optimizer == "adam" else torch.optim.AdamW
    return cls(params, lr=run.lr, betas=(run.beta1, run.beta2), eps=run.eps, weight_decay=run.weight_decay)


def loop_one(run: RunConfig, device) -> torch.Tensor:
    """Train one configuration alone with its torch.optim optimizer; return its final
    embeddings."""
    chunk = build_state([run], device)
    params = list(chunk.model.parameters())
    opt = loop_optimizer(run, params)
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


def _time_engine(runs, dev, steps, repeats, say, name):
    """Engine times over ``repeats`` runs of the grid (each after its matmul floor and peak
    measurements), the floors and peaks, and the last results."""
    sync = _synchronizer(dev)
    r0 = runs[0]
    rows = 2 * r0.batch_size
    times, cpu, floors, peaks = [], [], [], []
    for _ in range(repeats):
        peaks.append(matmul_peak_flops_per_s(len(runs), rows, r0.d, dev))
        floors.append(matmul_floor_s(len(runs), rows, r0.d, steps, dev))
        t, c = time.perf_counter(), time.process_time()
        # the grid's two chunks (CLOP on and off are two programs), one after the other
        results = [train_chunk(c, dev) for c in plan_chunks(runs, 2**62)]
        sync()
        times.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
        say(f"batched ({name}): {len(runs)} configurations as {len(results)} stack(s) in "
            f"{times[-1]:.2f} s (their matmuls alone: {floors[-1]:.2f} s)")
    return times, cpu, floors, peaks, results


def _bench_optimizer(runs, name, dev, steps, repeats, loop, say, sync):
    """One optimizer's record (the loop's and the engine's times, the speedups and the
    difference of their final embeddings) and the engine's matmul floors, peaks and times."""
    rec: dict = {}
    looped = None
    if loop:
        t, c = time.perf_counter(), time.process_time()
        looped = torch.stack([loop_one(r, dev) for r in runs])
        sync()
        rec["loop_s"] = round(time.perf_counter() - t, 4)
        rec["loop_cpu_s"] = round(time.process_time() - c, 4)
        say(f"loop ({name}): {len(runs)} configurations one at a time in {rec['loop_s']:.2f} s")
    times, cpu, floors, peaks, results = _time_engine(runs, dev, steps, repeats, say, name)
    rec["batched_s"] = round(float(np.median(times)), 4)
    rec["batched_s_all"] = [round(x, 4) for x in times]
    rec["batched_cpu_s"] = round(float(np.median(cpu)), 4)
    if loop:
        final = torch.cat([r.model.weight.detach() for r in results])
        order = [r.run_id for res in results for r in res.state.runs]
        position = {r.run_id: i for i, r in enumerate(runs)}
        rec["speedup"] = round(rec["loop_s"] / rec["batched_s"], 3)
        rec["speedup_cpu"] = round(rec["loop_cpu_s"] / rec["batched_cpu_s"], 3)
        ref = looped[[position[i] for i in order]]
        both = torch.isfinite(final).all(-1).all(-1) & torch.isfinite(ref).all(-1).all(-1)
        rec["max_abs_diff"] = float((final[both] - ref[both]).abs().max())
        rec["runs_compared"] = int(both.sum())  # runs that stayed finite on both sides
    return rec, floors, peaks, times


def run_bench(device: str = "auto", steps: int = 300, repeats: int = 3, loop: bool = True,
              verbose: bool = True, optimizers=("sgd",)) -> dict:
    if not (isinstance(repeats, int) and repeats >= 1):
        raise ValueError(f"repeats must be an integer >= 1, got {repeats!r}")
    optimizers = list(dict.fromkeys(optimizers))
    if not optimizers:
        raise SpecError(f"--optimizer must name at least one of {', '.join(OPTIMIZER_SETTINGS)}")
    grids = {name: bench_grid(steps, name) for name in optimizers}  # validates the names
    dev = resolve_device(device)
    say = print if verbose else (lambda *a, **k: None)
    sync = _synchronizer(dev)
    first = grids[optimizers[0]]
    r0 = first[0]
    rows = 2 * r0.batch_size
    flops = 3 * 2.0 * len(first) * rows * rows * r0.d * steps
    out: dict = {"configs": len(first), "steps": steps, "optimizer": optimizers[0]}
    per: dict = {}
    all_floors, all_peaks, all_times = [], [], []
    for name in optimizers:
        per[name], floors, peaks, times = _bench_optimizer(grids[name], name, dev, steps, repeats,
                                                           loop, say, sync)
        if name == optimizers[0]:
            all_floors, all_peaks, all_times = floors, peaks, times
    out.update({k: v for k, v in per[optimizers[0]].items()
                if k in ("loop_s", "batched_s", "batched_s_all", "speedup", "max_abs_diff")})
    out["optimizers"] = per
    if "sgd" in per:
        out["time_vs_sgd"] = {n: round(per[n]["batched_s"] / per["sgd"]["batched_s"], 3) for n in per}
        out["cpu_time_vs_sgd"] = {n: round(per[n]["batched_cpu_s"] / per["sgd"]["batched_cpu_s"], 3)
                                  for n in per}
    out["flops"] = flops
    out["matmul_s_all"] = [round(x, 4) for x in all_floors]
    out["matmul_flops_per_s"] = flops / float(np.median(all_floors))
    out["floor_fraction"] = round(float(np.median([f / t for f, t in zip(all_floors, all_times)])), 4)
    out["matmul_peak_flops_per_s"] = max(all_peaks)
    out["floor_fraction_peak"] = round(flops / max(all_peaks) / min(all_times), 4)
    out["device"] = str(dev) if dev.type == "cpu" else torch.cuda.get_device_name(dev)
    out["torch_threads"] = torch.get_num_threads()
    return out


def parse_optimizers(text: str) -> list[str]:
    """``sgd,lars,adam`` -> the names (each a key of :data:`OPTIMIZER_SETTINGS`)."""
    names = [t.strip().lower() for t in str(text).split(",") if t.strip()]
    for n in names or [""]:
        if n not in OPTIMIZER_SETTINGS:
            raise SpecError(f"--optimizer must be one or more of {', '.join(OPTIMIZER_SETTINGS)} "
                            f"(comma-separated), got {text!r}")
    return names


def main_bench(device: str, steps: int, repeats: int = 3, loop: bool = True, optimizers=("sgd",)) -> int:
    result = run_bench(device, steps, repeats, loop, optimizers=optimizers)
    print(json.dumps(json_value(result), allow_nan=False))
    return 0

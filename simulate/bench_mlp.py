"""``python -m simulate bench --model mlp``: the engine on MLP encoders against an idiomatic
per-configuration loop and a ``torch.func`` vmap ensemble, in one process.

The grid is the quick preset's lr sweep shape for NT-Xent (:func:`mlp_grid`): CLOP weight 0
and 1, 8 learning rates from 1e-3 to 1e4 (log-spaced), 2 seeds = 32 configurations; MLP
hidden 64, depth 3, out 16 (``--projector 64,16`` adds a projector head); mixture d = 16,
k = 4, 128 points per class, batch 64, 300 steps; each optimizer of ``--optimizer`` with the
settings of :data:`simulate.bench.OPTIMIZER_SETTINGS` (LARS: momentum 0.9, weight decay 1e-6).

Three ways, alternating within each of ``repeats`` rounds (the JSON reports medians), all
reading the engine's own data, initial weights and minibatches
(:mod:`simulate.mlp_references`):

* ``engine``: :func:`simulate.engine.train_chunk` on the grid's chunks, as ``python -m
  simulate bench`` times it for free embeddings (evaluation at the first and last step
  included);
* ``loop``: one configuration at a time, one ``nn.Sequential`` per run and its own
  ``torch.optim`` optimizer (:func:`simulate.bench.loop_optimizer`); no evaluation;
* ``vmap``: ``torch.func.stack_module_state`` + ``vmap(functional_call)``, gradients by
  autograd, ``p -= lr_r g``: plain SGD only (null for the other optimizers).

JSON (the first optimizer's record at the top level; every optimizer's under
``optimizers``): ``engine_s``, ``loop_s``, ``vmap_s`` (medians) and ``*_all``; ``speedup`` =
loop_s / engine_s; ``vmap_speedup`` = vmap_s / engine_s; ``floor_fraction`` = median over
rounds of (the grid's batched matmuls of forward and backward alone,
:func:`simulate.mlp_references.mlp_floor_s`) / engine time.

Agreement, over the runs at lr <= :data:`COMPARE_LR_MAX` (``runs_compared``) that stayed
finite on both sides: ``max_abs_diff`` = max |engine - loop| over their final parameters;
``vmap_max_abs_diff`` likewise. Float32 rounding is amplified along some trajectories (a
ReLU unit near zero flips one way or the other), so the bench also trains those runs with the
engine in float64 and reports each float32 side's distance to it, ``f64_err_engine`` and
``f64_err_loop`` (the largest over the runs; ``*_median`` the median), and
``max_abs_diff_conditioned``: engine against loop over the runs whose
float32 loop stays within :data:`CONDITIONED` of float64 (``runs_conditioned``), where float32
determines the trajectory. Runs at larger rates: ``max_abs_diff_all_finite`` and
``max_rel_diff_all_finite`` (per run max |engine - loop| / max |engine|, the largest).
"""

from __future__ import annotations

import json
import math
import time

import numpy as np
import torch

from .bench import OPTIMIZER_SETTINGS
from .cli import json_value
from .config import RunConfig, SpecError, expand
from .engine import resolve_device, train_chunk
from .mlp_references import loop_one, mlp_floor_s, stacked_flat, vmap_chunk
from .plan import plan_chunks

#: learning rates at or below this are compared exactly (engine vs loop, engine vs vmap)
COMPARE_LR_MAX = 1.0
#: a run whose float32 loop ends within this of its float64 engine run is well conditioned
CONDITIONED = 1e-4


def mlp_grid(steps: int = 300, lrs=None, seeds=(0, 1), clop_weights=(0.0, 1.0), optimizer: str = "sgd",
             projector: str = "") -> list[RunConfig]:
    """The quick preset's lr sweep shape (NT-Xent only) under ``optimizer`` (a name of
    :data:`simulate.bench.OPTIMIZER_SETTINGS`), with the projector ``projector`` (widths
    such as ``"64,16"``; ``""``: none)."""
    if optimizer not in OPTIMIZER_SETTINGS:
        raise SpecError(f"--optimizer must be one of {', '.join(OPTIMIZER_SETTINGS)}, got {optimizer!r}")
    lrs = [float(x) for x in np.geomspace(1e-3, 1e4, 8)] if lrs is None else [float(x) for x in lrs]
    return expand({
        "loss": "ntxent", "temperature": 0.5, "clop_weight": [float(c) for c in clop_weights],
        "lr": lrs, "seed": list(seeds), "model": "mlp", "hidden": 64, "depth": 3, "out_dim": 16,
        "projector_dims": projector,
        "k": 4, "d": 16, "per_class": 128, "mean_scale": 2.0, "sigma": 1.0, "aug_sigma": 0.5,
        "label_fraction": 0.5, "batch_size": 64, "steps": steps, "log_every": steps,
        "optimizer": optimizer.split("-")[0], **OPTIMIZER_SETTINGS[optimizer],
    })


def _timed(fn, sync):
    """``fn()`` and its wall time in seconds (after the device has finished)."""
    t = time.perf_counter()
    out = fn()
    sync()
    return out, time.perf_counter() - t


def _one_round(runs, chunks, dev, sync, times: dict, vmap: bool):
    """Time the engine, the loop, vmap (plain SGD) and the matmul floor once (appended to
    ``times``) and return the runs in the engine's order and each side's final parameters
    (R, P) in that order (None for vmap when it is not run)."""
    r0 = runs[0]
    widths = [r0.d] + [r0.hidden] * (r0.depth - 1) + [r0.out_dim] + list(r0.projector_widths)
    times["floor"].append(mlp_floor_s(len(runs), r0.batch_size, widths, widths[-1], r0.steps, dev))
    results, t = _timed(lambda: [train_chunk(c, dev) for c in chunks], sync)
    times["engine"].append(t)
    looped, t = _timed(lambda: [loop_one(r, dev) for r in runs], sync)
    times["loop"].append(t)
    vm = None
    if vmap:
        vm, t = _timed(lambda: torch.cat([vmap_chunk(c, dev) for c in chunks]), sync)
        times["vmap"].append(t)
    ordered = [r for res in results for r in res.state.runs]
    position = {r.run_id: i for i, r in enumerate(runs)}
    engine_p = torch.cat([stacked_flat(res.state.model) for res in results])
    loop_p = torch.stack(looped)[[position[r.run_id] for r in ordered]]
    return ordered, engine_p, loop_p, vm


def _float64_reference(ordered, dev) -> torch.Tensor:
    """(R, P) the engine's final parameters in float64 for the runs at lr <= COMPARE_LR_MAX
    (NaN rows for the others), in the order of ``ordered``."""
    small = [r for r in ordered if r.lr <= COMPARE_LR_MAX]
    out = {}
    for chunk in plan_chunks(small, 2**62):
        res = train_chunk(chunk, dev, dtype=torch.float64)
        out.update({r.run_id: p for r, p in zip(res.state.runs, stacked_flat(res.state.model))})
    width = next(iter(out.values())).shape[0] if out else 0
    nan = torch.full((width,), math.nan, dtype=torch.float64, device=dev)
    return torch.stack([out.get(r.run_id, nan) for r in ordered]) if ordered else torch.empty(0)


def _differences(ordered, engine_p, loop_p, vmap_p, f64) -> dict:
    """Engine against the loop, vmap and float64 (see the module docstring)."""
    small = torch.tensor([r.lr <= COMPARE_LR_MAX for r in ordered], device=engine_p.device)
    fin = lambda x: torch.isfinite(x).all(-1)  # noqa: E731

    def diff(a, b, mask):
        m = mask & fin(a) & fin(b)
        return (float((a[m].double() - b[m].double()).abs().max()) if m.any() else math.nan), int(m.sum())

    def rel(a, b):  # per run |a - b| / max |a|, over the runs finite on both sides
        m = fin(a) & fin(b)
        r = (a[m] - b[m]).abs().amax(-1) / a[m].abs().amax(-1).clamp_min(1e-30)
        return float(r.max()) if m.any() else math.nan

    mad, compared = diff(engine_p, loop_p, small)
    mad_all, compared_all = diff(engine_p, loop_p, torch.ones_like(small))
    loop_err = (loop_p.double() - f64).abs().amax(-1)
    engine_err = (engine_p.double() - f64).abs().amax(-1)
    conditioned = small & (loop_err <= CONDITIONED)
    mad_c, n_c = diff(engine_p, loop_p, conditioned)
    both = small & torch.isfinite(loop_err) & torch.isfinite(engine_err)
    median = lambda x: float(x[both].median()) if both.any() else math.nan  # noqa: E731
    return {"max_abs_diff": mad, "runs_compared": compared, "compare_lr_max": COMPARE_LR_MAX,
            "max_abs_diff_conditioned": mad_c, "runs_conditioned": n_c,
            "f64_err_engine": diff(engine_p, f64, small)[0], "f64_err_loop": diff(loop_p, f64, small)[0],
            "f64_err_engine_median": median(engine_err), "f64_err_loop_median": median(loop_err),
            "max_abs_diff_all_finite": mad_all, "runs_finite_both": compared_all,
            "max_rel_diff_all_finite": rel(engine_p, loop_p),
            "vmap_max_abs_diff": math.nan if vmap_p is None else diff(engine_p, vmap_p, small)[0]}


def _median(values):
    return float(np.median(values)) if values else math.nan


def run_mlp_bench(device: str = "auto", steps: int = 300, repeats: int = 3, verbose: bool = True,
                  runs: list[RunConfig] | None = None, optimizer: str = "sgd", projector: str = "") -> dict:
    """One optimizer's record (see the module docstring); ``runs`` replaces the grid."""
    if not (isinstance(repeats, int) and repeats >= 1):
        raise ValueError(f"repeats must be an integer >= 1, got {repeats!r}")
    runs = mlp_grid(steps, optimizer=optimizer, projector=projector) if runs is None else runs
    dev = resolve_device(device)
    say = print if verbose else (lambda *a, **k: None)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    chunks = plan_chunks(runs, 2**62)
    vmap = runs[0].optimizer == "sgd" and all(r.momentum == 0 and r.weight_decay == 0 for r in runs)
    times: dict = {"engine": [], "loop": [], "vmap": [], "floor": []}
    for rep in range(repeats):
        params = _one_round(runs, chunks, dev, sync, times, vmap)
        say(f"{optimizer} round {rep + 1}: engine {times['engine'][-1]:.2f} s, loop {times['loop'][-1]:.2f} s, "
            + (f"vmap {times['vmap'][-1]:.2f} s, " if vmap else "")
            + f"matmuls alone {times['floor'][-1]:.2f} s")
    med = {k: _median(v) for k, v in times.items()}
    out = {
        "model": "mlp", "configs": len(runs), "steps": runs[0].steps, "optimizer": optimizer,
        "projector": runs[0].projector_dims, "chunks": len(chunks),
        "engine_s": round(med["engine"], 4), "loop_s": round(med["loop"], 4),
        "vmap_s": round(med["vmap"], 4) if vmap else None, "matmul_s": round(med["floor"], 4),
        **{f"{k}_s_all": [round(x, 4) for x in times[k if k != "matmul" else "floor"]]
           for k in ("engine", "loop", "vmap", "matmul")},
        "speedup": round(med["loop"] / med["engine"], 3),
        "vmap_speedup": round(med["vmap"] / med["engine"], 3) if vmap else None,
        "floor_fraction": round(_median([f / e for f, e in zip(times["floor"], times["engine"])]), 4),
        **_differences(*params, _float64_reference(params[0], dev)),
        "device": str(dev) if dev.type == "cpu" else torch.cuda.get_device_name(dev),
        "torch_threads": torch.get_num_threads(),
    }
    say(f"{'method':<8} {'median s':>10} {'vs engine':>10}")
    for name in ("engine", "loop", "vmap", "floor"):
        if times[name]:
            say(f"{'matmuls' if name == 'floor' else name:<8} {med[name]:>10.3f} {med[name] / med['engine']:>10.2f}x")
    return out


def _check_fits(runs: list[RunConfig], projector: str) -> None:
    """Refuse a grid whose runs (:func:`simulate.plan.run_bytes`, the loop's and vmap's copies
    of the parameters included) would not fit in this machine's memory."""
    import os

    from .plan import format_bytes, run_bytes

    need = 3 * sum(run_bytes(r) for r in runs)
    try:
        have = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, OSError, ValueError):
        return
    if need > have:
        raise SpecError(f"--projector must be layer widths whose runs fit in memory: {projector!r} "
                        f"needs about {format_bytes(need)} for the bench's {len(runs)} runs, more "
                        f"than this machine's {format_bytes(have)} (the default shape uses 64,16)")


def main_bench_mlp(device, steps: int, repeats: int = 3, optimizers=("sgd",), projector: str = "") -> int:
    names = list(dict.fromkeys(optimizers))
    for name in names:  # every name is checked before anything runs
        try:
            grid = mlp_grid(steps, optimizer=name, projector=projector)
        except SpecError as exc:
            raise SpecError(str(exc).replace("projector_dims", "--projector", 1)) from None
    _check_fits(grid, projector)
    per = {name: run_mlp_bench(device, steps, repeats, optimizer=name, projector=projector) for name in names}
    print(json.dumps(json_value({**per[names[0]], "optimizers": per}), allow_nan=False))
    return 0

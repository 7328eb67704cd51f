"""The onset grids of MLP encoders (``python -m figures onset --grid mlp|paper``): predicted
(the recovery law, LARS's weight-decay edge; see
:func:`simulate.stability.encoder_onset.predict_encoder_onset`) against
measured onsets (:func:`simulate.stability.measure.measure_levels`, by training), per
collapse level and per rank (the embeddings the loss sees; with a projector also the
representation before it)."""

from __future__ import annotations

import math
import time
from typing import Callable

import numpy as np

from ..config import RunConfig
from .encoder_onset import encoder_edges, encoder_predictor
from .lars_decay import decay_edge_applies, lars_decay_edge
from .lars_overflow import lars_overflow_onset
from .optimizer_edges import momentum_edge
from .measure import dip_note, measure_levels

#: the quick preset's MLP lr-sweep shape (figure lr_regimes): every ``mlp`` row changes one
#: thing of it
ENCODER_BASE = dict(model="mlp", hidden=64, depth=3, out_dim=16, k=4, d=16, per_class=128,
                    mean_scale=2.0, sigma=1.0, aug_sigma=0.5, label_fraction=0.5, batch_size=64,
                    steps=300, log_every=300, loss="ntxent", temperature=0.5, optimizer="sgd")
#: the paper's recipe as the quick preset's ``paper_mixture`` / ``paper_digits`` sweeps train it
#: (figure paper_lr_regimes): LARS with momentum, warmup and cosine decay, a projector
PAPER_RECIPE = dict(optimizer="lars", momentum=0.9, weight_decay=1e-6, lars_trust=1e-3,
                    warmup_steps=30, schedule="cosine", projector_dims="64,16")
LARS = dict(optimizer="lars", momentum=0.9, weight_decay=1e-6, lars_trust=1e-3)
DIGITS = dict(data="digits", d=64, k=10)
#: grid name -> (rows: label -> changes to ENCODER_BASE, seeds, scan points, bisection rounds,
#: scan range (lo, hi))
ENCODER_GRIDS = {
    "mlp": ({
        "base": {}, "width=32": {"hidden": 32}, "width=128": {"hidden": 128},
        "depth=2": {"depth": 2}, "depth=4": {"depth": 4},
        "projector 64,16": {"projector_dims": "64,16"},
        "tau=0.2": {"temperature": 0.2}, "tau=1": {"temperature": 1.0},
        "B=32": {"batch_size": 32}, "B=128": {"batch_size": 128},
        "momentum=0.9": {"momentum": 0.9}, "lars": LARS,
        "lars, projector": {**LARS, "projector_dims": "64,16"},
        "clop=1": {"clop_weight": 1.0}, "digits": DIGITS,
    }, (0, 1), 9, 3, (1e-3, 1e5)),
    # values the mlp grid does not use, written once the predictor was fixed and run once
    "mlp-heldout": ({
        "width=48": {"hidden": 48}, "width=96, depth=3": {"hidden": 96},
        "tau=0.35": {"temperature": 0.35}, "B=48": {"batch_size": 48},
        "momentum=0.5": {"momentum": 0.5}, "nesterov 0.9": {"momentum": 0.9, "nesterov": True},
        "projector 32,8": {"projector_dims": "32,8"}, "clop=0.3": {"clop_weight": 0.3},
        "digits, tau=0.2": {**DIGITS, "temperature": 0.2},
    }, (0, 1), 9, 3, (1e-3, 1e5)),
    # values no other grid uses, written once the probes were fixed at sqrt(2) apart near the
    # kick with each s read from the highest probe reaching it; run once with the law's onset
    # at its first crossing, then again once it took the measurement's definition (docs/onset.md)
    "mlp-heldout-2": ({
        "width=80": {"hidden": 80}, "depth=5": {"depth": 5}, "tau=0.8": {"temperature": 0.8},
        "B=96": {"batch_size": 96}, "momentum=0.7": {"momentum": 0.7},
        "nesterov 0.8": {"momentum": 0.8, "nesterov": True}, "projector 48,12": {"projector_dims": "48,12"},
        "clop=3, labels 25%": {"clop_weight": 3.0, "label_fraction": 0.25},
        "separation 3": {"mean_scale": 3.0}, "digits, tau=0.8": {**DIGITS, "temperature": 0.8},
    }, (0, 1), 9, 3, (1e-3, 1e5)),
    # the tests' grid: seconds on one core
    "encoder-tiny": ({"base": {}, "projector": {"projector_dims": "6,3"}, "lars": LARS,
                      "lars, wd=0": {**LARS, "weight_decay": 0.0}, "adam": {"optimizer": "adam"}},
             (0,), 4, 1, (1e-2, 1e4)),
    "paper": ({
        "mixture": PAPER_RECIPE, "mixture, clop=1": {**PAPER_RECIPE, "clop_weight": 1.0},
        "digits": {**PAPER_RECIPE, **DIGITS}, "digits, clop=1": {**PAPER_RECIPE, **DIGITS, "clop_weight": 1.0},
    }, (0, 1), 9, 3, (1e-3, 1e5)),
}
#: why LARS's dimensional level is not predicted (measured: docs/onset.md; the catapult
#: estimate, :mod:`simulate.stability.encoder_onset`, was refuted there)
LARS_DIMENSIONAL_WHY = (
    "not derived under LARS with weight decay: 300-step runs lose rank through the biases' plain "
    "SGD steps (the mixture's projector output bias is flung out of the sharp minimum where it "
    "centres the projections; lars_biases=lars removes it), 3000-step runs through the encoder "
    "weights' minibatch noise, which kills hidden ReLUs (docs/onset.md, LARS's dimensional level)")
#: the levels each encoder row reports
ENCODER_LEVELS = ("complete", "dimensional")


def encoder_grid(name: str, steps: int | None = None) -> list[tuple[str, RunConfig]]:
    """``(label, run)`` rows of the encoder grid ``name`` (``mlp``, ``mlp-heldout``,
    ``mlp-heldout-2``, ``paper`` or ``encoder-tiny``)."""
    if not isinstance(name, str) or name not in ENCODER_GRIDS:
        raise ValueError(f"grid must be one of {', '.join(ENCODER_GRIDS)}, got {name!r}")
    base = dict(ENCODER_BASE)
    if name == "encoder-tiny":
        base.update(hidden=8, depth=2, out_dim=4, k=2, d=4, per_class=16, batch_size=8, steps=30,
                    log_every=30)
    if steps is not None:
        base.update(steps=steps, log_every=steps)
    return [(label, RunConfig(**{**base, **change})) for label, change in ENCODER_GRIDS[name][0].items()]


def _predictions(grid, seeds, device: str) -> list[dict]:
    """Per row: the curvature-derived rates (the median over the seeds) and their time (reported
    beside the prediction, not part of it)."""
    out = []
    for _, run in grid:
        edges = [encoder_edges(_seeded(run, s), device) for s in seeds]
        med = lambda k: float(np.median([e[k] for e in edges]))  # noqa: E731
        out.append({"lambda_0": med("lambda_0"), "eos_edge": med("eos_edge"),
                    "catapult_max": med("catapult_max"), "curvature": edges[0]["curvature"],
                    "curvature_s": sum(e["seconds"] for e in edges)})
    return out


def _seeded(run: RunConfig, seed: int) -> RunConfig:
    from dataclasses import replace

    return replace(run, seed=seed)


def encoder_onset_table(name: str, device: str = "cpu", steps: int | None = None,
                        progress: Callable[[str], None] | None = None) -> list[dict]:
    """Predicted against measured onset per row, level and rank of the encoder grid ``name``.

    Plain SGD and heavy ball at a constant rate are predicted by the recovery law
    (:mod:`simulate.stability.recovery`; its dimensional threshold reads the measured reference
    rank, which defines the level), LARS's complete level of the embeddings the loss sees by
    its weight-decay edge (:mod:`simulate.stability.lars_decay`); the rest is not predicted,
    each row's note says why (LARS's dimensional level: :data:`LARS_DIMENSIONAL_WHY`)."""
    from ..engine import resolve_device

    grid = encoder_grid(name, steps)
    device = str(resolve_device(device))
    _, seeds, points, rounds, (lo, hi) = ENCODER_GRIDS[name]
    preds = _predictions(grid, seeds, device)
    metrics = [(m, idx) for m, idx in
               [("effective_rank", list(range(len(grid)))),
                ("repr_effective_rank", [i for i, (_, r) in enumerate(grid) if r.projector_widths])] if idx]
    measured, seconds = _measure(grid, metrics, seeds, (lo, hi, points, rounds), device, progress)
    law = _law(grid, metrics, seeds, measured, device)
    if progress:
        progress("predicted")
    return [_row(grid[i], level, metric, measured[(i, level, metric)], preds[i], law[i], seconds[metric],
                 seeds, (lo, hi))
            for metric, idx in metrics for level in ENCODER_LEVELS for i in idx]


def _measure(grid, metrics, seeds, scan, device, progress):
    """``(measured, seconds)``: per ``(row, level, metric)`` the measured onset's dict; per
    metric the measuring time per row."""
    lo, hi, points, rounds = scan
    measured, seconds = {}, {}
    for metric, idx in metrics:
        t0 = time.perf_counter()
        per_level = measure_levels([grid[i][1] for i in idx], ENCODER_LEVELS, seeds, lo, hi, points,
                                   rounds, device, metric)
        seconds[metric] = (time.perf_counter() - t0) / len(idx)
        for level, ms in zip(ENCODER_LEVELS, per_level):
            for i, m in zip(idx, ms):
                measured[(i, level, metric)] = m
        if progress:
            progress(f"measured {metric}")
    return measured, seconds


def _law(grid, metrics, seeds, measured, device) -> list[list[dict]]:
    """Per row, per seed: :func:`simulate.stability.recovery.recovery_onsets` of the row,
    thresholds from the measured reference ranks."""
    from .recovery import recovery_onsets

    seeded = [(i, j, _seeded(run, s)) for i, (_, run) in enumerate(grid) for j, s in enumerate(seeds)]
    refs = [{metric: measured[(i, "dimensional", metric)]["reference_rank"][j]
             for metric, idx in metrics if i in idx} for i, j, _ in seeded]
    law = recovery_onsets([r for *_, r in seeded], refs, ENCODER_LEVELS, tuple(m for m, _ in metrics), device)
    out: list[list[dict]] = [[] for _ in grid]
    for (i, _, _), o in zip(seeded, law):
        out[i].append(o)
    return out


def _row(labelled, level: str, metric: str, m: dict, p: dict, mine: list[dict], seconds: float,
         seeds, scan: tuple[float, float]) -> dict:
    """One table row: what predicts it (:func:`encoder_predictor`) against ``m``, measured
    over the rates ``scan`` (a prediction above its top agrees with a measured none)."""
    from .grids import onset_ratio

    label, run = labelled
    per_seed = [o["onsets"][(level, metric)] for o in mine]
    how = encoder_predictor(run, level, metric)
    pred = math.nan
    t0 = time.perf_counter()
    if how == "law":
        pred = _median(per_seed)
    elif how == "decay":
        pred = lars_decay_edge(run)
        per_seed = [pred] * len(mine)
    elif how == "overflow":
        per_seed = [lars_overflow_onset(_seeded(run, s)) for s in seeds]
        pred = _median(per_seed)
    # the law's probes ran beforehand, for every row at once; the closed forms run here
    predict_s = sum(o["seconds"] for o in mine) if how == "law" else time.perf_counter() - t0
    # measured none means none up to the scan's top, which a prediction above it also says
    above = math.isfinite(pred) and pred > scan[1] and m["onset"] == math.inf
    ratio = 1.0 if above else onset_ratio(pred, m["onset"]) if not math.isnan(pred) else math.nan
    return {
        "config": label, "level": level,
        "rank": "projection" if run.projector_widths and metric == "effective_rank" else
                "representation" if metric == "repr_effective_rank" else "output",
        "optimizer": run.optimizer, "momentum": run.momentum, "hidden": run.hidden,
        "depth": run.depth, "projector_dims": run.projector_dims,
        "temperature": run.temperature, "batch_size": run.batch_size, "data": run.data,
        "clop_weight": run.clop_weight, "steps": run.steps,
        "predicted": pred, "predicted_by": how, "predicted_per_seed": per_seed,
        "measured": m["onset"], "per_seed": m["per_seed"],
        "spread": m["spread"], "ratio": ratio,
        "within_2x": bool(0.5 <= ratio <= 2.0), "reference_rank": m["reference_rank"],
        **{k: p[k] for k in ("lambda_0", "eos_edge", "catapult_max", "curvature")},
        "kick_rate": _median([o["kick"] for o in mine]),
        "probe_rates": [o["probe_rates"] for o in mine],
        "predict_s": predict_s, "measure_s": seconds, "curvature_s": p["curvature_s"],
        "dips": m["dips"],
        "note": _encoder_note(level, pred, m["onset"], p, run, scan, how, mine) + dip_note(m, seeds),
    }


def _median(values) -> float:
    """The median of ``values``; NaN when any is NaN (a seed not predicted)."""
    v = np.asarray(values, dtype=float)
    return math.nan if np.isnan(v).any() else float(np.median(v))


def _encoder_note(level: str, pred: float, meas: float, p: dict, run: RunConfig, scan: tuple[float, float],
                  how: str, law: list[dict]) -> str:
    """Which prediction the row is set against and how far off it is."""
    lo, hi = scan
    if meas <= lo:
        return (f"no onset inside the scan: its smallest rate, {lo:g} (the reference), already "
                f"ends collapsed at this level")
    if how == "none":
        if run.optimizer == "adam" or run.optimizer == "adamw":
            return f"not predicted: {law[0]['why']}"
        if run.optimizer == "lars" and level == "dimensional" and run.weight_decay > 0:
            return f"not predicted: {LARS_DIMENSIONAL_WHY}"
        if run.optimizer == "lars" and level == "dimensional":
            return ("not predicted: without weight decay the float32 overflow predicts the "
                    "embeddings the loss sees, not the representation before the projector")
        if run.optimizer == "lars" and not decay_edge_applies(run):
            return ("not predicted: above LARS's weight-decay edge the network freezes; the "
                    "embeddings the loss sees are then collapsed, the representation not always")
        why = decay_edge_applies(run) if run.optimizer == "lars" else law[0]["why"]
        return f"not predicted: {why}; complete collapse under {run.optimizer} is not derived"
    if math.isnan(pred) and how == "overflow":
        from .lars_overflow import MAX_ONSET_STEP, onset_step

        return (f"not predicted: too short a run for the overflow onset (its relative step per "
                f"update there, {onset_step(run):.2g}, exceeds {MAX_ONSET_STEP:g})")
    if math.isnan(pred):
        low = [f"{o['probe_rates'][0]:.3g}" for o in law]
        return ("not predicted: below the recovery law's range (a seed's probes are collapsed at "
                f"every logged step; the lowest probe at {' / '.join(low)} by seed)")
    anchor = {
        "law": f"recovery law, onset = steps / s*, kick rate {_median([o['kick'] for o in law]):.3g}",
        "decay": f"LARS's weight-decay edge: peak lr x trust = {momentum_edge(run.momentum, run.nesterov):.3g}",
        "overflow": "LARS without weight decay: the embeddings' float32 norm overflows by the last step",
    }[how]
    if not math.isfinite(meas) and not math.isfinite(pred):
        return f"agree: none predicted, none measured ({anchor})"
    if not math.isfinite(meas) and pred > hi:
        return f"agree: predicted {pred:.3g}, above the scan's top ({hi:g}); none measured up to it ({anchor})"
    if not math.isfinite(meas):
        return f"miss: no run collapsed up to the scan's end; predicted {pred:.3g} ({anchor})"
    if not math.isfinite(pred):
        return f"miss: none predicted (healthy at the probes' highest reach), measured {meas:.3g} ({anchor})"
    r = pred / meas
    side = "below" if r < 1 else "above"
    within = "within 2x" if 0.5 <= r <= 2 else "miss"
    return f"{within}: prediction {side} the measured onset by {max(r, 1 / r):.2g}x ({anchor})"

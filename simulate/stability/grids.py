"""The onset grids (configurations that change one thing of :data:`ONSET_BASE`) and the
table of predicted against measured onsets, per collapse level, that ``python -m figures
onset`` prints."""

from __future__ import annotations

import math
from typing import Callable

from ..config import RunConfig
from .edges import attraction_edge, collective_edge, why_no_class_edge
from .measure import dip_note, measure_levels
from .optimizer_onset import predict_optimizer_onset, sgd_base, why_not_predicted
from .pair_map import escape_edge, mirror_edge, splitting_edge, updates_per_point

#: the configuration every grid row changes one thing of: NT-Xent on free embeddings,
#: unprojected steps, 4 classes in 16 dimensions, 512 points (384 for training), batch 32
#: (the data of the quick preset's phase-diagram sweeps)
ONSET_BASE = dict(model="free", update_mode="sphere_raw", loss="ntxent", temperature=0.5,
                  batch_size=32, k=4, d=16, per_class=128, mean_scale=2.0, sigma=1.0,
                  aug_sigma=0.5, label_fraction=0.5, steps=300, log_every=300)
#: steps of the quick, full and held-out grids' runs: collapse is a slow escape from the
#: healthy state (at tau = 0.5, lr = 540 a run is still spread at step 300 and on one line at
#: step 500), so 300 steps would mostly measure how long the escape takes
FULL_GRID_STEPS = 1000
#: grid name -> (rows: label -> changes to ONSET_BASE, seeds, scan points, bisection rounds)
ONSET_GRIDS = {
    "tiny": ({"tau=0.2": {"temperature": 0.2}, "sphere": {"update_mode": "sphere"}},
             (0,), 4, 1),
    "quick": ({"tau=0.2": {"temperature": 0.2}, "tau=0.5": {},
               "sphere": {"update_mode": "sphere"}, "clop=1": {"clop_weight": 1.0}},
              (0, 1), 7, 3),
    "full": ({
        "tau=0.1": {"temperature": 0.1}, "tau=0.2": {"temperature": 0.2}, "tau=0.5": {},
        "tau=1": {"temperature": 1.0},
        "B=8": {"batch_size": 8}, "B=64": {"batch_size": 64}, "B=256": {"batch_size": 256},
        "d=4": {"d": 4}, "d=64": {"d": 64},
        "k=2": {"k": 2, "per_class": 256}, "k=16": {"k": 16, "per_class": 32},
        "dcl": {"loss": "dcl"}, "supcon": {"loss": "supcon"},
        "clop=1": {"clop_weight": 1.0}, "clop=10": {"clop_weight": 10.0},
        "sphere": {"update_mode": "sphere"}, "free": {"update_mode": "free"},
        "free, init_norm=0.3": {"update_mode": "free", "init_norm": 0.3},
    }, (0, 1, 2), 9, 4),
    # values the full grid does not use, checked separately (the predictor was built
    # against the full grid's measurements; this grid was run once the predictor was fixed,
    # and again, with the full grid, when the complete level's angle moved from pi/2 to the
    # mirror, the one angle tried)
    "heldout": ({
        "tau=0.15": {"temperature": 0.15}, "tau=0.3": {"temperature": 0.3},
        "tau=0.7": {"temperature": 0.7},
        "B=16": {"batch_size": 16}, "B=128": {"batch_size": 128},
        "d=8": {"d": 8}, "d=32": {"d": 32}, "k=8": {"k": 8, "per_class": 64},
        "aug=0.3": {"aug_sigma": 0.3}, "aug=0.8": {"aug_sigma": 0.8},
        "tau=0.2, d=8": {"temperature": 0.2, "d": 8},
        "dcl, tau=0.2": {"loss": "dcl", "temperature": 0.2},
        "dcl, clop=1": {"loss": "dcl", "clop_weight": 1.0},
    }, (0, 1, 2), 9, 4),
    # the optimizers of the table step: measured, out of the pair map's reach
    # (simulate.stability.optimizer_onset says why, from these rows)
    "optimizers": ({
        "momentum=0.5": {"momentum": 0.5}, "momentum=0.9": {"momentum": 0.9},
        "nesterov 0.9": {"momentum": 0.9, "nesterov": True},
        "momentum=0.9, tau=0.2": {"momentum": 0.9, "temperature": 0.2},
        "momentum=0.9, B=64": {"momentum": 0.9, "batch_size": 64},
        "lars": {"optimizer": "lars", "momentum": 0.9}, "adam": {"optimizer": "adam"},
    }, (0, 1, 2), 9, 4),
}


def onset_grid(name: str, steps: int | None = None) -> list[tuple[str, RunConfig]]:
    """``(label, run)`` rows of a named grid (``tiny``, ``quick``, ``full``, ``heldout``)."""
    if name not in ONSET_GRIDS:
        raise ValueError(f"grid must be one of {', '.join(ONSET_GRIDS)}, got {name!r}")
    rows, *_ = ONSET_GRIDS[name]
    base = dict(ONSET_BASE)
    if name == "tiny":
        base.update(per_class=16, batch_size=8, d=4, steps=60, log_every=60)
    if name in ("quick", "full", "heldout", "optimizers"):
        base.update(steps=FULL_GRID_STEPS, log_every=FULL_GRID_STEPS)
    if steps is not None:
        base.update(steps=steps, log_every=steps)
    return [(label, RunConfig(**{**base, **change})) for label, change in rows.items()]


#: the levels every onset table reports, one row each per configuration
TABLE_LEVELS = ("complete", "dimensional")


def table_levels(run: RunConfig) -> tuple[str, ...]:
    """The levels of a configuration's rows: :data:`TABLE_LEVELS`, and ``class`` for SupCon,
    the one loss of the grids whose positives are its labels (for the others a rank at or
    below k - 1 + 0.5 is dimensional or complete collapse, not class collapse)."""
    return TABLE_LEVELS + ("class",) if run.loss == "supcon" else TABLE_LEVELS


def onset_ratio(predicted: float, measured: float) -> float:
    """``predicted / measured``; 1 when neither collapses (both infinite), inf or 0 when
    only one does; NaN when either is NaN (not predicted)."""
    if math.isnan(predicted) or math.isnan(measured):
        return math.nan
    if not math.isfinite(predicted) and not math.isfinite(measured):
        return 1.0
    if not math.isfinite(measured):
        return 0.0
    return predicted / measured


def onset_table(name: str, device: str = "cpu", steps: int | None = None,
                progress: Callable[[str], None] | None = None) -> list[dict]:
    """Predicted against measured onset for every row of grid ``name`` at every level of
    :func:`table_levels` (:data:`TABLE_LEVELS`; SupCon adds ``class``): one row per
    configuration and level (configuration by configuration, the levels in that order), from
    one scan per configuration and seed."""
    grid = onset_grid(name, steps)
    _, seeds, points, rounds = ONSET_GRIDS[name]
    edges, preds = [], []
    for label, run in grid:
        base = sgd_base(run)  # the edges are plain SGD's (NaN for other optimizers)
        edges.append({name: (math.nan if base is None else f(base)) for name, f in (
            ("attraction_edge", attraction_edge), ("escape_edge", escape_edge),
            ("mirror_edge", mirror_edge), ("splitting_edge", splitting_edge),
            ("collective_edge", collective_edge))})
        preds.append({level: predict_optimizer_onset(run, level) for level in table_levels(run)})
        if progress:
            progress(f"predicted {label}")
    # configurations that report the same levels are measured together (a run's trajectory
    # does not depend on the others it trains with)
    groups: dict[tuple[str, ...], list[int]] = {}
    for i, (_, run) in enumerate(grid):
        groups.setdefault(table_levels(run), []).append(i)
    measured: dict[tuple[int, str], dict] = {}
    for levels, idx in groups.items():
        per_level = measure_levels([grid[i][1] for i in idx], levels, seeds, points=points,
                                   rounds=rounds, device=device)
        for level, results in zip(levels, per_level):
            measured.update({(i, level): m for i, m in zip(idx, results)})
    return [_table_row(label, run, level, p[level], e, measured[(i, level)], seeds)
            for i, ((label, run), e, p) in enumerate(zip(grid, edges, preds)) for level in p]


def _table_row(label: str, run: RunConfig, level: str, pred: float, edges: dict,
               m: dict, seeds) -> dict:
    """One row of :func:`onset_table`: configuration ``label`` at ``level``, predicted
    ``pred``, measured ``m`` (a result of :func:`measure_levels` over ``seeds``)."""
    ratio = onset_ratio(pred, m["onset"])
    a, e = edges["attraction_edge"], edges["mirror_edge"]
    why = why_not_predicted(run, level)
    if why is not None:
        none = "none measured" if not math.isfinite(m["onset"]) else f"measured {m['onset']:.3g}"
        note = f"not predicted ({why}); {none}"
    elif math.isfinite(pred) and not math.isfinite(m["onset"]) and any(d is not None for d in m["dips"]):
        note = (f"miss: collapse predicted above {pred:.3g}, but the runs end collapsed only in a "
                f"band of rates and keep more rank above it (up to 3000 x 2B tau)")
    elif level == "complete":
        note = _miss_note(pred, m["onset"], a, e, run)
    elif level == "class":
        note = _class_note(pred, m["onset"], run)
    else:
        note = _dimensional_note(pred, m["onset"], run)
    note += dip_note(m, seeds)
    return {
        "config": label, "level": level, "loss": run.loss, "update_mode": run.update_mode,
        "temperature": run.temperature, "batch_size": run.batch_size, "d": run.d, "k": run.k,
        "clop_weight": run.clop_weight, "init_norm": run.init_norm, "aug_sigma": run.aug_sigma,
        "optimizer": run.optimizer, "momentum": run.momentum, "nesterov": run.nesterov,
        "steps": run.steps, "updates_per_point": updates_per_point(run),
        "predicted": pred, **edges,
        # the edge behind a class row's prediction (the class-collapsed simplex attracts)
        "class_attraction_edge": pred if level == "class" else math.nan,
        "measured": m["onset"], "per_seed": m["per_seed"], "spread": m["spread"],
        "reference_rank": m["reference_rank"], "dips": m["dips"],
        "ratio": ratio, "within_2x": bool(0.5 <= ratio <= 2.0), "note": note,
    }


def _dimensional_note(pred: float, meas: float, run: RunConfig) -> str:
    """Why a dimensional row agrees, misses or is not predicted."""
    none = "none measured" if not math.isfinite(meas) else f"measured {meas:.3g}"
    if math.isnan(pred):
        why = ("the pair map leaves out CLOP's prototype pull on both views of a labelled point"
               if run.clop_weight > 0 else
               "the pair map is the raw step's; the projected steps' pairs are not modelled"
               if run.update_mode != "sphere_raw" else "the pair map does not apply")
        return f"not predicted ({why}); {none}"
    if not math.isfinite(pred) and not math.isfinite(meas):
        return "agree: no dimensional collapse (the pairs do not split within the run's updates)"
    if not math.isfinite(meas):
        return (f"miss: the pairs escape above {pred:.3g}, but no run lost half its reference "
                f"rank within {run.steps} steps up to 3000 x 2B tau")
    if not math.isfinite(pred):
        return f"miss: dimensional collapse {none} although the pairs do not split in time"
    r = pred / meas
    edge = "escape edge"
    if 0.85 <= r <= 1.15:
        return f"within 15% ({edge})"
    side = "above" if r > 1 else "below"
    why = ""
    if r < 1:
        why = (f"; the rank falls only once the split pairs gather onto a few lines, which is "
               f"not modelled ({updates_per_point(run):.3g} updates per point)")
    within = "within 2x" if 0.5 <= r <= 2 else "miss"
    return f"{within}: {edge} {side} the measured onset by {max(r, 1 / r):.2g}x{why}"


def _class_note(pred: float, meas: float, run: RunConfig) -> str:
    """Why a class row (SupCon) agrees, misses or is not predicted: the class-collapsed
    simplex attracts or repels (:func:`simulate.stability.edges.class_attraction_edge`)."""
    if math.isnan(pred):
        none = "none measured" if not math.isfinite(meas) else f"measured {meas:.3g}"
        return f"not predicted ({why_no_class_edge(run)}); {none}"
    if not math.isfinite(pred) and not math.isfinite(meas):
        why = ("unlabelled points are pushed off the vertex they share" if run.label_fraction < 1
               else "it does not attract in the scanned range")
        return f"agree: no class collapse (the class-collapsed simplex repels at every rate: {why})"
    if not math.isfinite(meas):
        return (f"miss: the class-collapsed simplex attracts above {pred:.3g}, but no run reached "
                f"rank k - 1 + 0.5 within {run.steps} steps up to 3000 x 2B tau")
    if not math.isfinite(pred):
        return (f"miss: class-level rank measured from {meas:.3g} although the class-collapsed "
                f"simplex repels at every rate (the level tests the rank alone)")
    r = pred / meas
    if 0.85 <= r <= 1.15:
        return "within 15% (class-collapsed simplex attracts)"
    within = "within 2x" if 0.5 <= r <= 2 else "miss"
    side = "above" if r > 1 else "below"
    return (f"{within}: the simplex attracts {side} the measured onset by {max(r, 1 / r):.2g}x; "
            f"where it attracts at every rate the onset is set by the steps the run needs to "
            f"reach it, which is not modelled")


def _miss_note(pred: float, meas: float, attract: float, mirror: float, run: RunConfig) -> str:
    """Why a complete row agrees or misses, from which edge binds (the +-u* attraction edge
    or the pairs' mirror edge) and which side is infinite."""
    edge = "mirror" if math.isfinite(mirror) and mirror >= attract else "attraction"
    if not math.isfinite(pred) and not math.isfinite(meas):
        why = ("CLOP makes +-u* non-stationary" if run.clop_weight > 0 else
               "the projected step never makes +-u* attract" if run.update_mode != "sphere_raw" else
               "+-u* is not a fixed point of this loss's step" if not math.isfinite(attract) else
               "the pairs do not anti-align within the run's updates")
        return f"agree: no collapse ({why})"
    if math.isfinite(pred) and not math.isfinite(meas):
        if run.loss == "supcon":
            name = "the +-u* attraction edge" if edge == "attraction" else "the mirror edge"
            return (f"miss: collapse predicted above {pred:.3g} ({name}) but no "
                    f"run collapsed within {run.steps} steps up to 3000 x 2B tau: above the escape "
                    f"edge SupCon's runs end at rank about k (dimensional collapse, see the "
                    f"dimensional row), not on +-u*; the pair map ignores the class positives")
        return (f"miss: collapse predicted above {pred:.3g} but no run collapsed within "
                f"{run.steps} steps up to 3000 x 2B tau: the pair map anti-aligns the pairs in "
                f"time ({updates_per_point(run):.3g} updates per point), but the merging of the "
                f"points' lines that follows is not modelled (far above the edge it takes 13-17 "
                f"more updates per point)")
    if not math.isfinite(pred):
        return "miss: collapse measured although +-u* does not attract under this step"
    r = pred / meas
    if 0.85 <= r <= 1.15:
        return f"within 15% ({edge} edge binds)"
    side = "above" if r > 1 else "below"
    why = ""
    if r < 1 and edge == "mirror":
        why = (f"; after the pairs anti-align, the points' lines still merge, which is not "
               f"modelled: this run has {updates_per_point(run):.3g} updates per point")
    within = "within 2x" if 0.5 <= r <= 2 else "miss"
    return f"{within}: prediction {side} the measured onset by {max(r, 1 / r):.2g}x ({edge} edge binds{why})"

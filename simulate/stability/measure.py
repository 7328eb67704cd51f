"""The measured onset of collapse, per collapse level (:mod:`simulate.stability.levels`):
scans and bisections of the learning rate, by training every bracket's runs with the engine."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from ..config import RunConfig
from .levels import REFERENCE_RATE_FACTOR, CollapseLevel, get_level
from .states import rate_scale

#: the rank columns of the engine a level can be measured on: the embeddings the loss sees,
#: and the representation before a projector head (MLP encoders with ``projector_dims``)
RANK_METRICS = ("effective_rank", "repr_effective_rank")


def train_logged_rows(runs: list[RunConfig], device: str = "cpu") -> list[list[dict]]:
    """Each run's logged rows, sorted by step, training runs that share a chunk key together."""
    from ..engine import train_chunk

    groups: dict = {}
    for i, r in enumerate(runs):
        groups.setdefault(r.chunk_key(), []).append(i)
    out: list[list[dict]] = [[] for _ in runs]
    for idx in groups.values():
        rows = train_chunk([runs[i] for i in idx], device).rows
        where: dict = {}
        for i in idx:  # equal runs (equal run_id) each get the rows
            where.setdefault(runs[i].run_id, []).append(i)
        for row in rows:
            for i in where[row["run_id"]]:
                out[i].append(row)
    return [sorted(rows, key=lambda row: row["step"]) for rows in out]


def _train_final_ranks(runs: list[RunConfig], device: str = "cpu",
                       metric: str = "effective_rank") -> list[float]:
    """Final ``metric`` of each run, training runs that share a chunk key together."""
    return [float(rows[-1][metric]) for rows in train_logged_rows(runs, device)]


def measure_onsets(runs: list[RunConfig], seeds=(0, 1, 2), lo: float | None = None,
                   hi: float | None = None, points: int = 9, rounds: int = 4,
                   device: str = "cpu", level: str | CollapseLevel = "complete",
                   metric: str = "effective_rank") -> list[dict]:
    """Measured onset of collapse at ``level`` of each configuration, per seed, by training.

    For every configuration and seed: a scan of ``points`` learning rates log-spaced over
    ``[lo, hi]`` (free embeddings: default ``[0.03, 3000]`` times :func:`rate_scale`; MLP
    encoders: ``lo`` and ``hi`` must be given), then ``rounds`` bisections (geometric
    midpoints) between the largest healthy scanned rate and the next one, above which every
    scanned rate collapses (where the rank is not monotone in the rate, a dip at small rates
    that later rates climb out of is not the onset). Every round trains all brackets of all configurations as stacks (runs sharing a chunk
    key train together). A seed's onset is the geometric midpoint of its final bracket;
    ``math.inf`` when no scanned rate collapses, ``lo`` when the smallest does. A run's rank
    is its final ``metric`` (``effective_rank``, or ``repr_effective_rank``: the
    representation before a projector). The reference rank of a configuration and seed
    (levels that need one: dimensional) is the final rank at the scan's smallest rate, ``lo``
    (the reference rate, :data:`REFERENCE_RATE_FACTOR` x :func:`rate_scale` by default),
    trained once as the scan's first point.

    Returns one dict per configuration: ``onset`` (median over seeds), ``per_seed``,
    ``spread`` (largest over smallest finite per-seed onset), ``brackets``, ``runs_trained``,
    ``level``, ``metric``, ``reference_rank`` (per seed), ``dips`` (per seed: the smallest
    scanned rate that collapsed below a healthy one, or None; :func:`dip_note`).
    """
    return measure_levels(runs, (level,), seeds, lo, hi, points, rounds, device, metric)[0]


def measure_levels(runs: list[RunConfig], levels=("complete", "dimensional"), seeds=(0, 1, 2),
                   lo: float | None = None, hi: float | None = None, points: int = 9,
                   rounds: int = 4, device: str = "cpu",
                   metric: str = "effective_rank") -> list[list[dict]]:
    """:func:`measure_onsets` at several levels from one scan: the scan is trained once, the
    levels' bisections train together, round by round. Returns one list (of one dict per
    configuration) per level, in the order of ``levels``; ``runs_trained`` counts all."""
    levels = [get_level(v) for v in levels]
    if not runs:
        return [[] for _ in levels]
    seeds = _check_onset_args(runs, seeds, points, rounds, lo, hi, metric)
    scans = [(ci, seed, grid) for ci, grid in enumerate(_scan_grids(runs, lo, hi, points))
             for seed in seeds]
    jobs = [replace(runs[ci], lr=lr, seed=seed) for ci, seed, grid in scans for lr in grid]
    ranks = _train_final_ranks(jobs, device, metric)
    refs = _reference_ranks(scans, ranks)
    tests = [_level_test(lev, runs, refs) for lev in levels]
    brackets = [_scan_brackets(scans, ranks, t) for t in tests]
    dips = [_scan_dips(scans, ranks, t) for t in tests]
    trained = len(jobs) + _bisect(brackets, tests, runs, rounds, device, metric)
    return [[{**_onset_summary(b, ci, seeds, trained), "level": lev.name, "metric": metric,
              "reference_rank": [refs[(ci, s)] for s in seeds],
              "dips": [dip[(ci, s)] for s in seeds]} for ci in range(len(runs))]
            for lev, b, dip in zip(levels, brackets, dips)]


def _check_onset_args(runs: list[RunConfig], seeds, points: int, rounds: int, lo, hi,
                      metric: str) -> list[int]:
    """The seeds as integers, after checking the arguments of :func:`measure_onsets`."""
    seeds = [int(s) for s in seeds]
    if not seeds or any(s < 0 for s in seeds):
        raise ValueError(f"seeds must be a non-empty list of integers >= 0, got {seeds!r}")
    if not (isinstance(points, int) and points >= 2):
        raise ValueError(f"points must be an integer >= 2, got {points!r}")
    if not (isinstance(rounds, int) and rounds >= 0):
        raise ValueError(f"rounds must be an integer >= 0, got {rounds!r}")
    if metric not in RANK_METRICS:
        raise ValueError(f"metric must be one of {', '.join(RANK_METRICS)}, got {metric!r}")
    for r in runs:
        if r.model not in ("free", "mlp"):
            raise ValueError(f"run.model must be 'free' or 'mlp', got {r.model!r}")
        if r.model == "mlp" and (lo is None or hi is None):
            raise ValueError("lo and hi must be given for model 'mlp' (the default scan range, "
                             "in units of 2B tau nu^2, is that of free embeddings)")
        if metric == "repr_effective_rank" and not r.projector_widths:
            raise ValueError("metric 'repr_effective_rank' needs an MLP encoder with a projector "
                             f"(projector_dims), got model {r.model!r}, projector_dims "
                             f"{r.projector_dims!r}")
    return seeds


def _scan_grids(runs: list[RunConfig], lo: float | None, hi: float | None,
                points: int) -> list[list[float]]:
    """Each configuration's scan: ``points`` rates log-spaced over ``[lo, hi]`` (default
    ``[0.03, 3000]`` times :func:`rate_scale`)."""
    grids = []
    for r in runs:
        s = rate_scale(r) if lo is None or hi is None else 1.0
        a = REFERENCE_RATE_FACTOR * s if lo is None else lo
        b = 3000.0 * s if hi is None else hi
        if not (0 < a < b):
            raise ValueError(f"lo and hi must satisfy 0 < lo < hi, got {a!r}, {b!r}")
        grids.append([float(x) for x in np.geomspace(a, b, points)])
    return grids


def _reference_ranks(scans: list[tuple], ranks: list[float]) -> dict:
    """``(config, seed) -> reference rank``: the final rank at the scan's first (smallest)
    rate."""
    refs, k = {}, 0
    for ci, seed, grid in scans:
        refs[(ci, seed)] = ranks[k]
        k += len(grid)
    return refs


def _level_test(level: CollapseLevel, runs: list[RunConfig], refs: dict):
    """``(config, seed, rank) -> collapsed`` at ``level``."""
    return lambda ci, seed, v: level.collapsed(v, refs[(ci, seed)], runs[ci].k)


def _scan_brackets(scans: list[tuple], ranks: list[float], test) -> dict:
    """``(config, seed) -> (a, b)`` from the scans' final ranks (in the order of ``scans``):
    the largest healthy scanned rate and the next one (from there on every scanned rate
    collapses); ``(0, grid[0])`` when every rate collapses, ``(last, inf)`` when the largest
    does not."""
    brackets = {}
    k = 0
    for ci, seed, grid in scans:
        rk = ranks[k:k + len(grid)]
        k += len(grid)
        healthy = [i for i, v in enumerate(rk) if not test(ci, seed, v)]
        if not healthy:
            brackets[(ci, seed)] = (0.0, grid[0])
        elif healthy[-1] == len(grid) - 1:
            brackets[(ci, seed)] = (grid[-1], math.inf)
        else:
            brackets[(ci, seed)] = (grid[healthy[-1]], grid[healthy[-1] + 1])
    return brackets


def _scan_dips(scans: list[tuple], ranks: list[float], test) -> dict:
    """``(config, seed) -> rate``: the smallest scanned rate that ends collapsed although a
    larger scanned rate does not (the rank is not monotone in the rate there), or None."""
    dips = {}
    k = 0
    for ci, seed, grid in scans:
        hit = [test(ci, seed, v) for v in ranks[k:k + len(grid)]]
        k += len(grid)
        healthy = [i for i, h in enumerate(hit) if not h]
        first = next((i for i, h in enumerate(hit) if h), None)
        dips[(ci, seed)] = grid[first] if first is not None and healthy and first < healthy[-1] else None
    return dips


def dip_note(measured: dict, seeds) -> str:
    """A sentence for a table row whose scan dipped (see :func:`_scan_dips`), or ``""``."""
    parts = [f"seed {s} at {d:.3g}" for s, d in zip(seeds, measured["dips"]) if d is not None]
    if not parts:
        return ""
    return (f"; rank not monotone in lr: collapsed at a smaller rate, healthy again above it "
            f"({', '.join(parts)}); the onset is where every larger rate collapses")


def _bisect(brackets: list[dict], tests: list, runs: list[RunConfig], rounds: int, device: str,
            metric: str) -> int:
    """Halve every open bracket of every level (geometric midpoint) ``rounds`` times, in
    place, training all midpoints of a round together; returns the number of runs trained."""
    trained = 0
    for _ in range(rounds):
        open_ = [(li, key) for li, br in enumerate(brackets)
                 for key, (a, b) in br.items() if a > 0 and math.isfinite(b)]
        if not open_:
            break
        mids = [math.sqrt(brackets[li][key][0] * brackets[li][key][1]) for li, key in open_]
        jobs = [replace(runs[ci], lr=m, seed=seed) for (_, (ci, seed)), m in zip(open_, mids)]
        ranks = _train_final_ranks(jobs, device, metric)
        trained += len(jobs)
        for (li, key), m, v in zip(open_, mids, ranks):
            a, b = brackets[li][key]
            brackets[li][key] = (a, m) if tests[li](*key, v) else (m, b)
    return trained


def _onset_summary(brackets: dict, ci: int, seeds: list[int], trained: int) -> dict:
    """The result dict of configuration ``ci`` (see :func:`measure_onsets`)."""
    per = []
    for seed in seeds:
        a, b = brackets[(ci, seed)]
        per.append(math.inf if not math.isfinite(b) else (b if a == 0 else math.sqrt(a * b)))
    finite = [v for v in per if math.isfinite(v)]
    return {
        "onset": float(np.median(per)) if per else math.nan,
        "per_seed": per,
        "spread": (max(finite) / min(finite)) if finite else math.nan,
        "brackets": [brackets[(ci, s)] for s in seeds],
        "runs_trained": trained,
    }


def measure_onset(run: RunConfig, seeds=(0, 1, 2), **kw) -> dict:
    """:func:`measure_onsets` for one configuration."""
    return measure_onsets([run], seeds, **kw)[0]

"""The measured onset of collapse: scans and bisections of the learning rate, by training
every bracket's runs with the engine."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from ..config import RunConfig
from .onset import collapsed
from .states import rate_scale


def _train_final_ranks(runs: list[RunConfig], device: str = "cpu") -> list[float]:
    """Final effective rank of each run, training runs that share a chunk key together."""
    from ..engine import train_chunk

    groups: dict = {}
    for i, r in enumerate(runs):
        groups.setdefault(r.chunk_key(), []).append(i)
    out = [math.nan] * len(runs)
    for idx in groups.values():
        chunk = [runs[i] for i in idx]
        rows = train_chunk(chunk, device).rows
        last = {}
        for row in rows:
            if row["run_id"] not in last or row["step"] > last[row["run_id"]]["step"]:
                last[row["run_id"]] = row
        for i in idx:
            out[i] = float(last[runs[i].run_id]["effective_rank"])
    return out


def measure_onsets(runs: list[RunConfig], seeds=(0, 1, 2), lo: float | None = None,
                   hi: float | None = None, points: int = 9, rounds: int = 4,
                   device: str = "cpu") -> list[dict]:
    """Measured onset of collapse of each configuration, per seed, by training.

    For every configuration and seed: a scan of ``points`` learning rates log-spaced over
    ``[lo, hi]`` (default ``[0.03, 3000]`` times :func:`rate_scale`), then ``rounds``
    bisections (geometric midpoints) between the largest healthy rate below the first
    collapsed one and that one. Every round trains all brackets of all configurations as
    stacks (runs sharing a chunk key train together). A seed's onset is the geometric
    midpoint of its final bracket; ``math.inf`` when no scanned rate collapses, ``lo`` when
    the smallest does.

    Returns one dict per configuration: ``onset`` (median over seeds), ``per_seed``,
    ``spread`` (largest over smallest finite per-seed onset), ``brackets``, ``runs_trained``.
    """
    if not runs:
        return []
    seeds = _check_onset_args(runs, seeds, points, rounds)
    scans = [(ci, seed, grid) for ci, grid in enumerate(_scan_grids(runs, lo, hi, points))
             for seed in seeds]
    jobs = [replace(runs[ci], lr=lr, seed=seed) for ci, seed, grid in scans for lr in grid]
    brackets = _scan_brackets(scans, _train_final_ranks(jobs, device))
    trained = len(jobs) + _bisect(brackets, runs, rounds, device)
    return [_onset_summary(brackets, ci, seeds, trained) for ci in range(len(runs))]


def _check_onset_args(runs: list[RunConfig], seeds, points: int, rounds: int) -> list[int]:
    """The seeds as integers, after checking the arguments of :func:`measure_onsets`."""
    seeds = [int(s) for s in seeds]
    if not seeds or any(s < 0 for s in seeds):
        raise ValueError(f"seeds must be a non-empty list of integers >= 0, got {seeds!r}")
    if not (isinstance(points, int) and points >= 2):
        raise ValueError(f"points must be an integer >= 2, got {points!r}")
    if not (isinstance(rounds, int) and rounds >= 0):
        raise ValueError(f"rounds must be an integer >= 0, got {rounds!r}")
    for r in runs:
        if r.model != "free":
            raise ValueError(f"run.model must be 'free', got {r.model!r}")
    return seeds


def _scan_grids(runs: list[RunConfig], lo: float | None, hi: float | None,
                points: int) -> list[list[float]]:
    """Each configuration's scan: ``points`` rates log-spaced over ``[lo, hi]`` (default
    ``[0.03, 3000]`` times :func:`rate_scale`)."""
    grids = []
    for r in runs:
        s = rate_scale(r)
        a = 0.03 * s if lo is None else lo
        b = 3000.0 * s if hi is None else hi
        if not (0 < a < b):
            raise ValueError(f"lo and hi must satisfy 0 < lo < hi, got {a!r}, {b!r}")
        grids.append([float(x) for x in np.geomspace(a, b, points)])
    return grids


def _scan_brackets(scans: list[tuple], ranks: list[float]) -> dict:
    """``(config, seed) -> (a, b)`` from the scans' final ranks (in the order of ``scans``):
    the largest healthy rate below the first collapsed one and that one; ``(0, first)`` when
    the smallest rate collapses, ``(last, inf)`` when none does."""
    brackets = {}
    k = 0
    for ci, seed, grid in scans:
        rk = ranks[k:k + len(grid)]
        k += len(grid)
        first = next((i for i, v in enumerate(rk) if collapsed(v)), None)
        if first is None:
            brackets[(ci, seed)] = (grid[-1], math.inf)
        elif first == 0:
            brackets[(ci, seed)] = (0.0, grid[0])
        else:
            brackets[(ci, seed)] = (grid[first - 1], grid[first])
    return brackets


def _bisect(brackets: dict, runs: list[RunConfig], rounds: int, device: str) -> int:
    """Halve every open bracket (geometric midpoint) ``rounds`` times, in place, training all
    midpoints of a round together; returns the number of runs trained."""
    trained = 0
    for _ in range(rounds):
        open_ = [key for key, (a, b) in brackets.items() if a > 0 and math.isfinite(b)]
        if not open_:
            break
        mids = [math.sqrt(brackets[key][0] * brackets[key][1]) for key in open_]
        jobs = [replace(runs[ci], lr=m, seed=seed) for (ci, seed), m in zip(open_, mids)]
        ranks = _train_final_ranks(jobs, device)
        trained += len(jobs)
        for key, m, v in zip(open_, mids, ranks):
            a, b = brackets[key]
            brackets[key] = (a, m) if collapsed(v) else (m, b)
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

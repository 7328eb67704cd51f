"""Analytic edges from linear stability: the learning rate above which the collapsed
configuration +-u* attracts (:func:`attraction_edge`, a bisection on the two-step spectrum),
and the softmax statistics of an isotropic healthy state with the edge of its collective
modes (:func:`isotropic_statistics`, :func:`collective_edge`). The pairs' edges, from the
raw step's pair map, are in :mod:`simulate.stability.pair_map`."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import torch

from ..config import RunConfig
from .spectra import rotation_modes, spectrum
from .states import class_collapsed_state, collapsed_state, initial_sq_norm
from .step import _check_run, make_step


def _batch_labels(run: RunConfig) -> torch.Tensor:
    """Labels of an analysis batch: points cycle through the k classes, the first
    ``round(label_fraction * B)`` keep theirs (-1 for the rest)."""
    b = run.batch_size
    labels = torch.arange(b) % run.k
    labels[int(round(run.label_fraction * b)):] = -1
    return labels


def attraction_edge(run: RunConfig, lo: float | None = None, hi: float | None = None,
                    rel_tol: float = 1e-3) -> float:
    """Learning rate above which the collapsed configuration (:func:`collapsed_state`)
    attracts under the run's step: the spectral radius of the Jacobian of two steps
    (tangent, global rotations removed) falls below 1. ``math.inf`` when it is not a fixed
    point of two steps (CLOP pulls it apart) or does not attract anywhere in ``[lo, hi]``
    (default ``[1e-3, 1e4]`` times :func:`rate_scale`; the projected steps of the sphere and
    free modes never make it attract). Bisection on the linear stability only, no training.
    For NT-Xent in the sphere_raw mode it equals 2B times ``critical_lr("rank1_cycle", n=B)``.
    """
    run = _check_run(run)
    nu2 = 1.0 if run.update_mode != "free" else initial_sq_norm(run)
    if (run.loss == "ntxent" and run.update_mode == "sphere_raw" and run.clop_weight == 0
            and lo is None and hi is None):
        # claim rank1_cycle (n = B per side) in the engine's units; the bisection below
        # reproduces it (tests/test_onset.py)
        import theory

        return 2 * run.batch_size * theory.critical_lr("rank1_cycle", tau=run.temperature,
                                                       n=run.batch_size)
    sphere_run = replace(run, update_mode="sphere" if run.update_mode == "free" else run.update_mode,
                         init_norm=None)
    dim = 2 if run.clop_weight == 0 else max(2, run.embedding_dim)
    z = collapsed_state(run, dim)
    rot = rotation_modes(z) if run.clop_weight == 0 else None
    return _attracts_above(sphere_run, z, rot, lo, hi, rel_tol) * nu2


def _attracts_above(run: RunConfig, z: torch.Tensor, deflate, lo: float | None, hi: float | None,
                    rel_tol: float) -> float:
    """Smallest rate in ``[lo, hi]`` (default ``[1e-3, 1e4]`` times the run's rate unit
    ``2 B tau``) at which the state ``z`` of the analysis batch attracts under the run's step:
    a 15-point scan, then a bisection on the two-step spectral radius (modes ``deflate``
    removed). ``math.inf`` when ``z`` is not a fixed point of two steps or attracts nowhere in
    the range; ``lo`` when it attracts already there."""
    scale = 2 * run.batch_size * (run.temperature if run.loss in ("ntxent", "supcon", "dcl") else 1.0)
    lo = 1e-3 * scale if lo is None else lo
    hi = 1e4 * scale if hi is None else hi
    labels = _batch_labels(run)

    def radius(eta):
        step = make_step(run, labels=labels, lr=eta)
        back = step.iterate(z, 2)
        if not torch.allclose(back, z, atol=1e-9):
            return math.inf
        return spectrum(step, z, steps=2, k=1, deflate=deflate)["radius"]

    grid = np.geomspace(lo, hi, 15)
    rs = [radius(float(e)) for e in grid]
    below = [i for i, r in enumerate(rs) if r < 1]
    if not below:
        return math.inf
    i = below[0]
    if i == 0:
        return float(grid[0])
    a, b = float(grid[i - 1]), float(grid[i])
    while b / a - 1 > rel_tol:
        m = math.sqrt(a * b)
        a, b = (a, m) if radius(m) < 1 else (m, b)
    return math.sqrt(a * b)


def why_no_class_edge(run: RunConfig) -> str | None:
    """Why :func:`class_attraction_edge` has nothing to say about ``run`` (None: it has)."""
    if run.loss != "supcon":
        return "only SupCon takes its labels as positives"
    if run.clop_weight > 0:
        return "CLOP's prototype pull is not in the class state's analysis"
    if run.update_mode != "sphere_raw":
        return "the projected steps are not analysed"
    if not 2 <= run.k <= run.embedding_dim + 1:
        return "k must lie in [2, D + 1] for a simplex of the classes"
    return None


def class_attraction_edge(run: RunConfig, lo: float | None = None, hi: float | None = None,
                          rel_tol: float = 1e-3) -> float:
    """Learning rate above which the class-collapsed configuration
    (:func:`simulate.stability.states.class_collapsed_state`: every point at its class's
    simplex vertex, rank k - 1) attracts under a SupCon run's step, as
    :func:`attraction_edge` does for +-u*. The state is a fixed point for any labelled
    fraction (each row's gradient points along its own vertex); whether it attracts depends
    on it: SupCon's class positives pull a labelled point back to its vertex, while an
    unlabelled one (label -1, its other view its only positive) is pushed off a vertex it
    shares with other points. ``lo`` when it attracts already at the smallest scanned rate
    (with every point labelled it is the loss's minimiser: reaching it is then a matter of
    steps, not of the rate); ``math.inf`` when it attracts nowhere in ``[lo, hi]``. NaN for
    losses other than SupCon and with CLOP (no other loss of the pair map uses labels),
    update modes other than ``sphere_raw``, or k outside ``[2, D + 1]``
    (:func:`why_no_class_edge` says which)."""
    run = _check_run(run)
    if why_no_class_edge(run) is not None:
        return math.nan
    z = class_collapsed_state(run)
    return _attracts_above(run, z, rotation_modes(z), lo, hi, rel_tol)


def isotropic_statistics(run: RunConfig, grid: int = 4001, cos_pair: float = 1.0) -> dict:
    """Softmax statistics an anchor sees in an isotropic healthy state: its positive at
    cosine ``cos_pair`` (1: aligned), the 2B - 2 other rows spread uniformly on the sphere of
    dimension D (cosine density proportional to sin^(D-2) of the angle). Returns ``p`` (the
    positive's weight; 0 for DCL, whose denominator leaves it out), ``qc`` (the
    softmax-weighted sum of the other rows' cosines, ``sum_k q_k c_k``) and ``s`` (the
    softmax-weighted tangent second moment along one tangent direction,
    ``sum_k q_k (1 - c_k^2) / (D - 1)``). On the sphere ``qc = s / tau`` (integration by parts
    of ``e^{c/tau}`` against the density; a check of the quadrature)."""
    d, b = run.embedding_dim, run.batch_size
    tau = run.temperature
    if not (-1.0 <= cos_pair <= 1.0):
        raise ValueError(f"cos_pair must lie in [-1, 1], got {cos_pair!r}")
    theta = np.linspace(0.0, math.pi, grid)
    c = np.cos(theta)
    dens = np.sin(theta) ** (d - 2) if d > 2 else np.ones_like(theta)
    dens /= np.trapezoid(dens, theta)
    shift = 1.0 / tau
    e_neg = np.trapezoid(dens * np.exp(c / tau - shift), theta)  # E[e^{c/tau}] e^{-1/tau}
    e_cos = np.trapezoid(dens * np.exp(c / tau - shift) * c, theta)
    e_tan = np.trapezoid(dens * np.exp(c / tau - shift) * (1 - c**2), theta)
    pos = 0.0 if run.loss == "dcl" else math.exp((cos_pair - 1.0) / tau)
    z = pos + (2 * b - 2) * e_neg
    return {"p": pos / z, "qc": (2 * b - 2) * e_cos / z, "s": (2 * b - 2) * e_tan / ((d - 1) * z)}


def collective_edge(run: RunConfig) -> float:
    """Learning rate at which the collective modes (pairs moving together) of an isotropic
    healthy state lose stability under the projected step: claim ``ntxent_batch``'s
    curvature of the other anchors' softmax, ``2 s / tau^2`` with every point moving (the
    positive's attraction does not act on a pair moving rigidly), in the engine's units
    ``eta = 2B * 2 / (2 s / tau^2) = 2B tau^2 / s`` (:func:`isotropic_statistics`); times the
    initial squared norm in the free mode (effective rate). Temperature losses only. A
    diagnostic: :func:`predict_onset` does not use it (the raw step's pair-splitting edge,
    :func:`splitting_edge`, lies at half of it)."""
    if run.loss not in ("ntxent", "supcon", "dcl"):
        return math.nan
    st = isotropic_statistics(run)
    return 2 * run.batch_size * run.temperature**2 / st["s"] * initial_sq_norm(run)

"""What "collapsed" means, and the predicted onset of collapse.

"Collapsed" is :data:`COLLAPSED_RANK` (the complete level of
:mod:`simulate.stability.levels`); the onset of a configuration is the learning rate above
which its runs end collapsed (measured by :func:`simulate.stability.measure.measure_onset`),
predicted by :func:`predict_onset` from the analytic edges alone.
"""

from __future__ import annotations

import math

from ..config import RunConfig
from .edges import attraction_edge, class_attraction_edge
# COLLAPSED_RANK stays importable from here
from .levels import COLLAPSED_RANK, COMPLETE, get_level  # noqa: F401
from .pair_map import escape_edge, mirror_edge
from .step import _check_run


def collapsed(final_rank: float) -> bool:
    """Whether a run whose effective rank at its last step is ``final_rank`` is collapsed
    (:data:`COLLAPSED_RANK`). A diverged run (NaN rank) counts as collapsed: it did not stay
    healthy."""
    return COMPLETE.collapsed(final_rank)


def predict_onset(run: RunConfig) -> float:
    """Predicted learning rate above which training ``run`` ends collapsed
    (:data:`COLLAPSED_RANK`), from the stability analysis alone (no training).

    Collapse needs two things. The collapsed configuration must attract
    (:func:`attraction_edge`; never under the projected steps of the sphere and free modes,
    never with CLOP, which makes it non-stationary). And the run must get there within its
    steps: in the runs the healthy state is left through the pairs, whose two views split
    apart, anti-align (the +-u* pairing) and gather on one line; the collective modes of the
    spread state do not bind. :func:`mirror_edge` is the smallest rate at which a pair,
    starting at the views' initial angle theta0 (:func:`initial_pair_cosine`) and moved by
    the raw step's mean-field pair map (:func:`pair_split_ratio`, isotropic other rows),
    reaches the mirror of that angle, pi - theta0, within the updates a point takes
    (:func:`updates_per_point`). The prediction is the larger of the two edges;
    ``math.inf``: no collapse predicted. (In the free mode the edges would be at
    ``lr = e * |z|^2``, the effective rate times the initial squared norm, and norm growth
    only raises them; the projected step never makes +-u* attract, so the prediction there
    is ``math.inf``.) Losses without a temperature, update modes other than ``sphere_raw``,
    the digits data and sign-flipped views get the attraction edge alone.

    Accuracy (``python -m figures onset``, 1000 steps, 3 seeds; measured brackets are about
    +-5% wide). ``--grid full`` (18 rows): median ``|pred / meas - 1|`` 0.022 (target 0.15),
    14 rows within 15%, 15 within 2x (tau = 0.1 misses: its runs collapse completely only in
    a band of rates). ``--grid heldout`` (13 rows, values the full grid does not use): median
    0.040, 11 within 15%, all 13 within 2x, worst tau = 0.15 (0.79) and B = 16 (0.81). With
    pi/2 (:func:`escape_edge`) in place of the mirror the medians were 0.065 and 0.083; the
    mirror was the one angle tried. Where it is off the prediction is low: the map follows
    the runs' pairs (median pair angle within 13 degrees of it at tau = 0.5, lr 300 and
    5000), but the rank falls only once the anti-aligned pairs' lines merge, which takes a
    further 13 to 17 updates per point far above the edge and is not modelled (lr 1000 to
    5000: mirror reached after 10 to 12 updates per point, rank 1.5 after 25 to 27). So
    short runs, where only such rates collapse in time, are
    missed: at 300 steps (25 updates per point) the full grid gives median 0.11, 11 of 18
    within 2x, the held-out grid 0.33, 7 of 13. Misses at 1000 steps: B = 8 (21 updates per
    point: no run gathers onto one line at any rate) and SupCon (no run collapses completely:
    above the escape edge its runs end at rank about k, 3.7 to 3.9 for k = 4 at 2 to 10
    times the edge, dimensionally collapsed but not on +-u* and not class-collapsed either:
    75 to 83% of the unit rows' spread lies within classes; the pair map leaves out its class
    positives). The sphere and free modes and CLOP agree (no collapse). Nothing here was
    fitted to a grid: the mirror angle is the geometry of the pairing, the initial angle
    comes from the data model, the statistics from an isotropic sphere.
    """
    run = _check_run(run)
    a = attraction_edge(run)
    if not math.isfinite(a):
        return math.inf
    e = mirror_edge(run)
    return a if math.isnan(e) else max(a, e)


def predict_dimensional_onset(run: RunConfig) -> float:
    """Predicted learning rate above which training ``run`` ends dimensionally collapsed
    (:data:`simulate.stability.levels.DIMENSIONAL`: half the reference rank or less), from
    the stability analysis alone; NaN where nothing derived applies ("not predicted").

    Dimensional collapse needs less than complete collapse: the run must leave the healthy
    state within its steps, through its pairs, whose views must reach orthogonality
    (:func:`escape_edge`, the pair map carried to pi/2 instead of the mirror); where the split
    pairs go next (anti-aligned on one line with +-u* attracting, or not) decides whether the
    rank falls to 1 or stays at a few. So the prediction is the escape edge alone,
    ``math.inf`` when the pairs do not split in time. Not predicted (NaN): CLOP (the pair
    map leaves out the prototype pull, which acts on both views of a labelled point),
    and wherever the pair map does not apply (update modes other than ``sphere_raw``, losses
    without a temperature, the digits data, sign-flipped views); there the escape edge is
    NaN. Nothing was fitted: pi/2 is the views' orthogonality.

    Accuracy (``python -m figures onset``, the ``dimensional`` rows; 1000 steps, 3 seeds).
    ``--grid full``: 13 predicted rows, median ``|pred / meas - 1|`` 0.070, 9 within 15%, 12
    within 2x; the miss is B = 8 (21 updates per point: the pairs split in time, but the rank
    falls only once they gather, and it does not within 1000 steps below about 1000 in one
    seed of three). ``--grid heldout``: 12 predicted rows, median 0.061, 11 within 15%, all
    within 2x (worst B = 16, 0.80). The splitting edge (the pairs start to split, however
    many updates) does slightly worse (full 0.098, heldout 0.081), the isotropic collective
    edge much worse (0.86 and 0.87: at tau = 0.1 it is 12x too high). Not predicted: CLOP
    (measured at lambda = 1: 75 on NT-Xent and DCL, against an escape edge of 145 and claim
    anchor_map's edge 4m / lambda = 64; at lambda = 10: 141 to 7400 by seed, median 1339,
    against 145 and 6.4: neither edge is it), and the sphere and free modes (measured:
    none).
    """
    run = _check_run(run)
    if run.clop_weight > 0:
        return math.nan
    return escape_edge(run)


def predict_class_onset(run: RunConfig) -> float:
    """Predicted learning rate above which a SupCon run ends class-collapsed
    (:data:`simulate.stability.levels.CLASS`): the rate above which the class-collapsed
    configuration attracts (:func:`simulate.stability.edges.class_attraction_edge`). NaN
    ("not predicted") for the other losses (they use no labels as positives, and a run
    collapsed onto fewer lines passes the class level's rank test too), with CLOP, update
    modes other than ``sphere_raw`` and k outside ``[2, D + 1]``.

    Measured (``python -m figures onset --grid full``, the SupCon row: half the points
    labelled): the state repels at every rate (its unlabelled points are pushed off the
    vertex they share), so none is predicted, and no run ends at rank k - 1 or below (they
    end at 3.7 to 3.9 for k = 4). With every point labelled the state attracts at every rate
    (0.90 labelled still repels): class collapse is then SupCon's minimiser and its onset a
    matter of steps (1000 steps reach it from lr 3.5 on), which the edge does not predict."""
    run = _check_run(run)
    return class_attraction_edge(run)


def predict_level_onset(run: RunConfig, level="complete") -> float:
    """The predicted onset at ``level`` (a name or a :class:`CollapseLevel`):
    :func:`predict_onset` (complete), :func:`predict_dimensional_onset` (dimensional),
    :func:`predict_class_onset` (class; SupCon only)."""
    name = get_level(level).name
    if name == "complete":
        return predict_onset(run)
    if name == "dimensional":
        return predict_dimensional_onset(run)
    return predict_class_onset(run)

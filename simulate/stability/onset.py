"""What "collapsed" means, and the predicted onset of collapse.

"Collapsed" is :data:`COLLAPSED_RANK`; the onset of a configuration is the learning rate above
which its runs end collapsed (measured by :func:`simulate.stability.measure.measure_onset`),
predicted by :func:`predict_onset` from the analytic edges alone.
"""

from __future__ import annotations

import math

from ..config import RunConfig
from .edges import attraction_edge
from .pair_map import escape_edge
from .step import _check_run

#: A run is *collapsed* when the RankMe effective rank (:func:`simulate.metrics.effective_rank`,
#: over all its 2N embedding rows) at the last of its steps is at or below this value. A
#: configuration on one line (all equal, or +-u*) has rank 1; two equally weighted orthogonal
#: directions have rank 2; 1.5 lies halfway, so a run counts as collapsed only when one
#: direction carries almost all of its spectrum. (metrics.collapse_state, about cosines, is
#: a different, stricter test and is left as it is.)
COLLAPSED_RANK = 1.5


def collapsed(final_rank: float) -> bool:
    """Whether a run whose effective rank at its last step is ``final_rank`` is collapsed
    (:data:`COLLAPSED_RANK`). A diverged run (NaN rank) counts as collapsed: it did not stay
    healthy."""
    return not (final_rank > COLLAPSED_RANK)


def predict_onset(run: RunConfig) -> float:
    """Predicted learning rate above which training ``run`` ends collapsed
    (:data:`COLLAPSED_RANK`), from the stability analysis alone (no training).

    Collapse needs two things. The collapsed configuration must attract
    (:func:`attraction_edge`; never under the projected steps of the sphere and free modes,
    never with CLOP, which makes it non-stationary). And the run must leave the healthy state
    within its steps: in the runs the healthy state is left through its pairs, whose two
    views split apart (then anti-align, the +-u* pairing, and gather on one line); the
    collective modes of the spread state do not bind. :func:`escape_edge` is the smallest
    rate at which a pair, starting at the views' initial angle (:func:`initial_pair_cosine`)
    and moved by the raw step's mean-field pair map (:func:`pair_split_ratio`, isotropic
    other rows), reaches :data:`ESCAPE_ANGLE` within the updates a point takes
    (:func:`updates_per_point`). The prediction is the larger of the two edges;
    ``math.inf``: no collapse predicted. (In the free mode the edges would be at
    ``lr = e * |z|^2``, the effective rate times the initial squared norm, and norm growth
    only raises them; the projected step never makes +-u* attract, so the prediction there
    is ``math.inf``.) Losses without a temperature, update modes other than ``sphere_raw``,
    the digits data and sign-flipped views get the attraction edge alone.

    Accuracy (``python -m figures onset``, 1000 steps, 3 seeds; measured brackets are about
    +-5% wide). ``--grid full`` (18 rows): median ``|pred / meas - 1|`` 0.053 (target 0.15),
    14 rows within 15%, 16 within 2x. ``--grid heldout`` (13 rows, values the full grid does
    not use; run once, after the predictor was fixed): median 0.083, 11 within 15%, all 13
    within 2x, worst B = 16 (0.73) and tau = 0.15 (0.79). Short runs are outside its reach:
    the full grid's rows at 300 steps (25 updates per point, ``--steps 300``) give median
    0.51, 9 of 18 within 2x, with the prediction far below or collapse predicted where none
    is measured. Where it is off at 1000 steps the prediction is low (ratios 0.6 to 0.97
    outside tau <= 0.2): the time the split pairs then need to gather onto one line (about
    20 to 30 updates per point in runs at very large rates, B = 8 to 32, d = 16 and 64) is
    not modelled, and it counts most where the pair map grows slowly (d = 64: 0.61, tau = 1:
    0.79) or a point takes few updates (B = 16). Misses: B = 8 (21 updates per point: the
    pairs split in time, but no run gathers onto one line within 1000 steps at any rate) and
    SupCon (no run collapses: its class positives, which the pair map leaves out, keep the
    classes apart; it ends in class collapse, not on +-u*). The sphere and free modes and
    CLOP agree (no collapse). Nothing here was fitted to a grid: the escape angle pi/2 is the
    views' orthogonality (pi/3 or 2 pi/3 move the full grid's ratios by at most 0.09, at
    d = 64), the initial angle comes from the data model, the statistics from an isotropic
    sphere.
    """
    run = _check_run(run)
    a = attraction_edge(run)
    if not math.isfinite(a):
        return math.inf
    e = escape_edge(run)
    return a if math.isnan(e) else max(a, e)

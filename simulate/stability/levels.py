"""Collapse levels: what "collapsed" means, defined once for the predictor, the measurement,
the onset tables and the figures.

Every level is a test of a run's *final rank*: the RankMe effective rank
(:func:`simulate.metrics.effective_rank`) of all its embedding rows at its last step (the
engine's ``effective_rank`` column; ``repr_effective_rank`` for the representation before a
projector head). A diverged run (NaN rank) counts as collapsed at every level: it did not
stay healthy. The levels are nested where their thresholds are (complete implies dimensional
always, and class for k >= 2).

    complete     rank <= COLLAPSED_RANK (1.5): every row on one line (+-u*) or one point
    dimensional  rank <= max(COLLAPSED_RANK, DIMENSIONAL_FRACTION x reference rank): half or
                 more of the directions the configuration keeps when trained gently are gone
    class        rank <= k - 1 + CLASS_RANK_MARGIN: no more directions than a simplex of the
                 k class means spans (SupCon's class collapse), rank alone

The *reference rank* of a configuration and seed is its final rank when trained at the
*reference rate*: the smallest rate of the onset scan (:func:`simulate.stability.measure_onsets`;
by default ``REFERENCE_RATE_FACTOR x rate_scale``, 0.03 x 2 B tau nu^2, far below every edge:
the smallest splitting edge of the onset grids is 5.5 x 2 B tau). The reference run is the
scan's first point, so it costs nothing, shares the configuration, seed and steps, and
measures what the same training does without the instability: the healthy rank, and slow
drifts of the rank that are not the onset (SupCon's reference ranks are 15.1 to 15.5 where
NT-Xent's are 15.9 to 16, d = 16; an MLP encoder's output may start with a low rank).

Why a fraction of the reference and not of the width D: the healthy rank of a configuration
is not D (an MLP's output, a data set of low intrinsic dimension), and the reference measures
it under the same conditions. Why 0.5: the measured transitions are abrupt, so the fraction
hardly matters. Of 168 runs at 0.3 to 10 times the escape edge (12 configurations of the
full onset grid, seed 0, 1000 steps), 101 ended below 30% of their reference rank, 59 above
90%, and 8 in between (5 of them at B = 8, whose rank declines slowly); at 300 steps 19 of
168 ended in between. One half is the middle of that gap: "half the directions lost". The
threshold never falls below COLLAPSED_RANK, so a completely collapsed run is dimensionally
collapsed whatever its reference (with a reference of rank 3 or less the dimensional level
is the complete one). Not chosen: "also whenever rank <= k - 1": with k >= D (k = 16
classes in d = 16) it would call a healthy run collapsed, and it would mix in the class
level, which has its own test. A NaN reference (the reference run diverged; its scan then
finds the onset at or below the smallest rate anyway) leaves only what collapses under every
reference: rank <= COLLAPSED_RANK.

The class level uses the rank only, because the rank is what the engine logs at every step
for every model (it logs no within-class spread; ``min_class_angle`` measures the angle
between class means, not the spread around them). So it is necessary for class collapse, not
sufficient: SupCon runs above the escape edge (d = 16, k = 4, 1000 steps) end at rank 3.7 to
3.9 with 75 to 83% of the unit rows' spread within classes, which is not class collapse and
does not pass the test either (3.5). It tells class collapse from health only where k - 1 is
well below the healthy rank (k = 4 in d = 16: 3.5 against about 16).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass

#: complete collapse: a run is collapsed when its final rank is at or below this value. A
#: configuration on one line (all equal, or +-u*) has rank 1; two equally weighted orthogonal
#: directions have rank 2; 1.5 lies halfway, so a run counts as collapsed only when one
#: direction carries almost all of its spectrum. (metrics.collapse_state, about cosines, is
#: a different, stricter test and is left as it is.)
COLLAPSED_RANK = 1.5
#: dimensional collapse: the final rank at or below this fraction of the reference rank
DIMENSIONAL_FRACTION = 0.5
#: class collapse: the final rank at or below k - 1 plus this margin (halfway to k)
CLASS_RANK_MARGIN = 0.5
#: the reference rate in units of :func:`simulate.stability.rate_scale` (the default scan's
#: smallest rate; the caller's ``lo`` when the scan range is given)
REFERENCE_RATE_FACTOR = 0.03


@dataclass(frozen=True)
class CollapseLevel(ABC):
    """A collapse level: ``threshold(reference_rank, k)`` is the largest final rank that
    counts as collapsed; ``needs_reference``: the threshold reads the reference rank;
    ``needs_k``: it reads the number of classes."""

    name: str = ""
    description: str = ""
    needs_reference: bool = False
    needs_k: bool = False

    @abstractmethod
    def threshold(self, reference_rank: float = math.nan, k: int | None = None) -> float:
        """The largest final rank that counts as collapsed at this level."""

    def collapsed(self, final_rank: float, reference_rank: float = math.nan,
                  k: int | None = None) -> bool:
        """Whether a run of final rank ``final_rank`` is collapsed at this level (NaN:
        diverged, collapsed)."""
        return not (float(final_rank) > self.threshold(reference_rank, k))


@dataclass(frozen=True)
class CompleteCollapse(CollapseLevel):
    """Final rank <= :data:`COLLAPSED_RANK`: one line or one point."""

    name: str = "complete"
    description: str = f"effective rank <= {COLLAPSED_RANK}"

    def threshold(self, reference_rank: float = math.nan, k: int | None = None) -> float:
        return COLLAPSED_RANK


@dataclass(frozen=True)
class DimensionalCollapse(CollapseLevel):
    """Final rank <= ``max(COLLAPSED_RANK, DIMENSIONAL_FRACTION * reference_rank)``;
    :data:`COLLAPSED_RANK` when the reference is NaN."""

    name: str = "dimensional"
    description: str = (f"effective rank <= max({COLLAPSED_RANK}, {DIMENSIONAL_FRACTION} x the "
                        f"reference rank at {REFERENCE_RATE_FACTOR} x 2B tau)")
    needs_reference: bool = True

    def threshold(self, reference_rank: float = math.nan, k: int | None = None) -> float:
        ref = float(reference_rank)
        if math.isnan(ref):
            return COLLAPSED_RANK
        return max(COLLAPSED_RANK, DIMENSIONAL_FRACTION * ref)


@dataclass(frozen=True)
class ClassCollapse(CollapseLevel):
    """Final rank <= ``k - 1 + CLASS_RANK_MARGIN`` (never below :data:`COLLAPSED_RANK`)."""

    name: str = "class"
    description: str = f"effective rank <= k - 1 + {CLASS_RANK_MARGIN}"
    needs_k: bool = True

    def threshold(self, reference_rank: float = math.nan, k: int | None = None) -> float:
        if k is None or int(k) != k or k < 1:
            raise ValueError(f"k (the number of classes) must be an integer >= 1 for the class "
                             f"level, got {k!r}")
        return max(COLLAPSED_RANK, int(k) - 1 + CLASS_RANK_MARGIN)


COMPLETE = CompleteCollapse()
DIMENSIONAL = DimensionalCollapse()
CLASS = ClassCollapse()
#: level name -> level
LEVELS = {lev.name: lev for lev in (COMPLETE, DIMENSIONAL, CLASS)}


def get_level(level: str | CollapseLevel) -> CollapseLevel:
    """The level named ``level`` (a :class:`CollapseLevel` is returned as it is)."""
    if isinstance(level, CollapseLevel):
        return level
    if level not in LEVELS:
        raise ValueError(f"level must be one of {', '.join(LEVELS)}, got {level!r}")
    return LEVELS[level]


def is_collapsed(final_rank: float, level: str | CollapseLevel = "complete",
                 reference_rank: float = math.nan, k: int | None = None) -> bool:
    """Whether a run of final rank ``final_rank`` is collapsed at ``level``, given the
    configuration's reference rank (dimensional) and number of classes (class)."""
    return get_level(level).collapsed(final_rank, reference_rank, k)

"""Linear stability of the real training step, and the onset of collapse.

    step.py      the training step of free embeddings as a differentiable float64 map
    spectra.py   spectral radius and leading modes of its Jacobian; the free mode's split
    states.py    states to probe (+-u*, reference arrangements); the run's unit of rate
    edges.py     analytic edges: where +-u* attracts, the isotropic state's collective modes
    pair_map.py  the raw step's mean-field map of one pair's angle: splitting and escape edges
    onset.py     what "collapsed" means (COLLAPSED_RANK) and the predicted onset
    measure.py   the measured onset: scans and bisections of the rate, by training
    grids.py     the onset grids and the predicted-against-measured table (figures onset)

The public names are re-exported here. ``DENSE_LIMIT`` is not: :func:`spectrum` reads it from
:mod:`simulate.stability.spectra`, so that is where to change it.
"""

from .edges import attraction_edge, collective_edge, isotropic_statistics
from .grids import FULL_GRID_STEPS, ONSET_BASE, ONSET_GRIDS, onset_grid, onset_ratio, onset_table
from .measure import measure_onset, measure_onsets
from .onset import COLLAPSED_RANK, collapsed, predict_onset
from .pair_map import (
    ESCAPE_ANGLE,
    escape_edge,
    initial_pair_cosine,
    pair_split_ratio,
    splitting_edge,
    training_points,
    updates_per_point,
)
from .spectra import free_mode_split, rotation_modes, spectrum, tangent_projector
from .states import STATE_KINDS, collapsed_state, initial_sq_norm, rate_scale, reference_state
from .step import DT, StepMap, cosine_clop, make_step

__all__ = [
    "COLLAPSED_RANK", "DT", "ESCAPE_ANGLE", "FULL_GRID_STEPS", "ONSET_BASE", "ONSET_GRIDS",
    "STATE_KINDS", "StepMap", "attraction_edge", "collapsed", "collapsed_state",
    "collective_edge", "cosine_clop", "escape_edge", "free_mode_split", "initial_pair_cosine",
    "initial_sq_norm", "isotropic_statistics", "make_step", "measure_onset", "measure_onsets",
    "onset_grid", "onset_ratio", "onset_table", "pair_split_ratio", "predict_onset",
    "rate_scale", "reference_state", "rotation_modes", "spectrum", "splitting_edge",
    "tangent_projector", "training_points", "updates_per_point",
]

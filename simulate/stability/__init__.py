"""Linear stability of the real training step, and the onset of collapse.

    step.py      the training step of free embeddings as a differentiable float64 map
    spectra.py   spectral radius and leading modes of its Jacobian; the free mode's split
    states.py    states to probe (+-u*, reference arrangements); the run's unit of rate
    edges.py     analytic edges: where +-u* attracts, the isotropic state's collective modes
    pair_map.py  the raw step's mean-field map of one pair's angle: splitting, escape, mirror edges
    levels.py    what "collapsed" means: the collapse levels (complete, dimensional, class)
    onset.py     the predicted onset per level (complete: COLLAPSED_RANK; dimensional; class)
    measure.py   the measured onset per level: scans and bisections of the rate, by training
    grids.py     the onset grids and the predicted-against-measured table (figures onset)
    optimizer_onset.py  why momentum, LARS and Adam on free embeddings are out of the pair
                 map's reach (measured)
    curvature.py the Hessian of an MLP encoder's training loss: HVPs, Lanczos, per-layer LARS
    optimizer_edges.py  the optimizers' edges of stability on a quadratic (derived)
    encoder_onset.py    the predicted onset of MLP encoders: the dispatch, and the curvature at
                 initialisation (edge of stability, catapult estimate: reported, not predictions)
    recovery.py  SGD and heavy ball on MLP encoders: the kick rate and the recovery law
    lars_decay.py       LARS: the weight-decay edge, the complete onset (derived)
    lars_overflow.py    LARS without weight decay: the embeddings' float32 overflow, the
                 dimensional onset (derived)
    encoder_grids.py    the encoder onset grids (mlp, mlp-heldout, paper) and their table
    units.py     how many hidden units carry each layer's weights, and how many are dead ReLUs
                 (LARS's dimensional level, measured)

The public names are re-exported here. ``DENSE_LIMIT`` is not: :func:`spectrum` reads it from
:mod:`simulate.stability.spectra`, so that is where to change it.
"""

from .edges import attraction_edge, class_attraction_edge, collective_edge, isotropic_statistics
from .grids import (
    FULL_GRID_STEPS,
    ONSET_BASE,
    ONSET_GRIDS,
    TABLE_LEVELS,
    onset_grid,
    onset_ratio,
    onset_table,
)
from .levels import (
    CLASS,
    CLASS_RANK_MARGIN,
    COLLAPSED_RANK,
    COMPLETE,
    DIMENSIONAL,
    DIMENSIONAL_FRACTION,
    LEVELS,
    REFERENCE_RATE_FACTOR,
    ClassCollapse,
    CollapseLevel,
    CompleteCollapse,
    DimensionalCollapse,
    get_level,
    is_collapsed,
)
from .measure import RANK_METRICS, measure_levels, measure_onset, measure_onsets
from .onset import (collapsed, predict_class_onset, predict_dimensional_onset, predict_level_onset,
                    predict_onset)
from .pair_map import (
    ESCAPE_ANGLE,
    escape_edge,
    initial_pair_cosine,
    mirror_angle,
    mirror_edge,
    pair_split_ratio,
    splitting_edge,
    training_points,
    updates_per_point,
)
from .spectra import free_mode_split, rotation_modes, spectrum, tangent_projector
from .states import (STATE_KINDS, class_collapsed_state, collapsed_state, initial_sq_norm,
                     rate_scale, reference_state)
from .step import DT, StepMap, cosine_clop, make_step

from .curvature import Objective, TopEigen, hessian_top, lanczos_top, lars_top, layer_curvature, make_objective
from .encoder_grids import ENCODER_GRIDS, encoder_grid, encoder_onset_table
from .encoder_onset import CATAPULT_FACTOR, encoder_edges, predict_encoder_onset
from .lars_decay import decay_edge_applies, lars_decay_edge
from .lars_overflow import lars_overflow_onset, overflow_applies
from .recovery import kick_rate, law_applies, predict_recovery_onset, recovery_onsets
from .optimizer_edges import lars_edges, momentum_edge, sgd_edge
from .optimizer_onset import predict_optimizer_onset, why_not_predicted
from .units import dead_units, layer_participation, unit_participation

__all__ = [
    "CATAPULT_FACTOR", "ENCODER_GRIDS", "Objective", "TopEigen", "encoder_edges", "encoder_grid",
    "encoder_onset_table", "hessian_top", "lanczos_top", "lars_edges", "lars_top",
    "layer_curvature", "make_objective", "momentum_edge", "predict_encoder_onset",
    "predict_optimizer_onset", "sgd_edge", "why_not_predicted",
    "decay_edge_applies", "kick_rate", "lars_decay_edge", "law_applies", "predict_recovery_onset",
    "recovery_onsets", "lars_overflow_onset", "overflow_applies", "layer_participation",
    "unit_participation", "dead_units",
    "CLASS", "CLASS_RANK_MARGIN", "COLLAPSED_RANK", "COMPLETE", "DIMENSIONAL",
    "DIMENSIONAL_FRACTION", "DT", "ESCAPE_ANGLE", "FULL_GRID_STEPS", "LEVELS", "ONSET_BASE",
    "ONSET_GRIDS", "RANK_METRICS", "REFERENCE_RATE_FACTOR", "STATE_KINDS", "TABLE_LEVELS",
    "ClassCollapse", "CollapseLevel", "CompleteCollapse", "DimensionalCollapse", "StepMap",
    "attraction_edge", "class_attraction_edge", "class_collapsed_state", "collapsed",
    "collapsed_state", "collective_edge", "cosine_clop", "escape_edge", "free_mode_split",
    "get_level", "initial_pair_cosine", "initial_sq_norm", "is_collapsed", "isotropic_statistics",
    "make_step", "measure_levels", "measure_onset", "measure_onsets", "mirror_angle",
    "mirror_edge", "onset_grid", "onset_ratio", "onset_table", "pair_split_ratio",
    "predict_class_onset", "predict_dimensional_onset", "predict_level_onset", "predict_onset",
    "rate_scale", "reference_state", "rotation_modes", "spectrum", "splitting_edge",
    "tangent_projector",
    "training_points", "updates_per_point",
]

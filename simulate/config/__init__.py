"""Run configurations and sweep specs, by job:

- :mod:`.fields`: :class:`RunConfig`, one run: its fields, their canonical forms and what is
  derived from them (run id, chunk key, the table step's rule, the data's configuration);
- :mod:`.validation`: what each field accepts, as tables of rules (:data:`FIELD_RULES`,
  :data:`CROSS_RULES`), and :class:`SpecError`;
- :mod:`.specs`: spec files (YAML or JSON), presets, and the expansion of a spec into runs.

A *spec* is a mapping from field names to a value or a list of values; every list is a grid
axis (``projector_dims`` aside: a list of widths is one value, a list of lists the axis) and
the runs are the Cartesian product. See :mod:`.specs` for the format.
"""

from .fields import FIELD_NAMES, LAZY_MIN_DECAY, PER_RUN_FIELDS, RunConfig, is_logged, logged_count
from .specs import (PRESET_DIR, _one_line, expand, load_spec, parse_yaml, resolve_spec,
                    resolve_specs)
from .validation import (CROSS_RULES, DATA_SOURCES, DIGITS_DIM, FIELD_RULES, MODELS, OPTIMIZERS,
                         SCHEDULES, SpecError, validate)

__all__ = [
    "CROSS_RULES", "DATA_SOURCES", "DIGITS_DIM", "FIELD_NAMES", "FIELD_RULES", "LAZY_MIN_DECAY",
    "MODELS", "OPTIMIZERS", "PER_RUN_FIELDS", "PRESET_DIR", "RunConfig", "SCHEDULES", "SpecError",
    "expand", "is_logged", "load_spec", "logged_count", "parse_yaml", "resolve_spec",
    "resolve_specs", "validate",
]

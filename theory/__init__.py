"""The large-learning-rate collapse analysis of cosine-similarity contrastive losses.

Every statement is a :class:`Claim` that can be printed, proved in SymPy (``prove()``) and
checked numerically in float64 (``check(seed)``)::

    >>> import theory
    >>> theory.critical_lr("anchor", w=0.5)
    4.0
    >>> sorted(theory.claims())[:3]
    ['anchor_map', 'clop_breaks_collapse', 'norm_growth']

``python -m theory`` prints the table of every claim (``--json``, ``--latex FILE``).
This package imports SymPy, NumPy and SciPy only.
"""

from __future__ import annotations

from . import batch, geometry, offset, clop, maps, ntxent  # noqa: F401  (registers the claims, in report order)
from ._claim import CheckResult, Claim, registry
from .bounds import CRITICAL_KINDS, MAP_KINDS, critical_lr, critical_lr_expr, ntxent_p_pos, step_map
from .clop import clop_gradient_floor
from .maps import anchor_cycle_angle

__all__ = [
    "CRITICAL_KINDS",
    "MAP_KINDS",
    "CheckResult",
    "Claim",
    "anchor_cycle_angle",
    "claim",
    "claims",
    "clop_gradient_floor",
    "critical_lr",
    "critical_lr_expr",
    "ntxent_p_pos",
    "step_map",
]


def claims() -> dict[str, Claim]:
    """The registry: claim name -> :class:`Claim`, in report order."""
    return dict(registry())


def claim(name: str) -> Claim:
    """One claim by name; ``ValueError`` naming the accepted names otherwise."""
    reg = registry()
    if name not in reg:
        raise ValueError(f"name must be one of {', '.join(reg)}; got {name!r}")
    return reg[name]

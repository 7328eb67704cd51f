"""Figures of clop-lab: one registry, one command (``python -m figures``)."""

from . import sim_figures, theory_figures  # noqa: F401  (register the figures)
from .registry import FIGURES, Figure, Table, write, write_index

__all__ = ["FIGURES", "Figure", "Table", "write", "write_index"]

"""Figures of clop-lab: one registry, one command (``python -m figures``).

The registry (and with it numpy, sympy, pandas and matplotlib) is imported on first use of a
name below, not on ``import figures``: ``python -m figures`` imports this package before its
``__main__`` runs, and a Ctrl-C during those imports must end as one line, not a traceback."""

__all__ = ["FIGURES", "Figure", "Table", "write", "write_index"]


def __getattr__(name: str):
    if name in __all__:
        from . import registry, sim_figures, theory_figures  # noqa: F401  (register the figures)

        return getattr(registry, name)
    raise AttributeError(f"module 'figures' has no attribute {name!r}")

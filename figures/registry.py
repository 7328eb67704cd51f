"""The figure registry: one entry per figure, built by ``python -m figures``."""

from __future__ import annotations

import csv
import hashlib
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


@dataclass(frozen=True)
class Table:
    """The plotted numbers of a figure: column names and rows (written as CSV)."""

    columns: tuple[str, ...]
    rows: list[tuple]

    def to_csv(self) -> str:
        buf = io.StringIO()
        wr = csv.writer(buf, lineterminator="\n")
        wr.writerow(self.columns)
        wr.writerows(self.rows)
        return buf.getvalue()


@dataclass(frozen=True)
class Figure:
    """A registered figure.

    Attributes:
        id: file stem and ``--only`` key.
        title: one line.
        caption: what the figure shows, for ``INDEX.md``.
        preset: sweep preset the figure reads (``None`` for figures drawn from theory alone).
        build: returns the matplotlib figure and the table of plotted numbers.
    """

    id: str
    title: str
    caption: str
    preset: str | None
    build: Callable[[], tuple[plt.Figure, Table]]


FIGURES: dict[str, Figure] = {}


def register(fig: Figure) -> Figure:
    if fig.id in FIGURES:
        raise ValueError(f"figure id {fig.id!r} registered twice")
    FIGURES[fig.id] = fig
    return fig


def write(fig_entry: Figure, out: Path) -> dict:
    """Build one figure; write PNG, PDF and CSV into ``out``; return its index record."""
    out.mkdir(parents=True, exist_ok=True)
    fig, table = fig_entry.build()
    try:
        fig.savefig(out / f"{fig_entry.id}.png", dpi=130, bbox_inches="tight")
        fig.savefig(out / f"{fig_entry.id}.pdf", bbox_inches="tight")
    finally:
        plt.close(fig)
    data = table.to_csv()
    (out / f"{fig_entry.id}.csv").write_text(data)
    return {
        "id": fig_entry.id,
        "title": fig_entry.title,
        "caption": fig_entry.caption,
        "data_sha256": hashlib.sha256(data.encode()).hexdigest()[:16],
    }


def write_index(records: list[dict], out: Path, command: str) -> Path:
    lines = ["# Figures", "", f"Made by `{command}`.", ""]
    for r in records:
        lines += [
            f"## {r['id']}: {r['title']}",
            "",
            f"![{r['id']}]({r['id']}.png)",
            "",
            r["caption"],
            "",
            f"Files: `{r['id']}.png`, `{r['id']}.pdf`, `{r['id']}.csv` (data sha256 "
            f"`{r['data_sha256']}`).",
            "",
        ]
    path = out / "INDEX.md"
    path.write_text("\n".join(lines))
    return path

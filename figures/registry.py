"""The figure registry: one entry per figure, built by ``python -m figures``.

No matplotlib backend is chosen on import: the command-line entry points choose Agg, and a
notebook kernel keeps its inline backend.
"""

from __future__ import annotations

import csv
import hashlib
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import matplotlib.pyplot as plt


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
        preset_sweeps: the sweeps of the preset (``quick`` or ``paper``) the figure reads; empty
            for figures drawn from theory and small direct simulations alone.
        build: ``build(data)`` with ``data`` mapping sweep name to its results table (and
            ``"<sweep>:embeddings"`` to saved embeddings); returns the figure and the table of
            plotted numbers.
    """

    id: str
    title: str
    caption: str
    preset_sweeps: tuple[str, ...]
    build: Callable[[dict], tuple[plt.Figure, Table]]


FIGURES: dict[str, Figure] = {}


def register(fig: Figure) -> Figure:
    if fig.id in FIGURES:
        raise ValueError(f"figure id {fig.id!r} registered twice")
    FIGURES[fig.id] = fig
    return fig


def write(fig_entry: Figure, out: Path, data: dict | None = None, data_hash: str | None = None) -> dict:
    """Build one figure; write PNG, PDF and CSV into ``out`` (each whole or not at all: written
    beside, then renamed); return its index record."""
    from simulate.store import atomic_write_bytes

    out.mkdir(parents=True, exist_ok=True)
    fig, table = fig_entry.build(data or {})
    png, pdf = io.BytesIO(), io.BytesIO()
    try:
        fig.savefig(png, format="png", dpi=130, bbox_inches="tight")
        fig.savefig(pdf, format="pdf", bbox_inches="tight")
    finally:
        plt.close(fig)
    csv_text = table.to_csv()
    # each file whole or not at all (an interrupted run leaves no half-written file)
    for ext, blob in (("png", png.getvalue()), ("pdf", pdf.getvalue()), ("csv", csv_text.encode())):
        atomic_write_bytes(out / f"{fig_entry.id}.{ext}", blob)
    csv_hash = hashlib.sha256(csv_text.encode()).hexdigest()[:16]
    return {
        "id": fig_entry.id,
        "title": fig_entry.title,
        "caption": fig_entry.caption,
        "data_sha256": data_hash or csv_hash,
        "csv_sha256": csv_hash,
        "sweeps": ", ".join(fig_entry.preset_sweeps) or "none (theory and direct simulation)",
    }


def write_index(records: list[dict], out: Path, command: str) -> Path:
    """Merge ``records`` into ``out/index.json`` (one record per figure, in registry order)
    and write ``out/INDEX.md`` from it (each file whole or not at all). The read, merge and
    write hold ``out/.index.lock``, so runs writing into the same folder at once keep each
    other's records."""
    from filelock import FileLock

    out.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out / INDEX_LOCK_NAME)):
        return _merge_index(records, out, command)


#: the lock file in a figure folder held while its index is read, merged and written
INDEX_LOCK_NAME = ".index.lock"


def _merge_index(records: list[dict], out: Path, command: str) -> Path:
    """:func:`write_index`'s read, merge and write (the caller holds the folder's index lock)."""
    import json

    from simulate.store import atomic_write_bytes

    store = out / "index.json"
    known = {r["id"]: r for r in json.loads(store.read_text())} if store.exists() else {}
    for r in records:
        known[r["id"]] = {**r, "command": command}
    order = list(FIGURES) + [i for i in known if i not in FIGURES]
    merged = [known[i] for i in order if i in known]
    atomic_write_bytes(store, json.dumps(merged, indent=2).encode())
    lines = ["# Figures", "", "Regenerate with `make figures` (or the command given per figure).", ""]
    for r in merged:
        lines += [
            f"## {r['id']}: {r['title']}",
            "",
            f"![{r['id']}]({r['id']}.png)",
            "",
            r["caption"],
            "",
            f"Made by `{r['command']}`. Files: `{r['id']}.png`, `{r['id']}.pdf`, `{r['id']}.csv`. "
            f"Sweeps: {r['sweeps']}. Data sha256 `{r['data_sha256']}`, plotted numbers sha256 "
            f"`{r['csv_sha256']}`.",
            "",
        ]
    path = out / "INDEX.md"
    atomic_write_bytes(path, "\n".join(lines).encode())
    return path

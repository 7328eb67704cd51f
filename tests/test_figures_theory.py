"""The theory figures build, write their files and index."""

import csv

import pytest

from figures import FIGURES
from figures.__main__ import main


@pytest.mark.parametrize("fid", ["maps", "ntxent_critical_lr"])
def test_theory_figure_axes(fid):
    fig, table = FIGURES[fid].build()
    axes = fig.get_axes()
    assert axes and all(ax.get_xlabel() for ax in axes)
    assert table.rows and len(table.columns) == len(table.rows[0])


def test_cli_writes_png_pdf_csv_and_index(tmp_path):
    assert main(["--only", "maps", "--out", str(tmp_path)]) == 0
    for ext in ("png", "pdf", "csv"):
        assert (tmp_path / f"maps.{ext}").stat().st_size > 0
    rows = list(csv.reader((tmp_path / "maps.csv").open()))
    assert rows[0] == ["map", "eta_w", "step", "value"] and len(rows) > 10
    index = (tmp_path / "INDEX.md").read_text()
    assert "maps" in index and "sha256" in index and "python -m figures --only maps" in index


def test_cli_rejects_unknown_id(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["--only", "nope", "--out", str(tmp_path)])
    assert "--only" in capsys.readouterr().err

"""Every figure builds from a tiny results table; the CLI and agreement run (notebooks: test_notebooks)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import matplotlib
import pytest

from figures import FIGURES
from figures.__main__ import load_data
from simulate.config import resolve_specs

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def _shrink(spec: dict) -> dict:
    """The quick preset's sweep at toy size: two values per axis, a few steps."""
    out = {k: (v[:2] if isinstance(v, list) and k != "loss" else v) for k, v in spec.items()}
    out.update(steps=4, log_every=2, hidden=8, per_class=max(12, 0), seed=0)
    if "batch_size" in spec and isinstance(spec["batch_size"], list):
        out["batch_size"] = [4, 8]
    else:
        out["batch_size"] = 8
    return out


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    specs = {name: _shrink(s) for name, s in resolve_specs("quick").items()}
    root = tmp_path_factory.mktemp("tiny")
    spec_file = root / "tiny.json"
    spec_file.write_text(json.dumps({"sweeps": specs}))
    data, _ = load_data(str(spec_file), set(specs), root / "results", "cpu", quiet=True)
    return data


EXPECT = {
    "lr_regimes": ("learning rate", ["NT-Xent", "NT-Xent + CLOP", "Barlow Twins + CLOP", "chance"]),
    "paper_lr_regimes": ("learning rate", ["NT-Xent", "NT-Xent + CLOP", "chance"]),
    "variance_vs_lr": ("learning rate", ["VICReg", "VICReg + CLOP"]),
    "toy_3d": (None, []),
    "batch_size": ("batch size", ["NT-Xent", "NT-Xent + CLOP"]),
    "label_fraction": ("labelled fraction", ["NT-Xent + CLOP", "NT-Xent (no CLOP, labels unused)"]),
    "trajectories_vs_bound": ("step", [r"$\eta = 0.5\,\eta_c$", r"$\eta = 2.0\,\eta_c$"]),
    "phase_diagram": ("learning rate", [r"$\eta_c(\tau)$, claim rank1_cycle (n = B)"]),
    "norm_growth": ("step", [r"simulated, $\eta$ = 0.3"]),
    "etf_vs_orthonormal": ("learning rate", ["CLOP, orthonormal prototypes", "CLOP, simplex prototypes"]),
    "maps": (r"$\theta$", [r"period-2 orbit $\pm\theta^*$"]),
    "ntxent_critical_lr": ("temperature", ["N = 8 pairs", "n = 3 per side"]),
}


def test_every_registered_figure_is_tested():
    assert set(EXPECT) == set(FIGURES)


@pytest.mark.parametrize("fid", sorted(EXPECT))
def test_figure_builds_with_axes_and_legend(fid, tiny_data):
    fig, table = FIGURES[fid].build(tiny_data)
    try:
        axes = fig.get_axes()
        assert axes and table.rows and len(table.columns) == len(table.rows[0])
        xlabel, legend = EXPECT[fid]
        if xlabel:
            assert any(xlabel in ax.get_xlabel() for ax in axes)
        texts = {t.get_text() for ax in axes if ax.get_legend() for t in ax.get_legend().get_texts()}
        assert set(legend) <= texts, texts
        if fid == "toy_3d":
            assert len(axes) == 10 and all(ax.name == "3d" for ax in axes)
    finally:
        matplotlib.pyplot.close(fig)


def test_figures_cli_only_maps(tmp_path):
    done = subprocess.run([sys.executable, "-m", "figures", "--only", "maps", "--out", str(tmp_path)],
                          capture_output=True, text=True, env=ENV, timeout=300)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "maps.png").exists() and (tmp_path / "maps.pdf").exists()
    index = (tmp_path / "INDEX.md").read_text()
    assert "python -m figures --only maps" in index and "sha256" in index


def test_index_merges_records(tmp_path):
    from figures.registry import write, write_index

    r1 = write(FIGURES["maps"], tmp_path)
    write_index([r1], tmp_path, "first")
    r2 = write(FIGURES["norm_growth"], tmp_path)
    write_index([r2], tmp_path, "second")
    index = (tmp_path / "INDEX.md").read_text()
    assert "## maps" in index and "## norm_growth" in index and "`first`" in index


def test_agreement_small_within_five_percent():
    done = subprocess.run([sys.executable, "-m", "figures", "agreement", "--small"], capture_output=True,
                          text=True, env=ENV, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = json.loads(done.stdout.strip().splitlines()[-1])
    assert {r["claim"] for r in rows} == {"anchor_map", "pair_map", "ntxent_pair", "rank1_cycle"}
    assert all(r["rel_error"] <= 0.05 for r in rows)


@pytest.mark.parametrize("widen", [False, True])
def test_variance_vs_lr_draws_the_recovery_laws_onsets_where_its_table_says(tiny_data, widen):
    """The rank panel's vertical lines are the table's predicted onsets (NT-Xent, each level,
    with and without CLOP), drawn where they fall inside the swept rates and written in the
    panel's note otherwise (``widen``: the same runs copied to lr 1e6, so that the swept range
    holds the onsets)."""
    import math

    import pandas as pd

    data = dict(tiny_data)
    if widen:
        far = data["lr"].copy()
        far["lr"] = 1e6
        far["run_id"] = far["run_id"].astype(str) + "-far"
        data["lr"] = pd.concat([data["lr"], far], ignore_index=True)
    fig, table = FIGURES["variance_vs_lr"].build(data)
    try:
        pred = [r for r in table.rows if r[0] == "predicted_onset"]
        clops = {r[2] for r in pred}
        assert {r[1] for r in pred} == {"ntxent:complete", "ntxent:dimensional"} and len(pred) == 2 * len(clops)
        ax = fig.axes[1]
        lines = {round(line.get_xdata()[0], 9) for line in ax.get_lines() if "recovery law" in str(line.get_label())}
        lrs = sorted({r[3] for r in table.rows if r[0] == "effective_rank"})
        inside = {round(r[3], 9) for r in pred if math.isfinite(r[3]) and lrs[0] <= r[3] <= lrs[-1]}
        assert lines == inside
        outside = [r for r in pred if not (math.isfinite(r[3]) and lrs[0] <= r[3] <= lrs[-1])]
        note = " ".join(t.get_text() for t in ax.texts)
        assert all(r[1].split(":")[1] in note for r in outside)
        if widen:
            assert lines, "no onset drawn inside a range that holds them"
    finally:
        import matplotlib.pyplot as plt

        plt.close(fig)



@pytest.mark.parametrize("widen", [False, True])
def test_paper_lr_regimes_draws_the_weight_decay_edge_on_the_projections_rank(tiny_data, widen):
    """The projections' rank panels mark LARS's weight-decay edge, 2 (1 + mu) / trust at the
    schedule's peak rate (written out here), inside the swept rates, and write it in the
    panel's note outside them (``widen``: the runs copied to lr 1e6)."""
    import math

    import pandas as pd

    data = dict(tiny_data)
    if widen:
        for key in ("paper_mixture", "paper_digits"):
            far = data[key].copy()
            far["lr"] = 1e6
            far["run_id"] = far["run_id"].astype(str) + "-far"
            data[key] = pd.concat([data[key], far], ignore_index=True)
    fig, table = FIGURES["paper_lr_regimes"].build(data)
    try:
        for key, ax in (("paper_mixture", fig.axes[3]), ("paper_digits", fig.axes[7])):
            r = data[key].iloc[0]
            peak = r["steps"] / r["warmup_steps"] if r["warmup_steps"] > r["steps"] else 1.0
            want = 2 * (1 + r["momentum"]) / (r["lars_trust"] * peak)
            pred = [row for row in table.rows if row[0] == key and row[1] == "predicted_complete_onset"]
            assert len(pred) == len(set(data[key]["clop_weight"]))
            assert all(row[4] == pytest.approx(want, rel=1e-12) for row in pred)
            lines = [line.get_xdata()[0] for line in ax.get_lines() if "weight-decay edge" in str(line.get_label())]
            note = " ".join(t.get_text() for t in ax.texts)
            lo, hi = data[key]["lr"].min(), data[key]["lr"].max()
            if lo <= want <= hi:
                assert widen and len(lines) == len(pred) and all(x == pytest.approx(want) for x in lines)
            else:
                assert not lines and f"{want:.3g}" in note and not math.isnan(want)
    finally:
        import matplotlib.pyplot as plt

        plt.close(fig)

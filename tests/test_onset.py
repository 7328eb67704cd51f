"""Onset of collapse: the attraction edge against claim rank1_cycle, the isotropic statistics
against Monte Carlo, measured brackets against the engine run at their ends, and the
`figures onset` command's errors."""

import math

import numpy as np
import pytest
import torch

import theory
from simulate import stability as S
from simulate.config import RunConfig
from simulate.engine import train_chunk
from simulate.metrics import effective_rank

TINY = dict(model="free", update_mode="sphere_raw", loss="ntxent", batch_size=16, k=2, d=3,
            per_class=8, holdout_fraction=0.0, steps=100, log_every=100, temperature=0.2)


def test_collapsed_is_the_rank_threshold():
    line = torch.zeros(8, 3, dtype=torch.float64)
    line[::2, 0], line[1::2, 0] = 1.0, -1.0
    spread = torch.randn(64, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    assert S.collapsed(float(effective_rank(line)[0]))
    assert not S.collapsed(float(effective_rank(spread)[0]))
    assert S.collapsed(math.nan)  # a diverged run did not stay healthy


@pytest.mark.parametrize("tau, b", [(0.3, 4), (0.5, 6)])
def test_attraction_edge_reproduces_rank1_cycle(tau, b):
    """The bisection on the stability module's two-step spectrum (forced by lo/hi) finds
    2B times the claim's rate, to its tolerance."""
    run = RunConfig(**{**TINY, "temperature": tau, "batch_size": b})
    claim = 2 * b * theory.critical_lr("rank1_cycle", tau=tau, n=b)
    found = S.attraction_edge(run, lo=0.05 * claim, hi=20 * claim, rel_tol=1e-4)
    assert found == pytest.approx(claim, rel=2e-4)


def test_projected_steps_and_clop_never_attract():
    assert S.attraction_edge(RunConfig(**{**TINY, "update_mode": "sphere", "batch_size": 4})) == math.inf
    assert S.attraction_edge(RunConfig(**{**TINY, "clop_weight": 1.0, "batch_size": 4})) == math.inf
    assert S.predict_onset(RunConfig(**{**TINY, "update_mode": "sphere", "batch_size": 4})) == math.inf


def test_isotropic_statistics_against_monte_carlo():
    run = RunConfig(**{**TINY, "d": 5, "temperature": 0.4, "batch_size": 8})
    st = S.isotropic_statistics(run)
    g = np.random.default_rng(0)
    x = g.standard_normal((400000, 5))
    c = x[:, 0] / np.linalg.norm(x, axis=1)
    e_neg, e_tan = np.mean(np.exp((c - 1) / 0.4)), np.mean(np.exp((c - 1) / 0.4) * (1 - c**2))
    z = 1 + 14 * e_neg
    assert st["p"] == pytest.approx(1 / z, rel=5e-3)
    assert st["s"] == pytest.approx(14 * e_tan / (4 * z), rel=5e-3)


def test_measured_bracket_against_the_engine():
    """Each seed's final bracket: the engine at its lower end stays healthy, at its upper end
    collapses."""
    run = RunConfig(**TINY)
    res = S.measure_onset(run, seeds=(0,), lo=1.0, hi=100.0, points=3, rounds=2)
    (lo, hi), = res["brackets"]
    assert 0 < lo < hi < math.inf
    assert res["onset"] == pytest.approx(math.sqrt(lo * hi))
    rows = train_chunk([run.__class__(**{**TINY, "lr": lo}), run.__class__(**{**TINY, "lr": hi})]).rows
    last = {r["run_id"]: r["effective_rank"] for r in rows if r["step"] == TINY["steps"]}
    ranks = list(last.values())
    assert ranks[0] > S.COLLAPSED_RANK >= ranks[1]


@pytest.mark.parametrize("args, word", [
    (["--grid", "huge"], "--grid"),
    (["--steps", "0"], "--steps"),
    (["--device", "tpu"], "--device"),
    (["--nope"], "unrecognized"),
])
def test_onset_command_refuses_bad_flags(args, word, capsys):
    from figures.__main__ import main

    with pytest.raises(SystemExit) as exc:
        main(["onset", *args])
    assert exc.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and word in lines[0]


def test_bad_input_names_the_parameter():
    with pytest.raises(ValueError, match=r"\bgrid\b"):
        S.onset_grid("huge")
    with pytest.raises(ValueError, match=r"\bseeds\b"):
        S.measure_onset(RunConfig(**TINY), seeds=())
    with pytest.raises(ValueError, match=r"\bpoints\b"):
        S.measure_onset(RunConfig(**TINY), points=1)

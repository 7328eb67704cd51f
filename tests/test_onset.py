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


# ---------------------------------------------------------------- the escape edge (pair map)

RAW = dict(TINY, batch_size=48, d=8, per_class=32, temperature=0.5)


def test_pair_statistics_against_monte_carlo_with_a_split_pair():
    """p, qc and s with the positive at cosine 0.7 against a Monte Carlo average over the
    sphere (a sum over 2B - 2 other rows weighted by e^{c/tau})."""
    run = RunConfig(**{**TINY, "d": 5, "temperature": 0.4, "batch_size": 8})
    st = S.isotropic_statistics(run, cos_pair=0.7)
    g = np.random.default_rng(1)
    x = g.standard_normal((400000, 5))
    c = x[:, 0] / np.linalg.norm(x, axis=1)
    w = np.exp((c - 1) / 0.4)
    pos = math.exp((0.7 - 1) / 0.4)
    z = pos + 14 * w.mean()
    assert st["p"] == pytest.approx(pos / z, rel=5e-3)
    assert st["qc"] == pytest.approx(14 * (w * c).mean() / z, rel=1e-2)
    assert st["s"] == pytest.approx(14 * (w * (1 - c**2)).mean() / (4 * z), rel=5e-3)


def test_splitting_edge_of_aligned_pairs_is_half_the_collective_edge():
    """At cos_pair = 1 the splitting edge 2B tau / (2 qc) and the collective edge
    2B tau^2 / s come from different integrals (of e^{c/tau} c and of e^{c/tau}(1 - c^2));
    on the sphere qc = s / tau, so the first is half the second."""
    for tau, d in [(0.2, 16), (0.5, 4), (1.0, 32)]:
        run = RunConfig(**{**RAW, "temperature": tau, "d": d})
        assert S.splitting_edge(run, cos_pair=1.0) == pytest.approx(S.collective_edge(run) / 2, rel=1e-4)


@pytest.mark.parametrize("loss, theta, beta, wd", [("ntxent", 0.6, 3.0, 0.0), ("ntxent", 0.3, 8.0, 0.0),
                                                    ("dcl", 0.6, 3.0, 0.0), ("ntxent", 0.6, 3.0, 4e-3)])
def test_pair_split_ratio_against_the_literal_step(loss, theta, beta, wd):
    """The mean-field pair map against the literal raw step (make_step, the run's loss) of a
    pair at angle theta among B - 1 aligned pairs at random positions, tan(theta'/2) /
    tan(theta/2) averaged over 64 draws, within 3 standard errors; with weight decay
    (lr wd = 0.58 here) as well."""
    b, d = RAW["batch_size"], RAW["d"]
    run = RunConfig(**{**RAW, "loss": loss, "weight_decay": wd})
    step = S.make_step(run, lr=beta * 2 * b * run.temperature)
    g = torch.Generator().manual_seed(1)
    ratios = []
    for _ in range(64):
        u = torch.randn(b, d, generator=g, dtype=torch.float64)
        u /= u.norm(dim=1, keepdim=True)
        e = torch.randn(d, generator=g, dtype=torch.float64)
        e -= (e @ u[0]) * u[0]
        e /= e.norm()
        z = torch.cat([u, u])
        z[0] = math.cos(theta / 2) * u[0] + math.sin(theta / 2) * e
        z[b] = math.cos(theta / 2) * u[0] - math.sin(theta / 2) * e
        new = step(z)
        th = math.acos(max(-1.0, min(1.0, float(new[0] @ new[b]))))
        ratios.append(math.tan(th / 2) / math.tan(theta / 2))
    mc, se = np.mean(ratios), np.std(ratios) / math.sqrt(len(ratios))
    assert abs(S.pair_split_ratio(run, beta, math.cos(theta)) - mc) < 3 * se


def test_escape_edge_against_the_closed_form_for_dcl():
    """DCL leaves the positive out of the denominator, so the ratio does not depend on the
    angle: r = (2 beta (qc + 1) - 1) / (1 + 2 beta (1 - qc)) and the pair reaches pi/2 from
    theta0 in n updates iff r^n >= 1 / tan(theta0 / 2), a closed form for the rate."""
    run = RunConfig(**{**RAW, "loss": "dcl", "steps": 300})
    n = math.floor(S.updates_per_point(run))
    theta0 = math.acos(S.initial_pair_cosine(run))
    qc = S.isotropic_statistics(run)["qc"]
    r = math.tan(theta0 / 2) ** (-1.0 / n)
    beta = (1 + r) / (2 * (qc + 1) - 2 * r * (1 - qc))
    assert S.escape_edge(run, rel_tol=1e-7) == pytest.approx(beta * 2 * 48 * 0.5, rel=1e-5)
    # too few updates: even the largest rates, ratio (qc + 1) / (1 - qc), do not split in time
    short = RunConfig(**{**RAW, "loss": "dcl", "steps": 2})
    assert math.floor(S.updates_per_point(short)) == 1
    assert ((qc + 1) / (1 - qc)) * math.tan(theta0 / 2) < 1
    assert S.escape_edge(short) == math.inf


def test_initial_pair_cosine_and_training_points_against_the_engine_state():
    from simulate.engine.state import build_state

    run = RunConfig(**{**RAW, "d": 16, "per_class": 64, "holdout_fraction": 0.25})
    w = build_state([run], "cpu", torch.float64).model.weight[0].detach()
    n = w.shape[0] // 2
    assert S.training_points(run) == n == 96
    cos = torch.nn.functional.cosine_similarity(w[:n], w[n:], dim=-1)
    assert S.initial_pair_cosine(run) == pytest.approx(float(cos.mean()), abs=0.03)


def test_predict_onset_is_the_larger_edge():
    run = RunConfig(**{**RAW, "steps": 300})
    a, e = S.attraction_edge(run), S.escape_edge(run)
    assert math.isfinite(a) and math.isfinite(e)
    assert S.predict_onset(run) == max(a, e)
    assert math.isnan(S.escape_edge(RunConfig(**{**RAW, "update_mode": "sphere"})))
    # views flipped to opposite sides: the initial pair angle is not the data model's
    assert math.isnan(S.escape_edge(RunConfig(**{**RAW, "sign_flip": True})))


def test_heldout_grid_shares_no_configuration_with_the_full_grid():
    keys = ("loss", "update_mode", "temperature", "batch_size", "d", "k", "clop_weight",
            "aug_sigma", "init_norm")
    full = {tuple(getattr(r, k) for k in keys) for _, r in S.onset_grid("full")}
    held = S.onset_grid("heldout")
    assert len(held) >= 10 and all(r.steps == S.FULL_GRID_STEPS for _, r in held)
    assert not full & {tuple(getattr(r, k) for k in keys) for _, r in held}

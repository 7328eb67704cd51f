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


def test_mirror_edge_against_the_closed_form_for_dcl():
    """DCL's ratio r does not depend on the angle, so the pair reaches the mirror of its
    initial angle, pi - theta0, in n updates iff r^n >= tan((pi - theta0) / 2) / tan(theta0 / 2)
    = tan(theta0 / 2)^-2: the escape edge's closed form with the exponent doubled."""
    run = RunConfig(**{**RAW, "loss": "dcl", "steps": 300})
    n = math.floor(S.updates_per_point(run))
    theta0 = math.acos(S.initial_pair_cosine(run))
    assert S.mirror_angle(theta0) == pytest.approx(math.pi - theta0)
    qc = S.isotropic_statistics(run)["qc"]
    r = math.tan(theta0 / 2) ** (-2.0 / n)
    beta = (1 + r) / (2 * (qc + 1) - 2 * r * (1 - qc))
    assert S.mirror_edge(run, rel_tol=1e-7) == pytest.approx(beta * 2 * 48 * 0.5, rel=1e-5)
    assert S.mirror_edge(run) > S.escape_edge(run)


def test_mirror_edge_against_a_vector_iteration_of_the_pair():
    """NT-Xent (the weights p and qc change with the angle): two unit vectors at the views'
    initial angle, moved by z_i' = (1 - 2 beta qc) z_i + 2 beta (1 - p) z_p (both views at
    once) and renormalised, update by update; 0.5% above the mirror edge the pair reaches
    pi - theta0 within the run's updates per point, 0.5% below it does not."""
    run = RunConfig(**{**RAW, "steps": 300})
    n = math.floor(S.updates_per_point(run))
    theta0 = math.acos(S.initial_pair_cosine(run))
    st1 = S.isotropic_statistics(run)

    def reaches(lr):
        beta = lr / (2 * run.batch_size * run.temperature)
        a = np.array([math.cos(theta0 / 2), math.sin(theta0 / 2)])
        b = np.array([math.cos(theta0 / 2), -math.sin(theta0 / 2)])
        for _ in range(n):
            c = float(a @ b)
            st = S.isotropic_statistics(run, cos_pair=c)
            a, b = ((1 - 2 * beta * st["qc"]) * a + 2 * beta * (1 - st["p"]) * b,
                    (1 - 2 * beta * st["qc"]) * b + 2 * beta * (1 - st["p"]) * a)
            a, b = a / np.linalg.norm(a), b / np.linalg.norm(b)
            if math.acos(max(-1.0, min(1.0, float(a @ b)))) >= math.pi - theta0:
                return True
        return False

    edge = S.mirror_edge(run)
    assert st1["p"] > 0 and math.isfinite(edge)
    assert reaches(edge * 1.005) and not reaches(edge * 0.995)


def test_initial_pair_cosine_and_training_points_against_the_engine_state():
    from simulate.engine.state import build_state

    run = RunConfig(**{**RAW, "d": 16, "per_class": 64, "holdout_fraction": 0.25})
    w = build_state([run], "cpu", torch.float64).model.weight[0].detach()
    n = w.shape[0] // 2
    assert S.training_points(run) == n == 96
    cos = torch.nn.functional.cosine_similarity(w[:n], w[n:], dim=-1)
    assert S.initial_pair_cosine(run) == pytest.approx(float(cos.mean()), abs=0.03)


def test_predict_onset_is_the_larger_edge():
    """Complete collapse: the larger of the +-u* attraction edge and the pairs' mirror edge
    (the escape edge alone is the dimensional prediction)."""
    run = RunConfig(**{**RAW, "steps": 300})
    a, m = S.attraction_edge(run), S.mirror_edge(run)
    assert math.isfinite(a) and math.isfinite(m) and m > S.escape_edge(run)
    assert S.predict_onset(run) == max(a, m)
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


# ---------------------------------------------------------------- collapse levels

#: CLOP pulls labelled points to 4 prototypes: the rank falls from about 8 to about 2, never
#: to 1 (dimensional collapse without complete collapse)
PARTIAL = dict(TINY, d=8, k=4, per_class=4, clop_weight=1.0)


def _final_ranks(runs):
    rows = train_chunk(runs).rows
    last = {r["run_id"]: r["effective_rank"] for r in rows if r["step"] == runs[0].steps}
    return [last[r.run_id] for r in runs]


def test_dimensional_bracket_against_the_engine():
    """The dimensional level's bracket: at its lower end the engine keeps more than half the
    reference rank (the rank at the scan's smallest rate), at its upper end it does not; the
    complete level finds no onset on the same scan."""
    run = RunConfig(**PARTIAL)
    comp, dim = S.measure_levels([run], ("complete", "dimensional"), seeds=(0,), lo=1.0,
                                 hi=300.0, points=4, rounds=2)
    assert comp[0]["onset"] == math.inf and comp[0]["level"] == "complete"
    (lo, hi), = dim[0]["brackets"]
    assert 0 < lo < hi < math.inf and dim[0]["level"] == "dimensional"
    ref, = dim[0]["reference_rank"]
    assert ref == comp[0]["reference_rank"][0] > 6
    at_ref, at_lo, at_hi = _final_ranks([RunConfig(**{**PARTIAL, "lr": v}) for v in (1.0, lo, hi)])
    assert at_ref == ref
    assert at_lo > S.DIMENSIONAL_FRACTION * ref >= at_hi > S.COLLAPSED_RANK
    assert comp[0]["runs_trained"] == dim[0]["runs_trained"] == 4 + 2  # one scan, two bisections


def test_default_level_is_complete():
    run = RunConfig(**TINY)
    kw = dict(seeds=(0,), lo=1.0, hi=100.0, points=3, rounds=2)
    default, explicit = S.measure_onset(run, **kw), S.measure_onset(run, level="complete", **kw)
    assert default == explicit and default["level"] == "complete"
    assert default["metric"] == "effective_rank"


def test_mlp_encoders_and_the_representation_metric():
    mlp = RunConfig(model="mlp", loss="ntxent", hidden=8, depth=2, out_dim=8, projector_dims="8,4",
                    batch_size=8, k=2, d=4, per_class=8, steps=10, log_every=10)
    with pytest.raises(ValueError, match=r"\blo\b"):
        S.measure_onset(mlp, seeds=(0,))
    with pytest.raises(ValueError, match=r"\bmetric\b"):
        S.measure_onset(RunConfig(**TINY), seeds=(0,), metric="repr_effective_rank")
    with pytest.raises(ValueError, match=r"\bmetric\b"):
        S.measure_onset(RunConfig(**TINY), seeds=(0,), metric="variance")
    res = S.measure_onset(mlp, seeds=(0,), lo=0.01, hi=1.0, points=2, rounds=0,
                          level="dimensional", metric="repr_effective_rank")
    assert res["metric"] == "repr_effective_rank" and 1 <= res["reference_rank"][0] <= 8


def test_predicted_dimensional_onset_is_the_escape_edge_where_the_pair_map_applies():
    run = RunConfig(**{**RAW, "steps": 300})
    assert S.predict_dimensional_onset(run) == S.escape_edge(run)
    assert S.predict_level_onset(run, "dimensional") == S.escape_edge(run)
    assert S.predict_level_onset(run, S.COMPLETE) == S.predict_onset(run)
    assert math.isnan(S.predict_level_onset(run, "class"))
    assert math.isnan(S.predict_dimensional_onset(RunConfig(**{**RAW, "clop_weight": 1.0})))
    assert math.isnan(S.predict_dimensional_onset(RunConfig(**{**RAW, "update_mode": "sphere"})))
    # a ratio with no prediction is no ratio
    assert math.isnan(S.onset_ratio(math.nan, 3.0))
    assert math.isnan(S.onset_ratio(math.nan, math.inf))
    assert S.onset_ratio(math.inf, math.inf) == 1.0 and S.onset_ratio(2.0, 4.0) == 0.5


def test_onset_command_prints_both_levels(capsys):
    import json

    from figures.__main__ import main

    assert main(["onset", "--grid", "tiny", "--steps", "8"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split()[:3] == ["configuration", "level", "predicted"]
    assert any(line.startswith("complete: median |ratio - 1|") for line in lines)
    assert any(line.startswith("dimensional: median |ratio - 1|") for line in lines)
    rows = json.loads(lines[-1])
    assert [r["level"] for r in rows] == ["complete", "dimensional"] * (len(rows) // 2)
    assert len(rows) == 2 * len(S.onset_grid("tiny"))
    sphere = [r for r in rows if r["config"] == "sphere"]
    assert sphere[0]["predicted"] == "inf" and sphere[1]["predicted"] is None  # not predicted
    assert "not predicted" in sphere[1]["note"]


def test_onset_command_adds_the_class_level_for_supcon(capsys, monkeypatch):
    """A SupCon configuration gets a third row, the class level, predicted by the
    class-collapsed simplex's attraction edge (shown in the edge columns, the pair map's
    edges left out); the NT-Xent configuration keeps two rows, in the grid's order."""
    import json

    from figures.__main__ import main

    rows_spec = {"tau=0.2": {"temperature": 0.2}, "supcon": {"loss": "supcon", "temperature": 0.5}}
    monkeypatch.setitem(S.ONSET_GRIDS, "tiny", (rows_spec, (0,), 4, 1))
    assert main(["onset", "--grid", "tiny", "--steps", "8"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    rows = json.loads(lines[-1])
    assert [(r["config"], r["level"]) for r in rows] == [
        ("tau=0.2", "complete"), ("tau=0.2", "dimensional"),
        ("supcon", "complete"), ("supcon", "dimensional"), ("supcon", "class")]
    cls = rows[-1]
    supcon = dict(S.onset_grid("tiny", steps=8))["supcon"]
    expected = S.class_attraction_edge(supcon)
    assert expected == math.inf  # half the points unlabelled: the simplex repels
    assert cls["predicted"] == cls["class_attraction_edge"] == "inf"
    assert all(r["class_attraction_edge"] is None for r in rows[:-1])
    agree = cls["measured"] == "inf"
    assert cls["note"].startswith("agree: no class collapse" if agree else "miss: class-level rank")
    table_line = next(line for line in lines if line.startswith("supcon") and " class " in line)
    assert table_line.split()[6:9] == ["none", "-", "-"]
    assert any(line.startswith("class: median |ratio - 1|") for line in lines)


def test_class_note_says_not_predicted_where_the_class_edge_is_nan():
    from simulate.stability.grids import _class_note

    run = RunConfig(**{**SUPCON, "clop_weight": 1.0})
    assert math.isnan(S.class_attraction_edge(run))
    assert _class_note(math.nan, math.inf, run).startswith("not predicted (CLOP")
    assert _class_note(math.nan, 3.0, RunConfig(**{**SUPCON, "update_mode": "sphere"})).startswith(
        "not predicted (the projected steps")


def test_phase_diagram_predictions_read_the_rows_data_model():
    """The phase diagram's runs take the data model from the sweep's rows (the initial pair
    angle depends on aug_sigma), and draw no onset where a level predicts none or nothing."""
    import pandas as pd

    from figures.prediction_figures import _draw_onsets, _phase_run
    from figures.registry import plt

    row = pd.Series(dict(update_mode="sphere_raw", loss="ntxent", temperature=0.1, batch_size=32,
                         k=4, d=16, per_class=128, steps=300, clop_weight=0.0, label_fraction=0.5,
                         aug_sigma=0.5, mean_scale=2.0, sigma=1.0, noise_rank=math.nan))
    run = _phase_run(row)
    assert run.aug_sigma == 0.5 and run.model == "free" and run.noise_rank is None
    assert S.initial_pair_cosine(run) == pytest.approx(S.initial_pair_cosine(RunConfig(
        **{**S.ONSET_BASE, "temperature": 0.1})))
    fig, ax = plt.subplots()
    try:
        out = _draw_onsets(ax, [_phase_run(row, clop_weight=1.0)], [0.0])
        assert not ax.get_lines()  # CLOP: complete none, dimensional not predicted
        assert out["predicted_onset"][0] == math.inf
        assert math.isnan(out["predicted_dimensional_onset"][0])
        _draw_onsets(ax, [run], [0.1])
        assert len(ax.get_lines()) == 2
    finally:
        plt.close(fig)


def test_optimizers_other_than_plain_sgd_are_not_predicted_and_say_why():
    """Momentum, LARS and Adam on free embeddings: NaN at both levels with a reason (the
    table's note); plain SGD is the pair map's own prediction."""
    from simulate.stability.optimizer_onset import predict_optimizer_onset, why_not_predicted

    base = RunConfig(**{**S.ONSET_BASE, "steps": 300, "log_every": 300})
    assert predict_optimizer_onset(base, "complete") == S.predict_onset(base)
    assert predict_optimizer_onset(base, "dimensional") == S.predict_dimensional_onset(base)
    assert why_not_predicted(base, "complete") is None
    for change, word in (({"momentum": 0.5}, "momentum"), ({"momentum": 0.9, "nesterov": True}, "momentum"),
                         ({"optimizer": "lars", "momentum": 0.9}, "LARS"), ({"optimizer": "adam"}, "Adam")):
        run = RunConfig(**{**S.ONSET_BASE, **change})
        for level in ("complete", "dimensional"):
            assert math.isnan(predict_optimizer_onset(run, level))
            assert word in why_not_predicted(run, level)


SUPCON = dict(TINY, loss="supcon", batch_size=8, k=4, d=8, per_class=16, temperature=0.5)


def test_class_collapsed_state_is_a_simplex_of_the_classes():
    run = RunConfig(**{**SUPCON, "k": 4})
    z = S.class_collapsed_state(run)
    b = run.batch_size
    assert z.shape == (2 * b, run.d)
    cls = torch.arange(b) % 4
    assert torch.equal(z[:b], z[b:])
    g = z[:b] @ z[:b].T
    same = cls[:, None] == cls[None, :]
    assert float((g[same] - 1).abs().max()) < 1e-12
    assert float((g[~same] + 1 / 3).abs().max()) < 1e-12
    assert torch.linalg.matrix_rank(z).item() == 3


def _gram_distance_after(run, lr, updates, seed=0):
    """Gram-matrix distance (rotation-free) to the class-collapsed state after ``updates``
    literal steps from a small random perturbation of it, over the distance at the start."""
    from simulate.stability.edges import _batch_labels

    z0 = S.class_collapsed_state(run)
    g = torch.Generator().manual_seed(seed)
    z = z0 + 1e-4 * torch.randn(z0.shape, generator=g, dtype=z0.dtype)
    z = z / z.norm(dim=1, keepdim=True)
    step = S.make_step(run, labels=_batch_labels(run), lr=lr)
    start = float((z @ z.T - z0 @ z0.T).norm())
    for _ in range(updates):
        z = step(z)
    return float((z @ z.T - z0 @ z0.T).norm()) / start


def test_class_attraction_edge_against_iterating_the_literal_step():
    """All points labelled: the simplex attracts over the whole scan (the edge is the scan's
    lower end) and 200 literal steps at a mid-range rate shrink a perturbation's Gram
    distance; half labelled: it attracts nowhere (math.inf) and the same steps grow it. Not
    SupCon: not predicted (NaN)."""
    full = RunConfig(**{**SUPCON, "label_fraction": 1.0})
    half = RunConfig(**{**SUPCON, "label_fraction": 0.5})
    lr = 1.0 * 2 * full.batch_size * full.temperature
    assert S.class_attraction_edge(full) == pytest.approx(1e-3 * 2 * 8 * 0.5)
    assert _gram_distance_after(full, lr, 200) < 1e-3
    assert S.class_attraction_edge(half) == math.inf
    assert _gram_distance_after(half, lr, 200) > 10
    assert math.isnan(S.class_attraction_edge(RunConfig(**{**SUPCON, "loss": "ntxent"})))
    assert S.predict_level_onset(half, "class") == math.inf
    assert math.isnan(S.predict_level_onset(RunConfig(**{**TINY}), "class"))

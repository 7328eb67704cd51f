"""The recovery law of MLP encoders under SGD (simulate.stability.recovery): the scale
invariance it rests on, the kick rate against a literal step, the onset read from
trajectories, and the probes' rates."""

import math

import pytest
import torch

from simulate.config import RunConfig
from simulate.stability.curvature import make_objective
from simulate.stability.recovery import (kick_rate, law_applies, law_onset, law_points, output_layer,
                                         predict_recovery_onset, probe_runs)

TINY = dict(model="mlp", loss="ntxent", temperature=0.5, hidden=8, depth=2, out_dim=4, k=2, d=4,
            per_class=16, batch_size=8, steps=30, log_every=30, lr=0.1)


@pytest.mark.parametrize("extra", [{}, {"projector_dims": "6,3"}, {"clop_weight": 1.0},
                                   {"loss": "supcon"}, {"loss": "dcl"}, {"loss": "barlow"}])
def test_loss_is_blind_to_the_output_layers_scale(extra):
    """The law's premise: scaling the output layer's weights and bias together leaves the loss
    unchanged (to float64 rounding; Barlow Twins to its standardisation's epsilon), so its
    gradient is orthogonal to that layer."""
    run = RunConfig(**{**TINY, **extra})
    assert law_applies(run) == ""
    obj = make_objective(run)
    theta = obj.theta0.clone()
    w = output_layer(obj)
    b = w.replace("weights", "biases")
    scaled = theta.clone()
    for name in (w, b):
        scaled[obj.slices[name]] *= 7.0
    tol = 1e-3 if run.loss == "barlow" else 1e-12
    assert float(obj(scaled)) == pytest.approx(float(obj(theta)), rel=tol, abs=1e-12)
    g = obj.gradient(theta)
    sl_w, sl_b = obj.slices[w], obj.slices[b]
    radial = float(g[sl_w] @ theta[sl_w] + g[sl_b] @ theta[sl_b])
    assert abs(radial) < tol * float(g.norm() * theta.norm())
    # a hidden layer is not scale-free: the check can fail
    hidden = scaled.clone()
    hidden[obj.slices[[n for n in obj.names if "bias" in n][0]]] *= 7.0
    assert float(obj(hidden)) != pytest.approx(float(obj(theta)), rel=1e-6)


def test_vicreg_reads_the_scale_and_is_left_out():
    run = RunConfig(**{**TINY, "loss": "vicreg"})
    obj = make_objective(run)
    scaled = obj.theta0.clone()
    w = output_layer(obj)
    for name in (w, w.replace("weights", "biases")):
        scaled[obj.slices[name]] *= 7.0
    assert float(obj(scaled)) != pytest.approx(float(obj(obj.theta0)), rel=1e-3)
    assert "vicreg" in law_applies(run)
    assert math.isnan(predict_recovery_onset(run, "complete"))


def test_kick_rate_is_the_rate_whose_first_step_is_as_long_as_the_output_layer():
    """Against one literal torch.optim.SGD step of a float64 copy of the output layer on the
    run's first minibatch: at the kick rate the step's length equals the layer's norm."""
    run = RunConfig(**TINY)
    obj = make_objective(run)
    name = output_layer(obj)
    sl = obj.slices[name]
    theta = obj.theta0.clone().requires_grad_(True)
    opt = torch.optim.SGD([theta], lr=kick_rate(run))
    before = theta.detach().clone()
    opt.zero_grad()
    obj(theta).backward()
    opt.step()
    step = (theta.detach() - before)[sl].norm()
    assert float(step) == pytest.approx(float(before[sl].norm()), rel=1e-9)
    # heavy ball: the kick rate is (1 - mu) times plain SGD's
    assert kick_rate(RunConfig(**TINY, momentum=0.9)) == pytest.approx(0.1 * kick_rate(run), rel=1e-9)


def test_law_onset_is_where_every_larger_rate_collapses():
    # rank rises through the threshold 2 between s = 0.5 and s = 2: onset = T / sqrt(0.5 * 2)
    pts = [(0.1, 1.2), (0.5, 1.9), (2.0, 3.0), (8.0, 6.0)]
    assert law_onset(pts, 2.0, 300) == pytest.approx(300.0)
    # a dip back below the threshold at larger s (smaller rates) is not the onset, as in the
    # measurement, whose onset is where every larger scanned rate collapses
    assert law_onset(pts + [(10.0, 1.0), (20.0, 5.0)], 2.0, 300) == pytest.approx(300.0)
    # order of points does not matter; NaN (diverged) counts as collapsed
    assert law_onset(list(reversed(pts)), 2.0, 300) == pytest.approx(300.0)
    assert law_onset([(0.1, math.nan), (1.0, 5.0)], 2.0, 100) == pytest.approx(100 / math.sqrt(0.1))
    assert law_onset([(0.1, 3.0), (1.0, 5.0)], 2.0, 100) == math.inf  # healthy at every rate
    assert law_onset([(0.1, 3.0), (1.0, 1.0)], 2.0, 100) == math.inf  # healthy at the top: a dip below
    assert math.isnan(law_onset([(0.1, 1.0), (1.0, 1.0)], 2.0, 100))  # collapsed everywhere
    # a rank at the threshold is collapsed, as in the measurement (levels' ``collapsed``)
    assert law_onset([(0.1, 2.0), (1.0, 5.0)], 2.0, 100) == pytest.approx(100 / math.sqrt(0.1))
    # at equal s a diverged point and a healthy one give one answer whatever their order
    tie = [(1.0, 3.0), (1.0, math.nan), (0.5, 1.0)]
    assert law_onset(tie, 2.0, 100) == law_onset(tie[::-1], 2.0, 100) == law_onset(tie[1:] + tie[:1], 2.0, 100)


def test_law_points_take_each_s_from_the_highest_probe_reaching_it():
    low = [(1.0, 1.2), (4.0, 3.0), (10.0, 1.4), (40.0, 6.0)]  # reaches s = 40
    high = [(0.1, 1.1), (2.0, 5.0), (8.0, 5.5)]  # a higher rate: reaches s = 8 only
    pts = law_points([low, high])
    # the low probe's points up to s = 8 give way to the high probe's; its later ones stay
    assert sorted(pts) == [(0.1, 1.1), (2.0, 5.0), (8.0, 5.5), (10.0, 1.4), (40.0, 6.0)]
    assert law_onset(pts, 1.5, 300) == pytest.approx(300 / math.sqrt(0.1 * 2.0))
    # a transient collapse of the lower probe inside the higher one's reach does not count
    low_dip = [(1.0, 6.0), (4.0, 1.2), (40.0, 6.0)]
    assert law_onset(law_points([low_dip, [(0.1, 1.1), (2.0, 1.3), (8.0, 5.5)]]), 1.5, 300) == \
        pytest.approx(300 / math.sqrt(2.0 * 8.0))
    assert law_onset(low_dip + [(0.1, 1.1), (2.0, 1.3), (8.0, 5.5)], 1.5, 300) == pytest.approx(300 / math.sqrt(0.1))
    assert law_points([low]) == low
    # every higher probe's reach counts, not only the next one's
    assert sorted(law_points([low, [], high])) == sorted(pts)
    # where a lower probe's point and a higher probe's last point share an s up to rounding,
    # the higher probe's stands
    edge = 30 / (80 * 1.2345)
    assert law_points([[(edge * (1 + 1e-15), 1.0), (40.0, 6.0)], [(edge, 5.0)]]) == [(edge, 5.0), (40.0, 6.0)]


def test_recovery_onsets_read_the_probes_through_the_highest_per_s(monkeypatch):
    """The onset from made-up probe trajectories (kick rate 1, so probe rates = probe_factors):
    the lowest probe dips at its first log, inside the next probe's reach, and must not count;
    the 800 probe is collapsed to step 150, the 8000 probe throughout, the others healthy."""
    import simulate.stability.recovery as rec

    run = RunConfig(**{**TINY, "steps": 300})
    monkeypatch.setattr(rec, "kick_rate", lambda run, device="cpu": 1.0)

    def trajectories(probes, device, metrics):
        out = []
        for p in probes:
            c = p.lr
            rank = lambda t: 1.0 if c > 5000 or (c > 500 and t <= 150) or (c == 2.0 and t == 10) else 8.0  # noqa: E731
            out.append({m: [(t, rank(t)) for t in range(10, 301, 10)] for m in metrics})
        return out

    monkeypatch.setattr(rec, "_trajectories", trajectories)
    got = rec.recovery_onsets([run], [{"effective_rank": 16.0}], ("complete",))[0]
    assert got["probe_rates"] == pytest.approx([2, 2.8284271, 4, 5.6568542, 8, 80, 800, 8000])
    # first healthy s: the 800 probe's step 160 (s = 0.2), after its step 150 (s = 0.1875)
    assert got["onsets"][("complete", "effective_rank")] == pytest.approx(300 / math.sqrt(0.2 * 0.1875))


def test_probes_and_where_the_law_applies():
    run = RunConfig(**TINY)
    probes = probe_runs(run, 2.0)
    # sqrt(2) apart from 2 to 8 kick rates, where the law's limit is reached, then 10x apart
    assert [p.lr for p in probes] == pytest.approx([2.0 * c for c in (2, 2.8284271, 4, 5.6568542, 8, 80, 800, 8000)])
    assert all(p.steps == run.steps and p.seed == run.seed and p.log_every >= 1 for p in probes)
    assert law_applies(run) == ""
    assert "lars" in law_applies(RunConfig(**{**TINY, "optimizer": "lars"}))
    assert "constant rate" in law_applies(RunConfig(**TINY, schedule="cosine"))
    assert "MLP" in law_applies(RunConfig(**{**TINY, "model": "free"}))
    assert math.isnan(predict_recovery_onset(RunConfig(**{**TINY, "optimizer": "adam"}), "complete"))


"""The predicted onset of collapse of MLP encoders (simulate.stability.encoder_onset) and the
encoder onset grids: the edges against a dense float64 Hessian of an independent forward,
and the table's rows."""

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from simulate.config import RunConfig
from simulate.stability.encoder_grids import LARS, ENCODER_GRIDS, encoder_grid, encoder_onset_table  # noqa: F401
from simulate.stability.encoder_onset import CATAPULT_FACTOR, encoder_edges, predict_encoder_onset
from simulate.stability.lars_overflow import lars_overflow_onset

TINY = dict(model="mlp", loss="ntxent", temperature=0.5, hidden=5, depth=2, out_dim=3, k=2, d=3,
            per_class=6, batch_size=4, steps=10, log_every=10, lr=0.1)


def _dense_top(run: RunConfig) -> float:
    """The top eigenvalue of the dense Hessian of NT-Xent of the run's first batch, written
    from the formula with its own MLP forward (weights (in, out), ReLU between layers)."""
    from simulate.engine.state import build_state, draw_batch

    state = build_state([run], torch.device("cpu"), torch.float64)
    _, _, v1, v2 = draw_batch(state)
    shapes = [p.shape[1:] for p in state.model.parameters()]
    theta0 = torch.cat([p.detach()[0].reshape(-1) for p in state.model.parameters()])
    depth = len(shapes) // 2

    def loss(theta):
        parts, i = [], 0
        for s in shapes:
            n = int(np.prod(s))
            parts.append(theta[i:i + n].view(s))
            i += n
        ws, bs = parts[:depth], parts[depth:]

        def f(x):
            for j, (w, b) in enumerate(zip(ws, bs)):
                x = x @ w + b
                if j < depth - 1:
                    x = torch.relu(x)
            return x

        z = torch.nn.functional.normalize(torch.cat([f(v1[0]), f(v2[0])]), dim=-1)
        n = z.shape[0]
        s = z @ z.T / run.temperature
        s = s.masked_fill(torch.eye(n, dtype=torch.bool), -math.inf)
        pos = torch.cat([torch.arange(n // 2, n), torch.arange(0, n // 2)])
        return (torch.logsumexp(s, 1) - s[torch.arange(n), pos]).mean()

    h = torch.autograd.functional.hessian(loss, theta0)
    return float(torch.linalg.eigvalsh(h)[-1])


@pytest.mark.parametrize("momentum, nesterov, wd", [(0.0, False, 0.0), (0.9, False, 0.0), (0.9, True, 0.01)])
def test_sgd_edges_follow_the_dense_hessian(momentum, nesterov, wd):
    run = RunConfig(**TINY, momentum=momentum, nesterov=nesterov, weight_decay=wd)
    lam = _dense_top(run)
    c = 2 * (1 + momentum) / ((1 + 2 * momentum) if nesterov else 1.0)
    e = encoder_edges(run)
    assert e["lambda_0"] == pytest.approx(lam + wd, rel=1e-3)
    assert e["eos_edge"] == pytest.approx(c / (lam + wd), rel=1e-3)
    assert e["catapult_max"] == pytest.approx(e["eos_edge"] * CATAPULT_FACTOR / 2)


def test_predict_encoder_onset_picks_the_law_the_decay_edge_the_overflow_or_nothing():
    from simulate.stability.recovery import predict_recovery_onset

    sgd = RunConfig(**TINY)
    for level in ("complete", "dimensional"):
        want = predict_recovery_onset(sgd, level, reference_rank=2.5)
        got = predict_encoder_onset(sgd, level, reference_rank=2.5)
        assert got == want or (math.isnan(got) and math.isnan(want))
    lars = RunConfig(**TINY, optimizer="lars", momentum=0.9)  # no weight decay
    assert math.isnan(predict_encoder_onset(lars))  # 10 steps: too short for the overflow onset
    long = replace(lars, steps=3000, log_every=3000)
    assert predict_encoder_onset(long) == lars_overflow_onset(long) > 0  # the float32 overflow
    assert math.isnan(predict_encoder_onset(lars, "complete"))  # no weight decay: no edge
    decayed = RunConfig(**TINY, optimizer="lars", momentum=0.9, weight_decay=1e-6, lars_trust=1e-3)
    assert predict_encoder_onset(decayed, "complete") == pytest.approx(3800)
    assert math.isnan(predict_encoder_onset(decayed))  # with weight decay: not derived
    assert math.isnan(predict_encoder_onset(RunConfig(**TINY, optimizer="adam")))


def test_adam_is_not_predicted_and_bad_input_is_named():
    e = encoder_edges(RunConfig(**TINY, optimizer="adam"))
    assert math.isnan(e["eos_edge"]) and "Adam" in e["curvature"]
    free = RunConfig(**{**TINY, "model": "free"})
    with pytest.raises(ValueError, match="run.model must be 'mlp'.*got 'free'"):
        encoder_edges(free)
    for level in ("complete", "dimensional"):
        with pytest.raises(ValueError, match="run.model must be 'mlp'"):
            predict_encoder_onset(free, level)
    with pytest.raises(ValueError, match="run must be a simulate.config.RunConfig"):
        predict_encoder_onset(None, "complete")
    with pytest.raises(ValueError, match="level must be"):
        predict_encoder_onset(RunConfig(**TINY), "partial")
    for name in ("huge", ["encoder-tiny"], "tiny"):
        with pytest.raises(ValueError, match="grid must be one of"):
            encoder_grid(name)
    for device in ("tpu", None):
        with pytest.raises(ValueError, match="device"):
            encoder_edges(RunConfig(**TINY), device)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="cuda"):
            encoder_onset_table("encoder-tiny", device="cuda")


def test_lars_edge_uses_the_frozen_ratio_operator():
    """LARS with trust ratios frozen: the edge is 2 (1 + mu) over the top eigenvalue of
    P^1/2 H P^1/2, below every layer's own block edge (and so below plain SGD's at trust 1e-3)."""
    run = RunConfig(**TINY, optimizer="lars", momentum=0.9, lars_trust=1e-3)
    lars, sgd = encoder_edges(run), encoder_edges(RunConfig(**TINY, momentum=0.9))
    assert 0 < lars["lambda_0"] < sgd["lambda_0"]
    assert lars["eos_edge"] == pytest.approx(3.8 / lars["lambda_0"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")
def test_cuda_edges_equal_cpu():
    for extra in ({}, {"optimizer": "lars", "momentum": 0.9, "projector_dims": "4,3"}):
        run = RunConfig(**TINY, **extra)
        cpu, gpu = encoder_edges(run, "cpu"), encoder_edges(run, "cuda")
        assert gpu["lambda_0"] == pytest.approx(cpu["lambda_0"], rel=1e-6)


def test_figures_onset_command_runs_an_encoder_grid(capsys):
    """``python -m figures onset --grid encoder-tiny``: the table, one summary line per level
    and the JSON list last, one row per configuration, level and rank (output; projection and
    representation with a projector); a wrong grid is one line naming --grid and the
    accepted names."""
    import json

    from figures.__main__ import main

    assert main(["onset", "--grid", "encoder-tiny"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    rows = json.loads(out[-1], parse_constant=lambda name: pytest.fail(f"non-standard JSON {name}"))
    assert any(line.startswith("dimensional: median |ratio - 1|") for line in out)
    assert any(line.startswith("complete: median |ratio - 1|") for line in out)
    grid = encoder_grid("encoder-tiny")
    projected = [label for label, run in grid if run.projector_widths]
    want = {(lab, lev, "projection" if lab in projected else "output") for lab, _ in grid
            for lev in ("complete", "dimensional")}
    want |= {(lab, lev, "representation") for lab in projected for lev in ("complete", "dimensional")}
    assert {(r["config"], r["level"], r["rank"]) for r in rows} == want
    _, seeds, *_ = ENCODER_GRIDS["encoder-tiny"]
    for r in rows:
        assert len(r["per_seed"]) == len(seeds) and len(r["reference_rank"]) == len(seeds)
        if r["optimizer"] == "sgd":  # the recovery law, per seed; NaN when a seed is below its range
            assert r["predicted_by"] == "law" and len(r["predicted_per_seed"]) == len(seeds)
            if None in r["predicted_per_seed"]:
                assert r["predicted"] is None and "below the recovery law's range" in r["note"]
            else:
                want = sorted(math.inf if v == "inf" else v for v in r["predicted_per_seed"])
                got = math.inf if r["predicted"] == "inf" else r["predicted"]
                assert got == pytest.approx(want[0] if len(want) == 1 else (want[0] + want[1]) / 2)
                assert "recovery law" in r["note"]
            assert min(min(p) for p in r["probe_rates"]) == pytest.approx(2 * r["kick_rate"], rel=0.5)
        elif (r["level"] == "complete" and r["optimizer"] == "lars" and r["rank"] != "representation"
              and r["config"] != "lars, wd=0"):
            assert r["predicted_by"] == "decay"  # LARS's weight-decay edge, 2 (1 + mu) / trust
            assert r["predicted"] == pytest.approx(2 * (1 + r["momentum"]) / LARS["lars_trust"], rel=1e-12)
            assert "weight-decay edge" in r["note"]
        elif r["level"] == "dimensional" and r["optimizer"] == "lars" and r["config"] == "lars, wd=0":
            assert r["predicted_by"] == "overflow"  # the embeddings' float32 overflow, per seed
            # 30 steps: the step that would overflow is not small, so none is predicted
            assert r["predicted"] is None and r["predicted_per_seed"] == [None] * len(seeds)
            assert r["note"].startswith("not predicted: too short a run for the overflow onset")
        elif r["level"] == "dimensional" and r["optimizer"] == "lars":
            assert r["predicted_by"] == "none" and r["predicted"] is None
            assert r["catapult_max"] > 0  # reported beside the row, not a prediction
            assert r["note"].startswith(("not predicted: not derived under LARS with weight decay",
                                         "no onset inside the scan")), r["note"]
        else:
            assert r["predicted"] is None  # NaN: not predicted
            assert r["note"].startswith(("not predicted", "no onset inside the scan")), r["note"]
        assert r["measured"] == "inf" or r["measured"] > 0
        assert r["predict_s"] >= 0 and r["measure_s"] > 0
    with pytest.raises(SystemExit) as info:
        main(["onset", "--grid", "mlp-huge"])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--grid must be one of" in err and "mlp-heldout" in err

"""LARS's weight-decay edge (simulate.stability.lars_decay): the closed form, the engine's
literal LARS step in the weight-decay limit on either side of it, and training across it."""

import math

import numpy as np
import pytest
import torch

from simulate.config import RunConfig
from simulate.engine.optimizers import StackedOptimizer
from simulate.engine.state import build_state
from simulate.stability.encoder_onset import predict_encoder_onset
from simulate.stability.levels import COLLAPSED_RANK
from simulate.stability.lars_decay import decay_edge_applies, lars_decay_edge, schedule_peak

DT = torch.float64
TINY = dict(model="mlp", loss="ntxent", temperature=0.5, hidden=5, depth=2, out_dim=3, k=2, d=3,
            per_class=6, batch_size=4, steps=10, log_every=10, lr=0.1)
RULES = [(0.0, False), (0.5, False), (0.9, False), (0.9, True)]


def _factor(momentum: float, nesterov: bool) -> float:
    """Torch's heavy-ball and Nesterov edges of lr x curvature, written out."""
    return 2 * (1 + momentum) / (1 + 2 * momentum) if nesterov else 2 * (1 + momentum)


@pytest.mark.parametrize("momentum,nesterov", RULES)
@pytest.mark.parametrize("warmup,steps", [(0, 10), (5, 10), (40, 10)])
def test_the_edge_is_the_momentum_factor_over_trust_at_the_schedules_peak(momentum, nesterov, warmup, steps):
    run = RunConfig(**{**TINY, "steps": steps, "log_every": steps}, optimizer="lars", momentum=momentum,
                    nesterov=nesterov, weight_decay=1e-6, lars_trust=2e-3, warmup_steps=warmup,
                    schedule="cosine")
    peak = steps / warmup if warmup > steps else 1.0  # update t <= W runs at lr t / W
    assert schedule_peak(run) == peak
    assert lars_decay_edge(run) == pytest.approx(_factor(momentum, nesterov) / (2e-3 * peak), rel=1e-12)
    assert predict_encoder_onset(run, "complete") == lars_decay_edge(run)


def test_the_edge_applies_only_to_lars_with_weight_decay_on_a_scale_free_loss():
    lars = dict(TINY, optimizer="lars", weight_decay=1e-6)
    assert decay_edge_applies(RunConfig(**lars)) == ""
    for changes, word in (({"weight_decay": 0.0}, "weight_decay > 0"), ({"optimizer": "sgd"}, "LARS"),
                          ({"loss": "vicreg"}, "vicreg"), ({"model": "free"}, "MLP")):
        run = RunConfig(**{**lars, **changes})
        assert word in decay_edge_applies(run)
        assert math.isnan(lars_decay_edge(run))


def _lars(momentum, nesterov, wd, trust, lr):
    run = RunConfig(model="free", k=2, d=3, per_class=4, batch_size=2, optimizer="lars",
                    momentum=momentum, nesterov=nesterov, weight_decay=wd, lars_trust=trust, lr=lr)
    p = torch.nn.Parameter(torch.zeros(1, 12, dtype=DT))
    return StackedOptimizer(build_state([run], torch.device("cpu"), DT), [("weight", p)]), p


@pytest.mark.parametrize("momentum,nesterov", RULES)
def test_engine_lars_in_the_weight_decay_limit_shrinks_below_the_edge_and_grows_above(momentum, nesterov):
    """A layer whose loss ignores its scale: ``g = P_perp a w_hat / |w|`` (orthogonal to w,
    falling as 1 / |w|). From |w| = 1e4 (|g| ~ 1e-4 << wd |w| = 100) the engine's own LARS
    updates pull the layer back at 0.99 x the edge and blow it up at 1.01 x."""
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(12, 12, generator=gen, dtype=DT)
    w0 = torch.randn(12, generator=gen, dtype=DT)
    w0 = 1e4 * w0 / w0.norm()
    trust, wd = 1e-3, 1e-2
    edge = _factor(momentum, nesterov) / trust
    for factor, grows in ((0.99, False), (1.01, True)):
        opt, p = _lars(momentum, nesterov, wd, trust, factor * edge)
        with torch.no_grad():
            p.copy_(w0[None])
        for t in range(1, 801):
            w = p.detach()[0]
            u = w / w.norm()
            g = a @ u
            g = (g - (g @ u) * u) / w.norm()
            opt.step([g[None]], torch.ones(1, dtype=torch.bool), t)
        norm = float(p.detach()[0].norm())
        assert math.isfinite(norm)
        assert (norm > 1e6) if grows else (norm < 1e3), (factor, norm)


PAPER_SMALL = dict(model="mlp", loss="ntxent", temperature=0.5, hidden=32, depth=3, out_dim=8, k=4,
                   d=8, per_class=32, batch_size=32, steps=120, log_every=120, optimizer="lars",
                   momentum=0.9, weight_decay=1e-6, lars_trust=1e-3, warmup_steps=12,
                   schedule="cosine", projector_dims="32,8")


def test_training_across_the_edge_freezes_the_network_above_it():
    """The paper's recipe at toy size, four seeds: at 0.9 x the edge the weight decay keeps the
    embeddings' norm below 1e14 (some seeds collapse there too, by other routes); at 1.1 x it
    grows past 1e20 until float32 overflows the embeddings' norm and the gradient becomes 0,
    the network stops moving, and most of what it keeps is completely collapsed (the
    measured part)."""
    from simulate.stability.measure import train_logged_rows

    base = RunConfig(**PAPER_SMALL)
    edge = lars_decay_edge(base)
    assert edge == pytest.approx(3800)
    seeds = (0, 1, 2, 3)
    runs = [RunConfig(**{**PAPER_SMALL, "lr": f * edge, "seed": s, "log_every": 30}) for f in (0.9, 1.1)
            for s in seeds]
    rows = train_logged_rows(runs)
    norms = np.array([[r["mean_norm"] for r in rr] for rr in rows])  # steps 0, 30, 60, 90, 120
    below, above = norms[:len(seeds)], norms[len(seeds):]
    assert np.isfinite(below).all() and np.log10(below[:, -1]).max() < 14
    assert (above[:, -1] > 1e20).all()  # inf counts: the norm may overflow float32
    ok = np.isfinite(above[:, -1])
    np.testing.assert_allclose(above[ok, -1], above[ok, -2], rtol=1e-2)  # frozen
    assert sum(rr[-1]["effective_rank"] <= COLLAPSED_RANK for rr in rows[len(seeds):]) >= 3

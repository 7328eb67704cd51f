"""LARS without weight decay: the float32 overflow of the embeddings' norm
(simulate.stability.lars_overflow): the closed form against one written out from the formula
with an independent forward, where it applies, and training at toy size on both sides of it."""

import math
from dataclasses import replace

import pytest
import torch

from simulate.config import RunConfig
from simulate.stability.curvature import make_objective
from simulate.stability.lars_overflow import (
    MAX_ONSET_STEP,
    lars_overflow_onset,
    overflow_applies,
)
from simulate.stability.measure import train_logged_rows

#: the paper's recipe (LARS, momentum 0.9, warmup then cosine, a projector) at toy size, without
#: weight decay
RECIPE = RunConfig(model="mlp", hidden=16, depth=2, out_dim=8, d=8, k=4, per_class=32, batch_size=16,
                   steps=300, log_every=300, loss="ntxent", temperature=0.5, optimizer="lars",
                   momentum=0.9, weight_decay=0.0, lars_trust=1e-3, warmup_steps=30,
                   schedule="cosine", projector_dims="16,8")


def _written_out(run: RunConfig) -> float:
    """(1 - mu) / trust x sqrt(2 ln(N / |z0|) / (L sum f_t^2)), each part from its definition."""
    obj = make_objective(run)
    p = obj.unflatten(obj.theta0)
    _, v1, v2 = obj.batch
    h = torch.cat([v1, v2], 1)[0]
    for prefix, n in (("", run.depth), ("proj_", len(run.projector_widths))):
        for i in range(n):
            h = h @ p[f"{prefix}weights.{i}"][0] + p[f"{prefix}biases.{i}"][0]
            if i < n - 1:
                h = torch.relu(h)
    z0 = float(h.norm(dim=1).pow(2).mean().sqrt())
    f2 = 0.0
    for t in range(1, run.steps + 1):
        if t <= run.warmup_steps:
            f = t / run.warmup_steps
        elif run.schedule == "cosine":
            f = 0.5 * (1 + math.cos(math.pi * (t - run.warmup_steps - 1) / (run.steps - run.warmup_steps)))
        else:
            f = 1.0
        f2 += f * f
    big = math.sqrt((2 - 2 ** -23) * 2.0 ** 127)  # float32's largest value, square-rooted
    layers = run.depth + len(run.projector_widths)
    return (1 - run.momentum) / run.lars_trust * math.sqrt(2 * math.log(big / z0) / (layers * f2))


@pytest.mark.parametrize("changes", [{}, {"momentum": 0.5, "warmup_steps": 0, "schedule": "constant"},
                                     {"projector_dims": "", "steps": 1000}, {"depth": 3, "lars_trust": 1e-2}])
def test_the_closed_form(changes):
    run = replace(RECIPE, **changes)
    assert lars_overflow_onset(run) == pytest.approx(_written_out(run), rel=1e-9)


def test_where_it_applies():
    assert overflow_applies(RECIPE) == ""
    for changes, word in [({"weight_decay": 1e-6}, "weight_decay = 0"), ({"optimizer": "sgd"}, "LARS"),
                          ({"batch_norm": True}, "batch norm"), ({"loss": "vicreg"}, "vicreg")]:
        why = overflow_applies(replace(RECIPE, **changes))
        assert word in why and math.isnan(lars_overflow_onset(replace(RECIPE, **changes)))
    short = replace(RECIPE, steps=20, warmup_steps=5)  # the step that overflows is not small
    assert _written_out(short) * short.lars_trust / (1 - short.momentum) > MAX_ONSET_STEP
    assert math.isnan(lars_overflow_onset(short))


def test_training_overflows_above_the_onset_and_not_well_below():
    seeds = range(4)
    onsets = [lars_overflow_onset(replace(RECIPE, seed=s)) for s in seeds]
    ref = [float(rows[-1]["effective_rank"])
           for rows in train_logged_rows([replace(RECIPE, seed=s, lr=1e-3) for s in seeds])]

    def final(factor):
        runs = [replace(RECIPE, seed=s, lr=factor * o) for s, o in zip(seeds, onsets)]
        return [rows[-1] for rows in train_logged_rows(runs)]

    below, above = final(0.5), final(2.5)
    assert all(float(r["mean_norm"]) < 1e12 for r in below), [r["mean_norm"] for r in below]
    assert all(float(r["mean_norm"]) > 1e18 for r in above), [r["mean_norm"] for r in above]
    # the stopped state is dimensionally collapsed (measured, not derived): most seeds
    collapsed = [float(r["effective_rank"]) <= max(1.5, 0.5 * q) for r, q in zip(above, ref)]
    assert sum(collapsed) >= 3, ([r["effective_rank"] for r in above], ref)

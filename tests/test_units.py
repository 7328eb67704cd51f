"""The units' participation in a layer's weights and the dead ReLUs (simulate.stability.units),
against loops written from the definitions and hand-made layers; and what docs/onset.md
measures with them under LARS with weight decay, at toy size: past a relative step
lr x trust / (1 - momentum) of about a quarter the encoder's units die, the layers' weights
gather on a few units and the embeddings lose rank, and far less so with every training
point in every batch."""

import math
import re
from dataclasses import replace

import pytest
import torch

from simulate.config import RunConfig
from simulate.engine import train_chunk
from simulate.engine.state import build_state
from simulate.models import StackedMLP
from simulate.stability import dead_units, layer_participation, unit_participation


def _loop(w) -> float:
    norms = [sum(float(w[i, j]) ** 2 for i in range(w.shape[0])) for j in range(w.shape[1])]
    return sum(norms) ** 2 / sum(n * n for n in norms)


def test_participation_against_the_formula():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(3, 5, 7, generator=g) * torch.rand(1, 1, 7, generator=g)  # unequal units
    got = unit_participation(w)
    assert got.shape == (3,) and got.dtype == torch.float64
    for r in range(3):
        assert got[r].item() == pytest.approx(_loop(w[r]), rel=1e-12)
    one = unit_participation(w[1])
    assert one.shape == (1,) and one.item() == pytest.approx(_loop(w[1]), rel=1e-12)
    assert not unit_participation(w.clone().requires_grad_(True)).requires_grad


def test_participation_of_hand_made_layers():
    equal = torch.zeros(4, 6)
    equal[0, :3], equal[1, 3:] = 2.0, -2.0  # six units, each of norm 2
    assert unit_participation(equal).item() == pytest.approx(6.0)
    one = torch.zeros(4, 6)
    one[:, 2] = 1.0  # one unit carries it all
    assert unit_participation(one).item() == pytest.approx(1.0)
    two = torch.zeros(4, 6)
    two[0, 0], two[0, 1] = 1.0, math.sqrt(3.0)  # norms 1 and 3: 16 / 10
    assert unit_participation(two).item() == pytest.approx(1.6)
    assert math.isnan(unit_participation(torch.zeros(4, 6)).item())


def test_bad_input_names_the_parameter():
    with pytest.raises(ValueError, match="weight must have shape"):
        unit_participation(torch.ones(5))
    with pytest.raises(ValueError, match="weight must be a torch.Tensor"):
        unit_participation([[1.0, 2.0]])
    with pytest.raises(ValueError, match="model must be an MLP encoder"):
        layer_participation(torch.nn.Linear(2, 2))


def test_every_layer_of_an_encoder_and_its_projector():
    m = StackedMLP([0, 1], in_dim=5, hidden=8, out_dim=4, depth=3, projector=(6, 3))
    got = layer_participation(m)
    assert list(got) == ["encoder.0", "encoder.1", "encoder.2", "projector.0", "projector.1"]
    widths = [8, 8, 4, 6, 3]
    for (name, v), width in zip(got.items(), widths):
        assert v.shape == (2,) and bool(((v >= 1) & (v <= width)).all()), (name, v)
    assert got["encoder.1"][0].item() == pytest.approx(_loop(m.weights[1][0].detach()), rel=1e-12)
    plain = layer_participation(StackedMLP([0], in_dim=5, hidden=8, out_dim=4, depth=2))
    assert list(plain) == ["encoder.0", "encoder.1"]


def _dead_loop(model, x, r: int) -> list[int]:
    """Run ``r``'s dead units per ReLU layer, from explicit sums over the rows of ``x`` (N, d)."""
    layers = [(model.weights, model.biases)]
    if model.has_projector:
        layers.append((model.proj_weights, model.proj_biases))
    counts, h = [], [[float(v) for v in row] for row in x]
    for weights, biases in layers:
        for i in range(len(weights)):
            w, b = weights[i][r].detach(), biases[i][r].detach().reshape(-1)
            pre = [[float(b[j]) + sum(row[k] * float(w[k, j]) for k in range(len(row)))
                    for j in range(w.shape[1])] for row in h]
            if i == len(weights) - 1:  # no ReLU after a last layer
                h = pre
                continue
            if model.batch_norm:
                n = len(pre)
                for j in range(w.shape[1]):
                    col = [p[j] for p in pre]
                    mean = sum(col) / n
                    sd = math.sqrt(sum((c - mean) ** 2 for c in col) / n + 1e-5)
                    for p in pre:
                        p[j] = (p[j] - mean) / sd
            counts.append(sum(all(p[j] <= 0 for p in pre) for j in range(w.shape[1])))
            h = [[max(v, 0.0) for v in p] for p in pre]
    return counts


@pytest.mark.parametrize("batch_norm", [False, True])
def test_dead_units_against_a_loop(batch_norm):
    m = StackedMLP([0, 1], in_dim=3, hidden=6, out_dim=4, depth=3, projector=(5, 2), batch_norm=batch_norm,
                   dtype=torch.float64)
    with torch.no_grad():
        m.biases[0][0, 0, :3] = -50.0  # run 0: three first-layer units silenced on these inputs
        m.proj_biases[0][1, 0, :2] = -50.0  # run 1: two of the projector's hidden units
    x = torch.randn(9, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    got = dead_units(m, x)
    assert list(got) == ["encoder.0", "encoder.1", "projector.0"]
    assert all(v.shape == (2,) and v.dtype == torch.float64 for v in got.values())
    for r in range(2):
        assert [int(v[r]) for v in got.values()] == _dead_loop(m, x, r), r
    if not batch_norm:  # batch norm centres each unit over the rows: a bias cannot silence it
        assert got["encoder.0"][0] >= 3 and got["projector.0"][1] >= 2
    per_run = dead_units(m, torch.stack([x, -x]))  # one set of inputs per run
    assert [int(v[1]) for v in per_run.values()] == _dead_loop(m, -x, 1)


def test_relu_inputs_are_what_the_model_computes_with():
    m = StackedMLP([0, 1], in_dim=3, hidden=6, out_dim=4, depth=3, projector=(5, 2), dtype=torch.float64)
    x = torch.randn(2, 9, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    got = m.relu_inputs(x)
    assert list(got) == ["encoder.0", "encoder.1", "projector.0"]
    with torch.no_grad():
        rep = torch.baddbmm(m.biases[2], torch.relu(got["encoder.1"]), m.weights[2])
        assert torch.equal(rep, m.represent(x))
        assert torch.equal(torch.baddbmm(m.biases[1], torch.relu(got["encoder.0"]), m.weights[1]), got["encoder.1"])
        assert torch.equal(torch.baddbmm(m.proj_biases[0], rep, m.proj_weights[0]), got["projector.0"])
        out = torch.baddbmm(m.proj_biases[1], torch.relu(got["projector.0"]), m.proj_weights[1])
        assert torch.equal(out, m(None, x))


def test_a_unit_whose_relu_input_is_exactly_zero_is_dead_and_a_diverged_run_is_nan():
    m = StackedMLP([0, 1], in_dim=3, hidden=6, out_dim=4, depth=2, dtype=torch.float64)
    x = torch.randn(7, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    with torch.no_grad():
        m.weights[0][:, :, 4] = 0.0  # unit 4 of both runs: input 0 on every row
        m.biases[0][:, :, 4] = 0.0
    base = _dead_loop(m, x, 0)[0]
    assert base >= 1 and dead_units(m, x)["encoder.0"].tolist() == [base, _dead_loop(m, x, 1)[0]]
    with torch.no_grad():
        m.weights[0][1, 0, 0] = float("nan")  # run 1 diverged
    got = dead_units(m, x)["encoder.0"]
    assert got[0].item() == base and math.isnan(got[1].item())


def test_dead_units_bad_input_names_the_parameter():
    m = StackedMLP([0, 1], in_dim=3, hidden=6, out_dim=4, depth=2)
    with pytest.raises(ValueError, match="model must be an MLP encoder"):
        dead_units(torch.nn.Linear(3, 3), torch.ones(4, 3))
    with pytest.raises(ValueError, match="x must be a torch.Tensor"):
        dead_units(m, [[1.0, 2.0, 3.0]])
    for bad in (torch.ones(4, 5), torch.ones(3, 4, 3), torch.ones(4), torch.ones(0, 3)):
        with pytest.raises(ValueError, match=r"x must have shape \(N, 3\) or \(2, N, 3\) with N >= 1, "
                                             + re.escape(f"got {tuple(bad.shape)}")):
            dead_units(m, bad)
    for bad in (torch.tensor([[1.0, float("nan"), 0.0]]), torch.tensor([[1.0, float("inf"), 0.0]])):
        with pytest.raises(ValueError, match="x must be real and finite"):
            dead_units(m, bad)
    normed = StackedMLP([0, 1], in_dim=3, hidden=6, out_dim=4, depth=2, batch_norm=True)
    with pytest.raises(ValueError, match=r"N >= 2 \(batch norm\), got \(1, 3\)"):
        dead_units(normed, torch.ones(1, 3))
    assert list(dead_units(StackedMLP([0], in_dim=3, hidden=6, out_dim=4, depth=1), torch.ones(4, 3))) == []


#: LARS with weight decay at a constant rate, an encoder with a projector, at toy size
LARS_TOY = RunConfig(model="mlp", hidden=32, depth=3, out_dim=16, d=16, k=4, per_class=128,
                     batch_size=64, steps=500, log_every=500, loss="ntxent", temperature=0.5,
                     optimizer="lars", momentum=0.9, weight_decay=1e-6, lars_trust=1e-3,
                     projector_dims="32,8")


def _trained(**changes):
    """Per seed: the final rank, the encoder's 2nd layer's participation and the dead units of
    its two hidden layers on the training points."""
    runs = [replace(LARS_TOY, seed=s, **changes) for s in range(3)]
    res = train_chunk(runs)
    rank = {r["run_id"]: float(r["effective_rank"]) for r in res.rows if r["step"] == LARS_TOY.steps}
    dead = dead_units(res.model, res.state.x_train)
    return ([rank[r.run_id] for r in runs], layer_participation(res.model)["encoder.1"].tolist(),
            (dead["encoder.0"] + dead["encoder.1"]).tolist())


@pytest.mark.parametrize("relative_step, healthy, collapsed", [
    ("momentum 0.9, trust 1e-3", dict(lr=10.0), dict(lr=50.0)),
    ("momentum 0.9, trust 1e-2", dict(lr=1.0, lars_trust=1e-2), dict(lr=5.0, lars_trust=1e-2)),
    ("momentum 0", dict(lr=100.0, momentum=0.0), dict(lr=500.0, momentum=0.0)),
])
def test_lars_weights_gather_on_a_few_units_past_a_relative_step(relative_step, healthy, collapsed):
    # lr x trust / (1 - momentum) is 0.1 in `healthy` and 0.5 in `collapsed`, in every case
    third = LARS_TOY.hidden / 3
    rank, part, dead = _trained(**healthy)
    assert min(rank) >= 5.0 and min(part) > third, (relative_step, rank, part)
    assert max(dead) <= 2, (relative_step, dead)  # dead ReLUs: a few at most
    rank, part, dead = _trained(**collapsed)
    assert max(rank) < 3.5 and max(part) < third, (relative_step, rank, part)
    assert min(dead) >= 4, (relative_step, dead)  # the units that drop out are dead ReLUs


def test_lars_gathering_needs_the_minibatches():
    # docs/onset.md: the onset grows with the batch size; with every training point in every
    # batch (only the views vary) the same relative step (0.5) keeps more units and more rank
    n_train = build_state([LARS_TOY], torch.device("cpu")).x_train.shape[1]  # every training point
    small_rank, small_part, _ = _trained(lr=50.0)
    full_rank, full_part, _ = _trained(lr=50.0, batch_size=n_train)
    assert min(full_rank) > max(small_rank) + 1.5, (full_rank, small_rank)
    assert min(full_part) > max(small_part), (full_part, small_part)

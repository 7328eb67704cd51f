"""Claim ntxent_batch against the dense spectrum of simulate.stability (the engine's step on
the arrangement, sphere mode, mean over anchors: rates 2M times the claim's) to 1e-6."""

import dataclasses
import math

import pytest
import torch

import theory
from simulate import stability as S
from simulate.config import RunConfig
from theory.batch import arrangement, batch_critical

DT = torch.float64


def engine_radius(kind, nd, tau, w, factor):
    u, _ = arrangement(kind, nd)
    m = u.shape[0] // 2
    z = torch.tensor(u, dtype=DT)
    run = RunConfig(loss="ntxent", model="free", update_mode="sphere", d=nd, k=2,
                    per_class=max(m, 4), holdout_fraction=0.0, batch_size=m, temperature=tau,
                    clop_weight=w)
    eta = 2 * m * factor * batch_critical(kind, nd, tau, w)["eta_c"]
    step = S.make_step(run, labels=torch.arange(m), lr=eta)
    deflate = None
    if w:  # each pair's prototype at its own position
        step = dataclasses.replace(step, prototypes=torch.tensor(u[:m], dtype=DT))
    else:  # rotation-invariant: the global rotations are neutral (multiplier 1)
        deflate = S.rotation_modes(z)
    return S.spectrum(step, z, k=3, deflate=deflate)["radius"]


@pytest.mark.parametrize("kind, nd, tau, w", [
    ("axes", 2, 0.2, 0.0), ("axes", 3, 0.5, 0.0), ("axes", 3, 0.2, 0.0),
    ("simplex", 2, 0.2, 0.0), ("simplex", 3, 0.5, 0.0), ("simplex", 3, 0.3, 1.5), ("axes", 2, 0.5, 0.7),
])
def test_critical_rate_against_the_stability_module(kind, nd, tau, w):
    assert engine_radius(kind, nd, tau, w, 1.0) == pytest.approx(1.0, abs=1e-6)
    assert engine_radius(kind, nd, tau, w, 0.99) < 1
    assert engine_radius(kind, nd, tau, w, 1.01) > 1


def test_twelve_points_at_axes():
    """+-e_i in R^3: splitting modes at 0.316 (tau 0.5) and 0.868 (tau 0.2), a collective mode
    first at 0.782 (tau 0.2); ntxent_pair's fixed-negative value 0.379 and 1.202 is too high."""
    for tau, split, full in ((0.5, 0.3156, 0.3156), (0.2, 0.8681, 0.7821)):
        res = batch_critical("axes", 3, tau)
        assert res["eta_relative"] == pytest.approx(split, abs=1e-4)
        assert res["eta_c"] == pytest.approx(full, abs=1e-4)
        assert theory.critical_lr("ntxent_batch_axes", tau=tau, n=3) == pytest.approx(split, abs=1e-4)
    assert batch_critical("axes", 3, 0.2)["binding"] == "collective"
    old = [theory.critical_lr("ntxent_pair", tau=t, p_pos=_pair_p(t), neg_cos=_pair_c(t),
                              neg_spread=_pair_s(t)) for t in (0.5, 0.2)]
    assert old == pytest.approx([0.379, 1.202], abs=1e-3)


def _weights(t):
    z = math.exp(1 / t) + 2 * math.exp(-1 / t) + 8
    return math.exp(1 / t) / z, math.exp(-1 / t) / z, 1 / z


def _pair_p(t):
    return _weights(t)[0]


def _pair_c(t):
    p, qa, _ = _weights(t)
    return -2 * qa / (1 - p)


def _pair_s(t):
    p, _, qo = _weights(t)
    return 4 * qo / (1 - p)


@pytest.mark.parametrize("call, word", [
    (lambda: theory.critical_lr("ntxent_batch_axes", tau=0.5, n=1), "n"),
    (lambda: theory.critical_lr("ntxent_batch_simplex", tau=0.5, n=3, w=-1.0), "w"),
    (lambda: theory.critical_lr("ntxent_batch_simplex", tau=1e-4, n=3), "tau"),
    (lambda: arrangement("cube", 3), "kind"),
])
def test_bad_input_names_the_parameter(call, word):
    with pytest.raises(ValueError, match=rf"\b{word}\b"):
        call()

"""Public API of `theory`: values (against the literal update rule), expressions and bad input."""

import math

import numpy as np
import pytest
import sympy as sp
import torch

import theory
from reference import DT, grad, sphere_step, unit
from test_theory_numeric import ntxent_pair_loss, rank1_tangent_spectrum, step_jacobian


def test_known_values_against_the_literal_update():
    """Each rate is where the literal update's dense Jacobian has its critical multiplier."""
    d = 3
    e = torch.eye(d, dtype=DT)
    # anchor: one point pulled to a prototype p; the tangent multiplier is -1 at eta_c
    for w in (0.5, 2.0):
        eta_c = theory.critical_lr("anchor", w=w)
        jac = step_jacobian(lambda x: w * (1 - unit(x[0]) @ e[0]), e[:1], eta_c)
        assert float(e[1] @ jac @ e[1]) == pytest.approx(-1.0, abs=1e-9)
    # pair: two attracting points; the relative mode has multiplier -1 at eta_c
    for w in (1.0, 4.0):
        eta_c = theory.critical_lr("pair", w=w)
        x = torch.stack([e[0], e[0]])
        v = torch.cat([e[1], -e[1]]) / math.sqrt(2)
        jac = step_jacobian(lambda z: -w * (unit(z[0]) @ unit(z[1])), x, eta_c)
        assert float(v @ jac @ v) == pytest.approx(-1.0, abs=1e-9)
    # ntxent_pair with k antipodal negatives at -u0 (p_pos from the softmax), and with one
    # mirror pair of orthogonal negatives (c_neg = 0, s_neg = 1)
    tau = 0.5
    for negs, extra in ((-e[0].repeat(6, 1), {}), (torch.stack([e[1], -e[1]]),
                                                    {"neg_cos": 0.0, "neg_spread": 1.0})):
        p = theory.ntxent_p_pos(tau, negs.shape[0], extra.get("neg_cos", -1.0))
        eta_c = theory.critical_lr("ntxent_pair", tau=tau, p_pos=p, **extra)
        x = torch.stack([e[0], e[0]])
        v = torch.cat([e[1], -e[1]]) / math.sqrt(2)
        jac = step_jacobian(ntxent_pair_loss(negs, tau), x, eta_c)
        assert float(v @ jac @ v) == pytest.approx(-1.0, abs=1e-9)


def test_rank1_value_against_the_literal_update():
    for tau, n in ((0.5, 4), (0.3, 8)):
        eta_c = theory.critical_lr("rank1_cycle", tau=tau, n=n)
        eig, _ = rank1_tangent_spectrum(n, tau, eta_c)
        assert float(np.max(np.abs(eig))) == pytest.approx(1.0, abs=1e-9)
    # n = 2 never attracts: some non-rotation mode grows at every rate
    assert theory.critical_lr("rank1_cycle", tau=0.3, n=2) == math.inf
    for eta in (0.5, 5.0, 50.0):
        assert float(np.max(np.abs(rank1_tangent_spectrum(2, 0.3, eta)[0]))) >= 1 - 1e-12


def test_rank1_small_temperature_does_not_overflow():
    for tau in (1e-3, 1e-6):
        v = theory.critical_lr("rank1_cycle", tau=tau, n=4)
        assert math.isfinite(v) and v > 0
    # small enough that the literal update is exact in float64: the crossing is still there
    eig, _ = rank1_tangent_spectrum(4, 0.05, theory.critical_lr("rank1_cycle", tau=0.05, n=4))
    assert float(np.max(np.abs(eig))) == pytest.approx(1.0, abs=1e-7)


def test_p_pos_batch_dependence():
    # SimCLR batch of N pairs: 2N - 2 negatives; bigger batch, smaller p_pos
    small = theory.ntxent_p_pos(0.5, 2 * 8 - 2, 0.0)
    big = theory.ntxent_p_pos(0.5, 2 * 256 - 2, 0.0)
    assert 0 < big < small < 1
    assert small == pytest.approx(math.exp(2) / (math.exp(2) + 14))


def test_expressions_are_sympy():
    """The expressions are SymPy and give the numbers of critical_lr (checked against the
    literal update above)."""
    for kind in theory.CRITICAL_KINDS:
        assert isinstance(theory.critical_lr_expr(kind), sp.Expr)
    w = theory.symbols.w
    assert float(theory.critical_lr_expr("anchor").subs(w, 0.5)) == theory.critical_lr("anchor", w=0.5)


@pytest.mark.parametrize(
    "call, word",
    [
        (lambda: theory.critical_lr("ntxent_pair", tau=-0.1, p_pos=0.5), "tau"),
        (lambda: theory.critical_lr("ntxent_pair", tau=0.0, p_pos=0.5), "tau"),
        (lambda: theory.critical_lr("anchor", w=0.0), "w"),
        (lambda: theory.critical_lr("pair", w=-1.0), "w"),
        (lambda: theory.critical_lr("rank1_cycle", tau=0.5, n=1), "n"),
        (lambda: theory.critical_lr("rank1_cycle", tau=0.5, n=2.5), "n"),
        (lambda: theory.critical_lr("ntxent_pair", tau=0.5, p_pos=1.0), "p_pos"),
        (lambda: theory.critical_lr("ntxent_pair", tau=0.5, p_pos=0.5, neg_cos=2), "neg_cos"),
        (lambda: theory.critical_lr("ntxent_pair", tau=0.5, p_pos=0.5, neg_cos=0.9,
                                    neg_spread=0.5), "neg_spread"),
        (lambda: theory.critical_lr("nope", w=1.0), "kind"),
        (lambda: theory.critical_lr("anchor", w=1.0, tau=1.0), "tau"),
        (lambda: theory.critical_lr("anchor"), "w"),
        (lambda: theory.critical_lr_expr("nope"), "kind"),
        (lambda: theory.step_map("nope", eta=1.0, w=1.0), "kind"),
        (lambda: theory.step_map("anchor", eta=-1.0, w=1.0), "eta"),
        (lambda: theory.step_map("anchor", eta=1.0, w=-1.0), "w"),
        (lambda: theory.step_map("pair", eta=1.0, w=0.0), "w"),
        (lambda: theory.ntxent_p_pos(-1.0, 4), "tau"),
        (lambda: theory.ntxent_p_pos(1.0, 0), "n_neg"),
        (lambda: theory.claim("nope"), "name"),
        (lambda: theory.anchor_cycle_angle(1.5), "eta_w"),
    ],
)
def test_bad_input_names_the_parameter(call, word):
    with pytest.raises(ValueError, match=rf"\b{word}\b"):
        call()


def test_anchor_cycle_exists_above_two():
    """One literal projected step from angle t lands at angle t on the other side."""
    e = torch.eye(2, dtype=DT)
    for aw in (2.05, 3.0, 10.0):
        t = theory.anchor_cycle_angle(aw)
        assert 0 < t < math.pi / 4
        x = torch.tensor([[math.cos(t), math.sin(t)]], dtype=DT)
        new = sphere_step(x, grad(lambda z: 1 - z[0] @ e[0], x), aw)
        assert math.atan2(float(new[0, 1]), float(new[0, 0])) == pytest.approx(-t, abs=1e-12)

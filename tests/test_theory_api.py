"""Public API of `theory`: values, expressions and bad input."""

import math

import pytest
import sympy as sp

import theory


def test_known_values():
    assert theory.critical_lr("anchor", w=0.5) == pytest.approx(4.0)
    assert theory.critical_lr("pair", w=4.0) == pytest.approx(0.25)
    # antipodal negatives: 2 tau / (5 (1 - p))
    assert theory.critical_lr("ntxent_pair", tau=0.5, p_pos=0.9) == pytest.approx(2.0)
    # orthogonal negatives with spread 1: 2 tau / ((1 - p)(4 + 1/tau))
    v = theory.critical_lr("ntxent_pair", tau=0.5, p_pos=0.5, neg_cos=0.0, neg_spread=1.0)
    assert v == pytest.approx(2 * 0.5 / (0.5 * 6.0))


def test_rank1_value_from_softmax_weights():
    tau, n = 0.5, 4
    e, em = math.exp(1 / tau), math.exp(-1 / tau)
    z = (n - 1) * e + n * em
    a, m = e / z, ((n - 1) * e - n * em) / z
    assert theory.critical_lr("rank1_cycle", tau=tau, n=n) == pytest.approx(tau / (m - a))
    # n = 2 never attracts: (n - 2) e^{2/tau} = 0 <= n
    assert theory.critical_lr("rank1_cycle", tau=0.3, n=2) == math.inf


def test_p_pos_batch_dependence():
    # SimCLR batch of N pairs: 2N - 2 negatives; bigger batch, smaller p_pos
    small = theory.ntxent_p_pos(0.5, 2 * 8 - 2, 0.0)
    big = theory.ntxent_p_pos(0.5, 2 * 256 - 2, 0.0)
    assert 0 < big < small < 1
    assert small == pytest.approx(math.exp(2) / (math.exp(2) + 14))


def test_expressions_are_sympy():
    for kind in theory.CRITICAL_KINDS:
        assert isinstance(theory.critical_lr_expr(kind), sp.Expr)
    w = sp.Symbol("w", positive=True)
    assert sp.simplify(theory.critical_lr_expr("anchor") - 2 / w) == 0


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
    for aw in (2.05, 3.0, 10.0):
        t = theory.anchor_cycle_angle(aw)
        f = theory.step_map("anchor", eta=aw, w=1.0)
        assert 0 < t < math.pi / 4
        assert float(f(t)) == pytest.approx(-t, abs=1e-12)

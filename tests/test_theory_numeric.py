"""Closed forms and thresholds of `theory` against the literal update rule, in float64.

References: torch autograd on losses written from their formulas (tests/reference.py),
one step, renormalise. Angles, eta, w, tau, n and dimension are drawn by hypothesis.
Tolerances: 1e-9 absolute on cosines/angles for one-step maps; thresholds are checked by
iterating the full nonlinear update at 0.9x and 1.1x the predicted rate.
"""

import math

import numpy as np
import torch
from hypothesis import given
from hypothesis import strategies as st

import theory
from reference import DT, grad, ntxent_sum_loop, sphere_step, unit

dims = st.integers(2, 12)
seeds = st.integers(0, 2**31 - 1)


def _frame(d, seed):
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(d, d, dtype=DT, generator=g))
    return q[:, 0], q[:, 1]


@given(th=st.floats(0.01, math.pi - 0.01), aw=st.floats(0.01, 8.0), d=dims, seed=seeds)
def test_anchor_map_matches_update(th, aw, d, seed):
    p, t = _frame(d, seed)
    u = math.cos(th) * p + math.sin(th) * t
    w = 0.7
    eta = aw / w
    f = theory.step_map("anchor", eta=eta, w=w)
    for _ in range(3):
        g = grad(lambda x: w * (1 - x @ p), u)
        u = sphere_step(u, g, eta)
        th = float(f(th))
        angle = math.atan2(float((u - (u @ p) * p).norm()), float(u @ p))
        assert abs(angle - abs(th)) < 1e-9


@given(th=st.floats(0.02, math.pi - 0.02), beta=st.floats(-4, 4), d=dims, seed=seeds,
       raw=st.booleans())
def test_pair_maps_match_update(th, beta, d, seed, raw):
    e1, e2 = _frame(d, seed)
    uv = torch.stack([e1, math.cos(th) * e1 + math.sin(th) * e2])
    w = 1.3 if beta >= 0 else -1.3
    eta = abs(beta) / 1.3
    if eta == 0:
        return
    g = grad(lambda x: -w * (x[0] @ x[1]), uv)
    new = sphere_step(uv, g, eta, project=not raw)
    f = theory.step_map("pair_unprojected" if raw else "pair", eta=eta, w=w)
    assert abs(float(new[0] @ new[1]) - float(f(math.cos(th)))) < 1e-9


@given(beta=st.floats(0.05, 3.0))
def test_pair_threshold_is_where_attraction_fails(beta):
    """Iterate the projected pair map from a small angle: it shrinks iff beta < 1."""
    f = theory.step_map("pair", eta=beta, w=1.0)
    c = math.cos(1e-3)
    for _ in range(30):
        c = float(f(c))
    final = math.acos(min(1.0, c))
    eta_c = theory.critical_lr("pair", w=1.0)
    if beta < eta_c * 0.97:
        assert final < 1e-3
    elif beta > eta_c * 1.03:
        assert final > 1e-3


def _balanced_negatives(u0, pairs, seed):
    rng = np.random.default_rng(seed)
    return torch.tensor(theory.ntxent.balanced_negatives(rng, u0.numpy(), pairs), dtype=DT)


@given(tau=st.floats(0.15, 1.5), d=st.integers(3, 8), pairs=st.integers(1, 4), seed=seeds)
def test_ntxent_pair_threshold_on_full_update(tau, d, pairs, seed):
    g = torch.Generator().manual_seed(seed)
    u0 = unit(torch.randn(d, dtype=DT, generator=g))
    negs = _balanced_negatives(u0, pairs, seed)
    stats = theory.ntxent.negative_statistics(u0.numpy(), negs.numpy(), tau)
    vals, vecs = np.linalg.eigh(stats["moment"])
    top = torch.tensor(vecs[:, -1])
    eta_c = theory.critical_lr(
        "ntxent_pair", tau=tau, p_pos=stats["p_pos"], neg_cos=stats["c_neg"],
        neg_spread=float(vals[-1]),
    )

    def loss(x):
        u, v = x[0], x[1]
        su = torch.cat([(u @ v).reshape(1), negs @ u]) / tau
        sv = torch.cat([(u @ v).reshape(1), negs @ v]) / tau
        return -2 * (u @ v) / tau + torch.logsumexp(su, 0) + torch.logsumexp(sv, 0)

    def gap_after(eta, steps=40):
        x = unit(torch.stack([u0 + 1e-6 * top, u0 - 1e-6 * top]))
        for _ in range(steps):
            x = sphere_step(x, grad(loss, x), eta)
        return float((x[0] - x[1]).norm())

    start = 2e-6
    assert gap_after(0.9 * eta_c) < start
    assert gap_after(1.1 * eta_c) > start


@given(n=st.integers(3, 9), tau=st.floats(0.2, 1.0))
def test_rank1_cycle_threshold_on_full_update(n, tau):
    eta_c = theory.critical_lr("rank1_cycle", tau=tau, n=n)
    if not math.isfinite(eta_c):
        return
    base, pos, _ = theory.ntxent.rank1_configuration(n, 3)
    g = torch.Generator().manual_seed(n)
    noise = 1e-7 * torch.randn(2 * n, 3, dtype=DT, generator=g)
    noise[:, 0] = 0

    def spread_after(eta, steps=60):
        x = unit(torch.tensor(base, dtype=DT) + noise)
        for _ in range(steps):
            x = sphere_step(x, grad(lambda z: ntxent_sum_loop(z, pos, tau, raw=True), x), eta,
                            project=False)
        return float(torch.linalg.svdvals(x)[1])

    start = float(torch.linalg.svdvals(unit(torch.tensor(base, dtype=DT) + noise))[1])
    assert spread_after(0.85 * eta_c) > start
    assert spread_after(1.15 * eta_c) < start


@given(n=st.sampled_from([2, 8, 32, 64]), d=st.integers(2, 6), tau=st.floats(0.05, 2.0),
       seed=seeds)
def test_collapsed_configurations_are_stationary_under_autograd(n, d, tau, seed):
    g = torch.Generator().manual_seed(seed)
    ustar = unit(torch.randn(d, dtype=DT, generator=g))
    signs = torch.randint(0, 2, (n,), generator=g).to(DT) * 2 - 1
    z = signs[:, None] * ustar * (0.5 + torch.rand(n, 1, dtype=DT, generator=g))
    pos = torch.arange(n) ^ 1

    def loss(x):  # vectorised NT-Xent from the formula
        u = unit(x)
        s = u @ u.T / tau
        s = s.masked_fill(torch.eye(n, dtype=torch.bool), float("-inf"))
        return (-s[torch.arange(n), pos] + torch.logsumexp(s, 1)).sum()

    gz = grad(loss, z)
    generic = grad(loss, z + 0.3 * torch.randn(n, d, dtype=DT, generator=g))
    assert float(gz.abs().max()) <= 1e-10 * float(generic.abs().max())


@given(n=st.integers(2, 10), d=st.integers(2, 6), tau=st.floats(0.1, 1.0),
       eta=st.floats(0.01, 30.0), seed=seeds)
def test_norm_growth_identity_under_autograd(n, d, tau, eta, seed):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, d, dtype=DT, generator=g)
    pos = torch.randperm(n, generator=g)
    gz = grad(lambda x: ntxent_sum_loop(x, pos, tau), z)
    assert float((gz * z).sum(1).abs().max()) < 1e-12 * float(gz.norm() * z.norm() + 1)
    new = z - eta * gz
    lhs, rhs = (new**2).sum(1), (z**2).sum(1) + eta**2 * (gz**2).sum(1)
    assert torch.allclose(lhs, rhs, rtol=1e-12, atol=0)


@given(k=st.integers(2, 4), extra=st.integers(0, 3), n=st.integers(4, 16), seed=seeds)
def test_clop_floor_under_autograd(k, extra, n, seed):
    d = k + extra
    g = torch.Generator().manual_seed(seed)
    protos = torch.linalg.qr(torch.randn(d, d, dtype=DT, generator=g))[0][:, :k].T
    labels = torch.randint(-1, k, (n,), generator=g)
    labels[:k] = torch.arange(k)
    lab = labels >= 0
    ustar = unit(torch.randn(d, dtype=DT, generator=g))
    u = (torch.randint(0, 2, (n,), generator=g).to(DT) * 2 - 1)[:, None] * ustar
    lam = 0.8

    def clop(x):
        cos = (unit(x[lab]) * protos[labels[lab]]).sum(1)
        return lam / int(lab.sum()) * (1 - cos).sum()

    gu = grad(clop, u)
    gu = gu - (gu * u).sum(1, keepdim=True) * u
    counts = np.bincount(labels[lab].numpy(), minlength=k)
    assert float(gu.norm()) >= theory.clop_gradient_floor(counts, lam) * (1 - 1e-12)

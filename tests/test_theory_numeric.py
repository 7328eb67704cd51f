"""Closed forms and thresholds of `theory` against the literal update rule, in float64.

References: torch autograd on losses written from their formulas (tests/reference.py),
one step, renormalise. Angles, eta, w, tau, n and dimension are drawn by hypothesis.
Tolerances: 1e-9 absolute on cosines/angles for one-step maps. Thresholds: the dense float64
Jacobian of the literal update (torch.autograd.functional.jacobian) has its critical
multiplier (-1 or +1) at the predicted rate to 1e-6, and brackets of 1% (0.99x, 1.01x) fall on
either side; the pair threshold is checked by iterating the literal update at +-1%.
"""

import math

import numpy as np
import torch
from hypothesis import given, settings
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


def literal_step(loss, eta, project=True):
    """The literal update as a differentiable function: gradient step on ``loss`` (projected
    or raw), then renormalisation of every row."""

    def step(x):
        g = torch.autograd.grad(loss(x), x, create_graph=True)[0] if x.requires_grad else None
        if g is None:
            xx = x.detach().requires_grad_(True)
            g = torch.autograd.grad(loss(xx), xx)[0]
        if project:
            g = g - (x * g).sum(-1, keepdim=True) * x
        return unit(x - eta * g)

    return step


def step_jacobian(loss, x, eta, project=True) -> torch.Tensor:
    """Dense float64 Jacobian of the literal update at ``x`` (rows), shape (x.numel(), x.numel())."""
    f = literal_step(loss, eta, project)
    jac = torch.autograd.functional.jacobian(lambda y: f(y), x.detach().clone(), create_graph=False)
    return jac.reshape(x.numel(), x.numel())


@given(beta=st.floats(0.05, 3.0), d=st.integers(2, 5), seed=seeds)
def test_pair_threshold_is_where_attraction_fails(beta, d, seed):
    """Iterate the literal projected update of an attracting pair (not the map): the angle
    shrinks for beta <= 0.99 beta_c and grows for beta >= 1.01 beta_c."""
    eta_c = theory.critical_lr("pair", w=1.0)
    if abs(beta / eta_c - 1) < 0.01:
        return
    e1, e2 = _frame(d, seed)
    x = torch.stack([e1, math.cos(1e-4) * e1 + math.sin(1e-4) * e2])
    for _ in range(300):
        x = sphere_step(x, grad(lambda z: -(z[0] @ z[1]), x), beta)
    final = float(torch.atan2((x[1] - (x[1] @ x[0]) * x[0]).norm(), x[1] @ x[0]))
    if beta < eta_c:
        assert final < 1e-4
    else:
        assert final > 1e-4


def _balanced_negatives(u0, pairs, seed):
    rng = np.random.default_rng(seed)
    return torch.tensor(theory.ntxent.balanced_negatives(rng, u0.numpy(), pairs), dtype=DT)


def ntxent_pair_loss(negs, tau):
    """The claim's loss: the pair's two NT-Xent anchor terms against fixed negatives."""

    def loss(x):
        u, v = unit(x[0]), unit(x[1])
        su = torch.cat([(u @ v).reshape(1), negs @ u]) / tau
        sv = torch.cat([(u @ v).reshape(1), negs @ v]) / tau
        return -2 * (u @ v) / tau + torch.logsumexp(su, 0) + torch.logsumexp(sv, 0)

    return loss


@given(tau=st.floats(0.15, 1.5), d=st.integers(3, 8), pairs=st.integers(1, 4), seed=seeds)
def test_ntxent_pair_threshold_on_full_update(tau, d, pairs, seed):
    """At eta_c the relative mode (top, -top) of the literal update's dense Jacobian has
    multiplier -1 to 1e-6; the candidate tau/(2(1 - p)) is off by (4 - c + s/tau)/4 >= 3/4."""
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
    x = torch.stack([u0, u0])
    v = torch.cat([top, -top]) / math.sqrt(2)
    jv = step_jacobian(ntxent_pair_loss(negs, tau), x, eta_c) @ v
    assert float((jv + v).norm()) < 1e-6
    for f in (0.99, 1.01):  # a 1% bracket: |multiplier| < 1 below, > 1 above
        m = float(v @ step_jacobian(ntxent_pair_loss(negs, tau), x, f * eta_c) @ v)
        assert (abs(m) < 1) == (f < 1)


def ntxent_sum_raw(z, pos, tau):
    """NT-Xent summed over anchors on raw dot products, vectorised from SimCLR eq. 1."""
    m = z.shape[0]
    s = (z @ z.T / tau).masked_fill(torch.eye(m, dtype=torch.bool), float("-inf"))
    return (-s[torch.arange(m), torch.as_tensor(pos)] + torch.logsumexp(s, 1)).sum()


def rank1_tangent_spectrum(n, tau, eta, d=2):
    """Eigenvalues (unsymmetrised) of the literal sphere_raw update's dense Jacobian at the
    +-u* configuration, restricted to the tangent space, with the global rotation (-1 or +1,
    d - 1 of them, vector sigma) removed."""
    base, pos, sig = theory.ntxent.rank1_configuration(n, d)
    x = torch.tensor(base, dtype=DT)
    jac = step_jacobian(lambda z: ntxent_sum_raw(z, pos, tau), x, eta, project=False)
    # tangent coordinates: the components orthogonal to u* = e_0 of every row
    idx = [i * d + k for i in range(2 * n) for k in range(1, d)]
    t = jac[idx][:, idx].numpy()
    rot = np.kron(sig, np.eye(d - 1)[0])  # global rotation along e_1
    rot /= np.linalg.norm(rot)
    sign = float(rot @ t @ rot)
    eig = np.linalg.eigvals(t)
    keep = np.ones(eig.size, bool)
    for _ in range(d - 1):  # drop the d - 1 global rotations
        j = int(np.argmin(np.abs(eig - sign) + (~keep) * 1e9))
        keep[j] = False
    return eig[keep], sign


@settings(max_examples=10)
@given(n=st.integers(3, 9), tau=st.floats(0.2, 1.0))
def test_rank1_cycle_threshold_on_full_update(n, tau):
    """At eta_c the largest non-rotation multiplier of the literal update is 1 to 1e-6 (so the
    candidate, 1.5-7% away for n >= 5, is excluded); at 0.99 eta_c it is above 1, at 1.01
    eta_c below."""
    eta_c = theory.critical_lr("rank1_cycle", tau=tau, n=n)
    if not math.isfinite(eta_c):
        return
    eig, _ = rank1_tangent_spectrum(n, tau, eta_c)
    assert float(np.max(np.abs(eig.imag))) < 1e-9
    assert abs(float(np.max(np.abs(eig))) - 1) < 1e-6
    assert float(np.max(np.abs(rank1_tangent_spectrum(n, tau, 0.99 * eta_c)[0]))) > 1
    assert float(np.max(np.abs(rank1_tangent_spectrum(n, tau, 1.01 * eta_c)[0]))) < 1


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

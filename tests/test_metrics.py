"""Metrics against independent computations, batched equals per-run, collapse states."""

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import reference as ref
from simulate import metrics as M

DT = torch.float64


@given(k=st.integers(1, 8), d=st.integers(8, 24), seed=st.integers(0, 10_000))
def test_effective_rank_of_a_random_k_subspace_is_close_to_k(k, d, seed):
    g = torch.Generator().manual_seed(seed)
    basis, _ = torch.linalg.qr(torch.randn(d, k, generator=g, dtype=DT))
    z = torch.randn(4000, k, generator=g, dtype=DT) @ basis.T
    er = float(M.effective_rank(z)[0])
    assert abs(er - k) <= 0.1 * k + 0.05
    assert er == pytest.approx(ref.rankme_numpy(z.numpy()), rel=1e-10)


def test_batched_metrics_equal_per_run():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(3, 40, 6, generator=g, dtype=DT)
    y = torch.randint(0, 3, (40,), generator=g)
    fns = [M.effective_rank, M.embedding_variance, M.mean_pairwise_cosine, M.max_pairwise_cosine,
           M.mean_norm, M.mean_sq_pairwise_cosine, M.collapse_state,
           lambda x: M.nc1(x, y, 3), lambda x: M.gram_distance(x, y, 3),
           lambda x: M.min_class_angle(x, y, 3)]
    for f in fns:
        batched = f(z)
        single = torch.cat([f(z[r]) for r in range(3)])
        assert torch.allclose(batched.double(), single.double(), rtol=1e-10)


def test_cosine_stats_against_loops():
    z = torch.randn(12, 4, dtype=DT)
    u = z / z.norm(dim=1, keepdim=True)
    cs = [float(u[i] @ u[j]) for i in range(12) for j in range(12) if i != j]
    assert float(M.mean_pairwise_cosine(z)[0]) == pytest.approx(np.mean(cs), rel=1e-12)
    assert float(M.max_pairwise_cosine(z)[0]) == pytest.approx(max(cs), rel=1e-12)
    assert float(M.mean_sq_pairwise_cosine(z)[0]) == pytest.approx(np.mean(np.square(cs)), rel=1e-12)
    var = sum(float(((z[:, j] - z[:, j].mean()) ** 2).mean()) for j in range(4))
    assert float(M.embedding_variance(z)[0]) == pytest.approx(var, rel=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_max_cosine_over_many_row_blocks_equals_the_full_gram(dtype):
    g = torch.Generator().manual_seed(5)
    z = torch.randn(64, 300, 3, generator=g, dtype=torch.float64)  # blocks of 109 rows
    z[7, 250] = z[7, 3] * 2.0  # an exact duplicate direction across blocks: cos = 1
    u = z / z.norm(dim=-1, keepdim=True)
    c = u @ u.transpose(1, 2) - 3 * torch.eye(300, dtype=torch.float64)
    want = c.amax((1, 2))
    got = M.max_pairwise_cosine(z.to(dtype))
    assert torch.allclose(got, want, atol=1e-6 if dtype == torch.float32 else 1e-12)
    assert float(got[7]) == pytest.approx(1.0, abs=1e-6)


def test_nc1_against_papyan_formula_loop():
    g = torch.Generator().manual_seed(1)
    z = torch.randn(30, 5, generator=g, dtype=DT)
    y = torch.randint(-1, 3, (30,), generator=g)
    keep = y >= 0
    zl, yl = z[keep].numpy(), y[keep].numpy()
    mu = np.stack([zl[yl == c].mean(0) for c in range(3)])
    sw = sum(np.outer(zl[i] - mu[yl[i]], zl[i] - mu[yl[i]]) for i in range(len(yl))) / len(yl)
    gm = mu.mean(0)
    sb = sum(np.outer(m - gm, m - gm) for m in mu) / 3
    want = np.trace(sw @ np.linalg.pinv(sb)) / 3
    assert float(M.nc1(z, y, 3)[0]) == pytest.approx(want, rel=1e-8)


def test_gram_distance_zero_at_target():
    P = torch.eye(4, dtype=DT)[:3]
    y = torch.arange(3).repeat(5)
    assert float(M.gram_distance(P[y] * 2, y, 3, "orthonormal")[0]) == pytest.approx(0, abs=1e-12)
    from simulate.losses import make_prototypes

    S = make_prototypes(3, 4, "simplex")
    assert float(M.gram_distance(S[y], y, 3, "simplex")[0]) == pytest.approx(0, abs=1e-12)
    assert float(M.gram_distance(S[y], y, 3, "orthonormal")[0]) > 0.1
    assert float(M.min_class_angle(S[y], y, 3)[0]) == pytest.approx(np.arccos(-0.5), rel=1e-10)


def test_prototype_cosine_ignores_unlabelled():
    P = torch.eye(3, dtype=DT)
    y = torch.tensor([0, 1, 2, -1])
    z = torch.cat([P, -P[:1]])
    assert float(M.prototype_cosine(z, y, P)[0]) == pytest.approx(1.0)


def test_knn_against_brute_force():
    g = torch.Generator().manual_seed(2)
    tr, te = torch.randn(25, 3, generator=g, dtype=DT), torch.randn(10, 3, generator=g, dtype=DT)
    ytr, yte = torch.randint(0, 3, (25,), generator=g), torch.randint(0, 3, (10,), generator=g)
    correct = 0
    for i in range(10):
        sims = [float(ref.cos(te[i], tr[j])) for j in range(25)]
        nb = np.argsort(sims)[::-1][:5].copy()
        votes = np.bincount(ytr[nb].numpy(), minlength=3)
        correct += int(np.argmax(votes) == int(yte[i]))
    assert float(M.knn_accuracy(tr, ytr, te, yte, 3)[0]) == pytest.approx(correct / 10)


def test_linear_probe_separable_and_chance():
    g = torch.Generator().manual_seed(3)
    y = torch.randint(0, 4, (400,), generator=g)
    z = torch.nn.functional.one_hot(y, 4).to(DT) * 5 + 0.1 * torch.randn(400, 4, generator=g, dtype=DT)
    assert float(M.linear_probe_accuracy(z[:300], y[:300], z[300:], y[300:], 4)[0]) == 1.0
    noise = torch.randn(400, 4, generator=g, dtype=DT)
    assert float(M.linear_probe_accuracy(noise[:300], y[:300], noise[300:], y[300:], 4)[0]) < 0.5


def test_collapse_states():
    u = torch.tensor([1.0, 2.0, 0.5], dtype=DT)
    point = u.repeat(10, 1) * torch.rand(10, 1, dtype=DT)
    line = u * torch.tensor([1.0, -1.0]).repeat(5)[:, None].to(DT)
    spread = torch.randn(50, 3, dtype=DT, generator=torch.Generator().manual_seed(0))
    states = torch.cat([M.collapse_state(x) for x in (point, line, spread)]).tolist()
    assert states == [M.FULLY_COLLAPSED, M.RANK1_COLLAPSED, M.HEALTHY]
    assert {M.STATE_NAMES[s] for s in states} == {"collapsed", "rank1", "healthy"}


def test_bad_shape():
    with pytest.raises(ValueError, match="embeddings"):
        M.effective_rank(torch.randn(3))

"""Losses against slow loops from their papers' formulas, invariants, numerics, bad input."""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import reference as ref
from simulate.losses import (
    BASE_LOSSES, CLOPLoss, NTXentLoss, SupConLoss, VICRegLoss, barlow_twins, build_loss,
    clop_term, cosine_pair, dcl, make_prototypes, nt_xent, supcon, vicreg,
)

DT = torch.float64
seeds = st.integers(0, 2**31 - 1)


def views(seed, r, b, d, dtype=DT):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(r, b, d, generator=g, dtype=dtype), torch.randn(r, b, d, generator=g, dtype=dtype))


def labels_for(seed, b, k, unlabelled=True):
    g = torch.Generator().manual_seed(seed + 7)
    return torch.randint(-1 if unlabelled else 0, k, (b,), generator=g)


# ----------------------------------------------------------------------------- references


@given(seed=seeds, b=st.integers(1, 6), d=st.integers(2, 5), tau=st.floats(0.05, 2.0))
def test_ntxent_matches_simclr_loop(seed, b, d, tau):
    z1, z2 = views(seed, 1, b, d)
    assert torch.allclose(nt_xent(z1, z2, tau)[0], ref.ntxent_views_loop(z1[0], z2[0], tau), rtol=1e-10)


@pytest.mark.parametrize("b", [1, 2, 8, 32])
@pytest.mark.parametrize("tau", [0.01, 0.5, 2.0])
def test_collapsed_closed_forms(b, tau):
    z = torch.ones(3, b, 4, dtype=DT)
    assert torch.allclose(nt_xent(z, z, tau), torch.full((3,), math.log(2 * b - 1), dtype=DT))
    if b >= 2:
        assert torch.allclose(dcl(z, z, tau), torch.full((3,), math.log(2 * b - 2), dtype=DT))


@given(seed=seeds, b=st.integers(1, 6), d=st.integers(2, 5), tau=st.floats(0.05, 2.0), k=st.integers(1, 3))
def test_supcon_matches_khosla_loop(seed, b, d, tau, k):
    z1, z2 = views(seed, 1, b, d)
    lab = labels_for(seed, b, k)
    got = supcon(z1, z2, lab, tau)[0]
    assert torch.allclose(got, ref.supcon_views_loop(z1[0], z2[0], lab, tau), rtol=1e-10)


@given(seed=seeds, b=st.integers(1, 8), tau=st.floats(0.05, 2.0))
def test_supcon_with_unique_labels_is_ntxent(seed, b, tau):
    z1, z2 = views(seed, 2, b, 4)
    uniq = torch.arange(b)
    assert torch.allclose(supcon(z1, z2, uniq, tau), nt_xent(z1, z2, tau), rtol=1e-12)
    assert torch.allclose(supcon(z1, z2, None, tau), nt_xent(z1, z2, tau), rtol=1e-12)


@given(seed=seeds, b=st.integers(2, 6), tau=st.floats(0.05, 2.0))
def test_dcl_matches_loop(seed, b, tau):
    z1, z2 = views(seed, 1, b, 3)
    assert torch.allclose(dcl(z1, z2, tau)[0], ref.dcl_views_loop(z1[0], z2[0], tau), rtol=1e-10)


@given(seed=seeds, b=st.integers(1, 8), k=st.integers(1, 4), w=st.floats(0.0, 5.0),
       distance=st.sampled_from(["cosine", "euclidean", "manhattan"]))
def test_clop_matches_formula(seed, b, k, w, distance):
    d = k + 1
    z1, z2 = views(seed, 1, b, d)
    lab = labels_for(seed, b, k)
    protos = make_prototypes(k, d, seed=seed % 1000)
    got = clop_term(z1, z2, lab, protos, w, distance)[0]
    want = ref.clop_loop(z1[0], z2[0], lab, protos, w, distance)
    assert torch.allclose(got, torch.as_tensor(want, dtype=DT), atol=1e-12)


@given(seed=seeds, b=st.integers(2, 5), d=st.integers(1, 4), scale=st.floats(0.1, 2.0))
def test_vicreg_and_barlow_match_official_loops(seed, b, d, scale):
    z1, z2 = views(seed, 1, b, d)
    z1, z2 = z1 * scale, z2 * scale
    assert float(vicreg(z1, z2)[0]) == pytest.approx(ref.vicreg_loop(z1[0], z2[0]), rel=1e-10)
    assert torch.allclose(barlow_twins(z1, z2)[0], ref.barlow_loop(z1[0], z2[0]), rtol=1e-10)


def close_views(seed, b, d, spread):
    """Two views of one batch: ``x + noise`` each, ``x`` of standard deviation ``spread``
    (below 1 the variance hinge is active in most dimensions)."""
    g = torch.Generator().manual_seed(seed)
    x = spread * torch.randn(b, d, generator=g, dtype=DT)
    noise = 0.3 * torch.randn(2, b, d, generator=g, dtype=DT)
    return x + noise[0], x + noise[1]


@pytest.mark.parametrize("b, d", [(2, 1), (3, 2), (8, 4), (16, 8), (64, 16), (33, 5)])
@pytest.mark.parametrize("spread", [0.2, 0.7, 1.5])
def test_vicreg_follows_the_official_convention(b, d, spread):
    """The variance term is averaged over the two branches (facebookresearch/vicreg and
    lightly), the covariance term summed over them, the invariance term a mean over B x D:
    checked against a per-element float64 loop at default and at other weights."""
    z1, z2 = close_views(b * 100 + d, b, d, spread)
    assert float(vicreg(z1, z2)) == pytest.approx(ref.vicreg_loop(z1, z2), rel=1e-12, abs=1e-12)
    weights = {"sim_weight": 2.0, "var_weight": 7.0, "cov_weight": 0.3, "gamma": 1.5, "eps": 1e-3}
    want = ref.vicreg_loop(z1, z2, lam=2.0, mu=7.0, nu=0.3, gamma=1.5, eps=1e-3)
    assert float(VICRegLoss(**weights)(z1, z2)) == pytest.approx(want, rel=1e-12, abs=1e-12)
    s, v1, v2, c1, c2 = ref.vicreg_terms_loop(z1, z2)
    one_term = {
        "invariance": (s, {"sim_weight": 1.0, "var_weight": 0.0, "cov_weight": 0.0}),
        "variance": ((v1 + v2) / 2, {"sim_weight": 0.0, "var_weight": 1.0, "cov_weight": 0.0}),
        "covariance": (c1 + c2, {"sim_weight": 0.0, "var_weight": 0.0, "cov_weight": 1.0}),
    }
    for name, (want, w) in one_term.items():
        assert float(vicreg(z1, z2, **w)) == pytest.approx(want, rel=1e-12, abs=1e-14), name


@pytest.mark.parametrize("b, d", [(8, 4), (64, 16)])
def test_vicreg_gap_of_the_issue_is_gone(b, d):
    """At the settings of the report (weights 25, 25, 1; B = 8, D = 4 and B = 64, D = 16) the
    loss equals the official formula; the paper's eq. (6) read literally (variance terms
    summed over the branches) is larger by ``mu (v1 + v2) / 2``; it is what ``vicreg`` gives
    with ``var_weight = 2 mu``."""
    z1, z2 = close_views(b + d, b, d, 0.5)
    s, v1, v2, c1, c2 = ref.vicreg_terms_loop(z1, z2)
    official = 25 * s + 25 * (v1 + v2) / 2 + (c1 + c2)
    literal = 25 * s + 25 * (v1 + v2) + (c1 + c2)
    assert v1 + v2 > 0.3 and literal > 1.1 * official
    assert float(vicreg(z1, z2)) == pytest.approx(official, rel=1e-12)
    assert float(vicreg(z1, z2, var_weight=50.0)) == pytest.approx(literal, rel=1e-12)


def test_prototypes_orthonormal_and_simplex():
    p = make_prototypes(5, 8, seed=3)
    assert torch.allclose(p @ p.T, torch.eye(5, dtype=DT), atol=1e-12)
    s = make_prototypes(4, 3, "simplex")
    g = s @ s.T
    assert torch.allclose(torch.diagonal(g), torch.ones(4, dtype=DT))
    off = g[~torch.eye(4, dtype=torch.bool)]
    assert torch.allclose(off, torch.full_like(off, -1 / 3), atol=1e-12)
    assert torch.equal(make_prototypes(5, 8, seed=3), p)


# ----------------------------------------------------------------------------- invariants

COSINE = {
    "ntxent": lambda z1, z2, lab, P, tau: nt_xent(z1, z2, tau),
    "supcon": lambda z1, z2, lab, P, tau: supcon(z1, z2, lab, tau),
    "dcl": lambda z1, z2, lab, P, tau: dcl(z1, z2, tau),
    "align": lambda z1, z2, lab, P, tau: cosine_pair(z1, z2, 1.3),
    "clop": lambda z1, z2, lab, P, tau: clop_term(z1, z2, lab, P, 0.7),
    "ntxent+clop": lambda z1, z2, lab, P, tau: nt_xent(z1, z2, tau) + clop_term(z1, z2, lab, P, 2.0),
}
names = st.sampled_from(sorted(COSINE))


def setup(seed, b=6, d=5, k=3, r=2):
    z1, z2 = views(seed, r, b, d)
    return z1, z2, labels_for(seed, b, k), make_prototypes(k, d, seed=1)


@given(name=names, seed=seeds, tau=st.floats(0.1, 1.0))
def test_invariant_to_positive_row_scaling(name, seed, tau):
    z1, z2, lab, P = setup(seed)
    g = torch.Generator().manual_seed(seed)
    s1 = torch.rand(z1.shape[:-1] + (1,), generator=g, dtype=DT) * 10 + 0.01
    s2 = torch.rand(z1.shape[:-1] + (1,), generator=g, dtype=DT) * 10 + 0.01
    f = COSINE[name]
    assert torch.allclose(f(z1 * s1, z2 * s2, lab, P, tau), f(z1, z2, lab, P, tau), rtol=1e-10)


@given(name=names, seed=seeds, tau=st.floats(0.1, 1.0))
def test_invariant_to_shared_rotation(name, seed, tau):
    z1, z2, lab, P = setup(seed)
    q, _ = torch.linalg.qr(torch.randn(5, 5, dtype=DT, generator=torch.Generator().manual_seed(seed)))
    f = COSINE[name]
    assert torch.allclose(f(z1 @ q, z2 @ q, lab, P @ q, tau), f(z1, z2, lab, P, tau), rtol=1e-10)


@given(name=names, seed=seeds, tau=st.floats(0.1, 1.0))
def test_invariant_to_batch_permutation_and_view_swap(name, seed, tau):
    z1, z2, lab, P = setup(seed)
    perm = torch.randperm(z1.shape[1], generator=torch.Generator().manual_seed(seed))
    f = COSINE[name]
    base = f(z1, z2, lab, P, tau)
    assert torch.allclose(f(z1[:, perm], z2[:, perm], lab[perm], P, tau), base, rtol=1e-10)
    assert torch.allclose(f(z2, z1, lab, P, tau), base, rtol=1e-10)


@pytest.mark.parametrize("name", ["vicreg", "barlow"])
def test_non_cosine_losses_symmetric_and_permutation_invariant(name):
    z1, z2 = views(3, 2, 7, 4)
    f = {"vicreg": vicreg, "barlow": barlow_twins}[name]
    perm = torch.randperm(7, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(f(z2, z1), f(z1, z2), rtol=1e-10)
    assert torch.allclose(f(z1[:, perm], z2[:, perm]), f(z1, z2), rtol=1e-10)


@given(name=names, seed=seeds, tau=st.floats(0.1, 1.0))
def test_gradient_orthogonal_to_each_row(name, seed, tau):
    z1, z2, lab, P = setup(seed)
    z1.requires_grad_(True)
    z2.requires_grad_(True)
    COSINE[name](z1, z2, lab, P, tau).sum().backward()
    for z in (z1, z2):
        dots = (z.grad * z).sum(-1).abs()
        scale = z.grad.norm(dim=-1) * z.norm(dim=-1) + 1e-300
        assert float((dots / scale).detach().max()) < 1e-12


@given(seed=seeds, b=st.integers(1, 8), k=st.integers(1, 4))
def test_clop_zero_exactly_on_prototypes_bounded_and_blind_to_unlabelled(seed, b, k):
    d = k + 2
    P = make_prototypes(k, d, seed=seed % 97)
    lab = labels_for(seed, b, k)
    z1, z2 = views(seed, 1, b, d)
    val = clop_term(z1, z2, lab, P, 1.0)[0]
    assert 0.0 <= float(val) <= 2.0
    on = z1.clone()
    labelled = lab >= 0
    on[0, labelled] = P[lab[labelled]] * 3.0
    assert float(clop_term(on, on, lab, P, 1.0)[0]) == pytest.approx(0.0, abs=1e-12)
    if labelled.any():
        off = on.clone()
        i = int(torch.nonzero(labelled)[0])
        off[0, i] = off[0, i] + 0.1 * torch.randn(d, dtype=DT)
        assert float(clop_term(off, on, lab, P, 1.0)[0]) > 1e-10
    moved1, moved2 = z1.clone(), z2.clone()
    moved1[0, ~labelled] = torch.randn(int((~labelled).sum()), d, dtype=DT)
    moved2[0, ~labelled] = torch.randn(int((~labelled).sum()), d, dtype=DT)
    assert torch.allclose(clop_term(moved1, moved2, lab, P, 1.0), clop_term(z1, z2, lab, P, 1.0))


def test_clop_all_unlabelled_is_zero_with_zero_gradient():
    z1, z2 = views(0, 2, 4, 3)
    z1.requires_grad_(True)
    lab = torch.full((4,), -1)
    v = clop_term(z1, z2, lab, make_prototypes(2, 3), 1.0)
    v.sum().backward()
    assert torch.equal(v, torch.zeros(2, dtype=DT)) and torch.equal(z1.grad, torch.zeros_like(z1))


@pytest.mark.parametrize("loss", sorted(BASE_LOSSES))
@pytest.mark.parametrize("clop", [0.0, 0.5])
def test_stacked_runs_equal_one_at_a_time(loss, clop):
    z1, z2 = views(11, 4, 6, 5)
    labels = torch.stack([labels_for(s, 6, 3) for s in range(4)])
    f = build_loss(loss, temperature=0.3, clop_weight=clop, num_classes=3, dim=5)
    stacked = f(z1, z2, labels)
    single = torch.stack([f(z1[r], z2[r], labels[r]) for r in range(4)])
    assert torch.allclose(stacked, single, rtol=1e-12)


# ----------------------------------------------------------------------------- numerics

DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU"))]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("loss", sorted(BASE_LOSSES))
def test_dtype_device_matrix(loss, dtype, device):
    z1, z2 = views(5, 2, 16, 8)
    labels = labels_for(5, 16, 3)
    f = build_loss(loss, temperature=0.01, clop_weight=0.5, num_classes=3, dim=8).to(device)
    want = f(z1.to(device), z2.to(device), labels.to(device))
    a = z1.to(device=device, dtype=dtype).requires_grad_(True)
    b = z2.to(device=device, dtype=dtype).requires_grad_(True)
    got = f(a, b, labels.to(device))
    got.sum().backward()
    assert got.dtype == dtype
    assert torch.isfinite(got).all() and torch.isfinite(a.grad.float()).all()
    tol = {torch.float64: 1e-12, torch.float32: 1e-4, torch.bfloat16: 3e-2, torch.float16: 5e-3}[dtype]
    assert torch.allclose(got.double(), want.double(), rtol=tol, atol=tol * 10)


@pytest.mark.parametrize("loss", ["ntxent", "supcon", "dcl"])
def test_tiny_temperature_float32_collapsed_and_spread(loss):
    f = build_loss(loss, temperature=0.01)
    for z in (torch.ones(1, 32, 8), torch.randn(1, 32, 8)):
        a = z.clone().requires_grad_(True)
        v = f(a, z.clone())
        v.sum().backward()
        assert torch.isfinite(v).all() and torch.isfinite(a.grad).all()


def test_single_point_batch():
    z1, z2 = views(0, 1, 1, 3)
    assert torch.allclose(nt_xent(z1, z2, 0.5), torch.zeros(1, dtype=DT))
    z1.requires_grad_(True)
    supcon(z1, z2, torch.tensor([-1]), 0.5).sum().backward()
    assert torch.isfinite(z1.grad).all()


def test_modules_unbatched_input():
    z1, z2 = views(0, 1, 5, 3)
    assert NTXentLoss(0.5)(z1[0], z2[0]).shape == ()
    assert torch.allclose(SupConLoss(0.5)(z1[0], z2[0]), NTXentLoss(0.5)(z1, z2)[0])


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "call, word",
    [
        (lambda: make_prototypes(5, 3), "k"),
        (lambda: CLOPLoss(5, 3), "k"),
        (lambda: NTXentLoss(0.0), "temperature"),
        (lambda: nt_xent(*views(0, 1, 3, 2), tau=-1.0), "tau"),
        (lambda: SupConLoss(-0.5), "temperature"),
        (lambda: CLOPLoss(2, 3, weight=-1.0), "weight"),
        (lambda: build_loss("ntxent", clop_weight=-0.1, num_classes=2, dim=3), "clop_weight"),
        (lambda: build_loss("nope"), "loss"),
        (lambda: clop_term(*views(0, 1, 3, 4), torch.tensor([0, 1, 5]), make_prototypes(3, 4)), "labels"),
        (lambda: clop_term(*views(0, 1, 3, 4), torch.tensor([0, 1, -2]), make_prototypes(3, 4)), "labels"),
        (lambda: nt_xent(torch.randn(2, 3, 4), torch.randn(2, 4, 4), 0.5), "z2"),
        (lambda: clop_term(*views(0, 1, 3, 4), torch.tensor([0, 1, 1]), make_prototypes(3, 4), distance="l3"), "distance"),
        (lambda: dcl(*views(0, 1, 1, 4), tau=0.5), "batch size"),
    ],
)
def test_bad_input_names_the_parameter(call, word):
    with pytest.raises(ValueError, match=word):
        call()


@given(seed=seeds, b=st.integers(1, 5), tau=st.floats(0.05, 2.0), raw=st.booleans())
def test_ntxent_gradient_matches_autograd_of_the_loop(seed, b, tau, raw):
    z1, z2 = views(seed, 1, b, 3)
    if raw:  # sphere_raw: unit rows, raw dot products
        z1, z2 = torch.nn.functional.normalize(z1, dim=-1), torch.nn.functional.normalize(z2, dim=-1)
    a1, a2 = z1.clone().requires_grad_(True), z2.clone().requires_grad_(True)
    nt_xent(a1, a2, tau, normalize=not raw).sum().backward()
    b1, b2 = z1[0].clone().requires_grad_(True), z2[0].clone().requires_grad_(True)
    pos = torch.cat([torch.arange(b, 2 * b), torch.arange(b)])
    (ref.ntxent_sum_loop(torch.cat([b1, b2]), pos, tau, raw=raw) / (2 * b)).backward()
    assert torch.allclose(a1.grad[0], b1.grad, rtol=1e-9, atol=1e-12)
    assert torch.allclose(a2.grad[0], b2.grad, rtol=1e-9, atol=1e-12)


def test_ntxent_gradcheck():
    z1, z2 = views(0, 2, 3, 4)
    torch.autograd.gradcheck(lambda a, b: nt_xent(a, b, 0.3), (z1.requires_grad_(), z2.requires_grad_()))


# ----------------------------------------------------------------------------- fused engine path


@given(seed=seeds, b=st.integers(1, 5), tau=st.floats(0.05, 2.0), lam=st.floats(0.0, 3.0), clop=st.booleans())
def test_fused_value_and_grad_match_float64_loops(seed, b, tau, lam, clop):
    """The engine's one-pass NT-Xent (+ lambda CLOP) value and gradient against autograd of
    the slow loops, run by run (two runs with different lambdas)."""
    from simulate.engine.fused import ntxent_clop_value_and_grad
    from simulate.losses.clop import prototype_targets

    k, d = 3, 4
    z1, z2 = views(seed, 2, b, d)
    z = torch.cat([z1, z2], 1)
    protos = make_prototypes(k, d, seed=seed % 7)
    labels = torch.stack([labels_for(seed, b, k), labels_for(seed + 1, b, k)])
    lams = torch.tensor([lam, 0.5 * lam], dtype=DT)
    packed = (*prototype_targets(labels, protos), lams) if clop else None
    loss, g = ntxent_clop_value_and_grad(z, tau, packed)
    pos = torch.cat([torch.arange(b, 2 * b), torch.arange(b)])
    for r in range(2):
        def f(x, r=r):
            val = ref.ntxent_sum_loop(x, pos, tau) / (2 * b)
            if clop:
                val = val + ref.clop_loop(x[:b], x[b:], labels[r], protos, float(lams[r]))
            return val

        assert float(loss[r]) == pytest.approx(float(f(z[r])), rel=1e-10, abs=1e-12)
        assert torch.allclose(g[r], ref.grad(f, z[r]), rtol=1e-9, atol=1e-12)
    _, g_skip = ntxent_clop_value_and_grad(z, tau, packed, value=False)
    assert torch.equal(g_skip, g)


@pytest.mark.parametrize("tau", [0.02, 0.015])
def test_float32_tiny_temperature_takes_the_max_shift_and_keeps_its_gradient(tau):
    """Below tau ~ 0.026 float32 cannot hold exp(1/tau) unshifted; the row-max path must give
    the float64 loop's gradient to float32 accuracy."""
    from simulate.losses.ntxent import symmetric_ok

    assert not symmetric_ok(tau, torch.float32) and symmetric_ok(tau, torch.float64)
    z1, z2 = views(3, 1, 6, 5)
    a1 = z1.float().requires_grad_(True)
    nt_xent(a1, z2.float(), tau).sum().backward()
    pos = torch.cat([torch.arange(6, 12), torch.arange(6)])
    want = ref.grad(lambda x: ref.ntxent_sum_loop(torch.cat([x, z2[0]]), pos, tau) / 12, z1[0])
    assert torch.isfinite(a1.grad).all()
    assert torch.allclose(a1.grad[0].double(), want, rtol=2e-3, atol=2e-3 * float(want.abs().max()))
    from simulate.engine.fused import ntxent_clop_value_and_grad

    _, g = ntxent_clop_value_and_grad(torch.cat([z1, z2], 1).float(), tau)
    assert torch.allclose(g[0, :6].double(), want, rtol=2e-3, atol=2e-3 * float(want.abs().max()))

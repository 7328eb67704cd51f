"""Stacked models equal their per-run counterparts; seeds do not depend on the stack."""

import pytest
import torch

from simulate.models import FreeEmbeddings, StackedMLP, check_mode, derive_seeds


def test_free_embeddings_per_run_seed_independent_of_stack():
    a = FreeEmbeddings([5, 9, 11], n=7, dim=3)
    b = FreeEmbeddings([11], n=7, dim=3)
    assert torch.equal(a.weight[2], b.weight[0])
    idx = torch.tensor([[0, 3], [1, 1], [6, 2]])
    out = a(idx)
    assert torch.equal(out[0, 1], a.weight[0, 3]) and torch.equal(out[2, 0], a.weight[2, 6])


def test_unit_init_and_renormalise():
    m = FreeEmbeddings([1], n=4, dim=3, unit_init=True)
    assert torch.allclose(m.weight.norm(dim=-1), torch.ones(1, 4))
    with torch.no_grad():
        m.weight.mul_(3)
    m.renormalise_()
    assert torch.allclose(m.weight.norm(dim=-1), torch.ones(1, 4))


@pytest.mark.parametrize("bn", [False, True])
def test_stacked_mlp_matches_per_run_linear_layers(bn):
    m = StackedMLP([3, 4], in_dim=5, hidden=7, out_dim=2, depth=3, batch_norm=bn, dtype=torch.float64)
    x = torch.randn(2, 9, 5, dtype=torch.float64)
    out = m(None, x)
    for r in range(2):
        h = x[r]
        for i, (w, b) in enumerate(zip(m.weights, m.biases)):
            lin = torch.nn.Linear(w.shape[1], w.shape[2], dtype=torch.float64)
            with torch.no_grad():
                lin.weight.copy_(w[r].T)
                lin.bias.copy_(b[r, 0])
            h = lin(h)
            if i < 2:
                if bn:
                    h = torch.nn.functional.batch_norm(h, None, None, training=True, eps=1e-5)
                h = torch.relu(h)
        assert torch.allclose(out[r], h, rtol=1e-12, atol=1e-12)
    single = StackedMLP([4], in_dim=5, hidden=7, out_dim=2, depth=3, batch_norm=bn, dtype=torch.float64)
    assert torch.allclose(single(None, x[1:]), out[1:], rtol=1e-12)


def test_derived_seeds_distinct_and_stable():
    s = derive_seeds(0, 5)
    assert len(set(s.tolist())) == 5 and (derive_seeds(0, 5) == s).all()


def test_update_mode_validation():
    mlp = StackedMLP([1], 2, 3, 2)
    assert check_mode("free", mlp) == "free"
    with pytest.raises(ValueError, match="update_mode"):
        check_mode("sphere", mlp)
    with pytest.raises(ValueError, match="update_mode"):
        check_mode("bogus")
    with pytest.raises(ValueError, match="depth"):
        StackedMLP([1], 2, 3, 2, depth=0)
    with pytest.raises(ValueError, match="init_scale"):
        FreeEmbeddings([1], 3, 2, init_scale=0)

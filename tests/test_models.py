"""Stacked models equal their per-run counterparts; run seeds are distinct and stable."""

import pytest
import torch

from simulate.models import FreeEmbeddings, StackedMLP


def test_free_embeddings_copy_their_rows_and_gather_them_per_run():
    w = torch.randn(3, 7, 3)
    a = FreeEmbeddings(w)
    assert torch.equal(a.weight, w) and a.weight.data_ptr() != w.data_ptr()
    idx = torch.tensor([[0, 3], [1, 1], [6, 2]])
    out = a(idx)
    assert torch.equal(out[0, 1], w[0, 3]) and torch.equal(out[2, 0], w[2, 6]) and torch.equal(out[1, 0], out[1, 1])
    with pytest.raises(ValueError, match="weight"):
        FreeEmbeddings(torch.randn(4, 3))


def test_renormalise():
    m = FreeEmbeddings(3 * torch.randn(1, 4, 3))
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


def test_run_seeds_distinct_and_stable():
    from simulate.engine.streams import run_seeds

    seeds = [run_seeds(s) for s in range(5)]
    assert len({x for pair in seeds for x in pair}) == 10 and run_seeds(3) == seeds[3]


def test_mlp_validation():
    with pytest.raises(ValueError, match="depth"):
        StackedMLP([1], 2, 3, 2, depth=0)
    with pytest.raises(ValueError, match="hidden"):
        StackedMLP([1], 2, 0, 2)

"""Gaussian-mixture generator and views."""

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from simulate.data import MixtureConfig, class_directions, make_mixture, make_views


def test_deterministic_in_seed():
    cfg = MixtureConfig(k=3, d=5, per_class=20, label_fraction=0.5, seed=4)
    a, b = make_mixture(cfg), make_mixture(cfg)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.labels_train, b.labels_train)
    c = make_mixture(MixtureConfig(k=3, d=5, per_class=20, label_fraction=0.5, seed=5))
    assert not torch.equal(a.x_train, c.x_train)


@given(k=st.integers(2, 5), extra=st.integers(0, 3), per=st.integers(4, 30),
       frac=st.floats(0, 1), hold=st.floats(0, 0.5), seed=st.integers(0, 1000))
def test_shapes_split_and_label_fraction(k, extra, per, frac, hold, seed):
    cfg = MixtureConfig(k=k, d=k + extra, per_class=per, label_fraction=frac,
                        holdout_fraction=hold, seed=seed)
    m = make_mixture(cfg)
    n = k * per
    assert m.x_train.shape[0] + m.x_test.shape[0] == n
    assert m.x_test.shape[0] == round(hold * n)
    assert m.x_train.shape[1] == k + extra
    labelled = m.labels_train >= 0
    assert int(labelled.sum()) == round(frac * m.x_train.shape[0])
    assert torch.equal(m.labels_train[labelled], m.y_train[labelled])


@pytest.mark.parametrize("kind, expect", [("orthonormal", 0.0), ("simplex", -1 / 3)])
def test_mean_directions(kind, expect):
    dirs = class_directions(kind, 4, 6, np.random.default_rng(0))
    g = dirs @ dirs.T
    np.testing.assert_allclose(np.diag(g), 1.0, atol=1e-12)
    np.testing.assert_allclose(g[~np.eye(4, dtype=bool)], expect, atol=1e-12)


def test_mean_scale_and_sigma_zero_gives_the_means():
    m = make_mixture(MixtureConfig(k=3, d=4, per_class=5, sigma=0.0, mean_scale=2.5))
    np.testing.assert_allclose(m.x_train.norm(dim=1).numpy(), 2.5, atol=1e-12)
    assert torch.allclose(m.x_train, m.means[m.y_train])


def test_rank1_noise_confined_to_a_line_per_class():
    m = make_mixture(MixtureConfig(k=3, d=3, per_class=40, noise_rank=1, holdout_fraction=0))
    for c in range(3):
        resid = (m.x_train - m.means[m.y_train])[m.y_train == c]
        s = torch.linalg.svdvals(resid)
        assert s[1] < 1e-10 * s[0]


def test_class_weights_imbalance():
    m = make_mixture(MixtureConfig(k=2, d=2, per_class=50, class_weights=(3.0, 1.0), holdout_fraction=0))
    counts = torch.bincount(m.y_train)
    assert counts.tolist() == [75, 25]


def test_views_noise_and_sign_flip():
    cfg = MixtureConfig(k=2, d=3, per_class=200, aug_sigma=0.0, sign_flip=True)
    m = make_mixture(cfg)
    v1, v2 = make_views(m.x_train, cfg, torch.Generator().manual_seed(0))
    ratio = (v1 / m.x_train)
    assert torch.allclose(ratio.abs(), torch.ones_like(ratio))
    flipped = (ratio[:, 0] < 0).double().mean()
    assert 0.3 < float(flipped) < 0.7
    cfg2 = MixtureConfig(k=2, d=3, per_class=2000, aug_sigma=0.5)
    m2 = make_mixture(cfg2)
    a, b = make_views(m2.x_train, cfg2, torch.Generator().manual_seed(0))
    assert float((a - m2.x_train).std()) == pytest.approx(0.5, rel=0.05)
    assert not torch.equal(a, b)


@pytest.mark.parametrize(
    "kwargs, word",
    [
        ({"k": 1}, "k"), ({"k": 5, "d": 3}, "k"), ({"k": 5, "d": 3, "means": "simplex"}, "k"),
        ({"means": "cube"}, "means"), ({"sigma": -1.0}, "sigma"), ({"noise_rank": 0}, "noise_rank"),
        ({"label_fraction": 1.5}, "label_fraction"), ({"holdout_fraction": 1.0}, "holdout_fraction"),
        ({"class_weights": (1.0,)}, "class_weights"), ({"per_class": 0}, "per_class"),
        ({"aug_sigma": float("nan")}, "aug_sigma"),
    ],
)
def test_bad_config_names_the_field(kwargs, word):
    with pytest.raises(ValueError, match=rf"^{word}\b"):
        MixtureConfig(**kwargs)

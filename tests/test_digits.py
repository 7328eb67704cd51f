"""The shipped digits file, the splits of make_digits, and the views (shifts and noise)
against references written from their definitions."""

import numpy as np
import pytest
import torch

from simulate import digits as D
from simulate.data import MixtureData


def test_shipped_file_is_sklearn_digits():
    datasets = pytest.importorskip("sklearn.datasets")
    ref = datasets.load_digits()
    images, target = D.load_digits_arrays()
    assert images.dtype == np.uint8 and images.shape == (1797, 8, 8)
    assert target.dtype == np.int64 and target.shape == (1797,)
    assert np.array_equal(images.astype(np.float64), ref.images)
    assert np.array_equal(images.reshape(-1, 64).astype(np.float64), ref.data)
    assert np.array_equal(target, ref.target)


def test_shipped_file_contents_without_sklearn():
    images, target = D.load_digits_arrays()
    assert images.min() == 0 and images.max() == D.PIXEL_MAX
    assert np.array_equal(np.bincount(target), [178, 182, 177, 183, 181, 182, 181, 179, 174, 180])
    unit = images.astype(np.float64) / 16
    assert D.PIXEL_MEAN == pytest.approx(unit.mean(), rel=1e-12)
    assert D.PIXEL_STD == pytest.approx(unit.std(), rel=1e-12)
    assert not images.flags.writeable


def test_structure_and_shapes():
    cfg = D.DigitsConfig(label_fraction=0.3, holdout_fraction=0.2, seed=3)
    data = D.make_digits(cfg)
    assert isinstance(data, MixtureData) and data.config is cfg
    n_test = round(0.2 * 1797)
    assert cfg.n_points == 1797 and cfg.n_test == n_test and cfg.n_train == 1797 - n_test
    assert data.x_train.shape == (1797 - n_test, 64) and data.x_test.shape == (n_test, 64)
    assert data.x_train.dtype == data.x_test.dtype == data.means.dtype == torch.float64
    for t in (data.y_train, data.y_test, data.labels_train):
        assert t.dtype == torch.int64
    assert data.y_train.shape == data.labels_train.shape == (cfg.n_train,)
    assert data.means.shape == (10, 64)
    assert set(data.y_train.tolist()) | set(data.y_test.tolist()) == set(range(10))


def test_scaling():
    images, target = D.load_digits_arrays()
    raw = images.reshape(-1, 64).astype(np.float64)
    # per_class=None, holdout 0: the rows are the whole set in a seeded order
    unit = D.make_digits(D.DigitsConfig(scaling="unit", holdout_fraction=0.0))
    std = D.make_digits(D.DigitsConfig(scaling="standard", holdout_fraction=0.0))
    assert torch.equal(unit.y_train, std.y_train)
    assert float(unit.x_train.min()) == 0.0 and float(unit.x_train.max()) == 1.0
    assert float(std.x_train.mean()) == pytest.approx(0.0, abs=1e-12)
    assert float(std.x_train.std(unbiased=False)) == pytest.approx(1.0, abs=1e-12)
    assert torch.allclose(std.x_train, (unit.x_train - D.PIXEL_MEAN) / D.PIXEL_STD, atol=1e-12)
    assert D.background_value("unit") == 0.0
    assert D.background_value() == pytest.approx(-D.PIXEL_MEAN / D.PIXEL_STD, rel=1e-12)
    # every row is a scaled image of the shipped set with its own class
    rows = {tuple(r): int(t) for r, t in zip(raw / 16, target)}
    for r, y in zip(unit.x_train[:50].numpy(), unit.y_train[:50].tolist()):
        assert rows[tuple(r)] == y
    # class means over all kept points
    assert torch.allclose(std.means[4], std.x_train[std.y_train == 4].mean(0), atol=1e-12)


def test_deterministic_in_seed():
    a = D.make_digits(D.DigitsConfig(label_fraction=0.5, seed=7))
    b = D.make_digits(D.DigitsConfig(label_fraction=0.5, seed=7))
    c = D.make_digits(D.DigitsConfig(label_fraction=0.5, seed=8))
    for name in ("x_train", "y_train", "labels_train", "x_test", "y_test", "means"):
        assert torch.equal(getattr(a, name), getattr(b, name))
    assert not torch.equal(a.x_train, c.x_train)
    assert not torch.equal(a.labels_train, c.labels_train)


@pytest.mark.parametrize("fraction", [0.0, 0.05, 0.37, 1.0])
def test_label_fraction(fraction):
    data = D.make_digits(D.DigitsConfig(label_fraction=fraction, seed=1))
    lab = data.labels_train >= 0
    assert int(lab.sum()) == round(fraction * data.y_train.numel())
    assert torch.equal(data.labels_train[lab], data.y_train[lab])
    assert bool((data.labels_train[~lab] == -1).all())


def test_holdout_is_disjoint_and_covers_the_kept_images():
    images, _ = D.load_digits_arrays()
    cfg = D.DigitsConfig(scaling="unit", holdout_fraction=0.3, seed=2)
    data = D.make_digits(cfg)
    assert data.x_test.shape[0] == round(0.3 * 1797)

    # identify each row with its index in the shipped set (duplicated images share a key)
    def keys(x):
        return sorted(map(tuple, np.round(x.numpy() * 16).astype(np.uint8).tolist()))

    all_keys = sorted(map(tuple, images.reshape(-1, 64).tolist()))
    assert sorted(keys(data.x_train) + keys(data.x_test)) == all_keys
    # disjoint as multisets: together they are exactly the shipped set, and no image is
    # in both splits unless the shipped set holds it twice
    from collections import Counter

    total = Counter(all_keys)
    tr, te = Counter(keys(data.x_train)), Counter(keys(data.x_test))
    assert all(tr[k] + te[k] == total[k] for k in total)
    assert all(total[k] > 1 for k in set(tr) & set(te))


def test_classes_and_per_class():
    cfg = D.DigitsConfig(k=3, per_class=20, holdout_fraction=0.25, seed=5)
    data = D.make_digits(cfg)
    y = torch.cat([data.y_train, data.y_test])
    assert torch.equal(torch.bincount(y), torch.tensor([20, 20, 20]))
    assert cfg.n_points == 60 and data.x_train.shape[0] == cfg.n_train == 45
    assert data.means.shape == (3, 64)
    assert D.DigitsConfig(k=2).n_points == 178 + 182


@pytest.mark.parametrize("kwargs", [
    {"k": 1}, {"k": 11}, {"per_class": 0}, {"per_class": 175}, {"label_fraction": 1.5},
    {"holdout_fraction": 1.0}, {"scaling": "minmax"}, {"aug_sigma": -0.1},
    {"max_shift": 8}, {"max_shift": True}, {"seed": -1},
])
def test_invalid_config_names_the_field(kwargs):
    name = next(iter(kwargs))
    with pytest.raises(ValueError, match=f"^{name} must be"):
        D.DigitsConfig(**kwargs)


def _shift_reference(img: np.ndarray, dy: int, dx: int, fill: float) -> np.ndarray:
    """One 8x8 image shifted by (dy, dx) from the definition: np.roll, then the wrapped-in
    rows and columns set to ``fill``."""
    out = np.roll(img, (dy, dx), axis=(0, 1)).copy()
    if dy > 0:
        out[:dy, :] = fill
    elif dy < 0:
        out[dy:, :] = fill
    if dx > 0:
        out[:, :dx] = fill
    elif dx < 0:
        out[:, dx:] = fill
    return out


def test_shift_against_per_image_reference():
    images, _ = D.load_digits_arrays()
    g = torch.Generator().manual_seed(0)
    x = torch.tensor(images[:24].reshape(2, 12, 64), dtype=torch.float64)
    shifts = torch.randint(-7, 8, (2, 12, 2), generator=g)
    shifts[0, :4] = torch.tensor([[0, 0], [7, -7], [-3, 2], [1, 0]])
    out = D.shift_images(x, shifts, fill=-1.5)
    assert out.shape == x.shape and out.dtype == x.dtype
    for r in range(2):
        for b in range(12):
            dy, dx = shifts[r, b].tolist()
            ref = _shift_reference(x[r, b].numpy().reshape(8, 8), dy, dx, -1.5)
            assert np.array_equal(out[r, b].numpy().reshape(8, 8), ref), (r, b, dy, dx)


def test_shift_in_scaled_space_is_a_shift_of_the_raw_image():
    images, _ = D.load_digits_arrays()
    raw = torch.tensor(images[:10].reshape(10, 64), dtype=torch.float64)
    shifts = torch.randint(-2, 3, (10, 2), generator=torch.Generator().manual_seed(1))
    for scaling in D.SCALINGS:
        scaled = D.shift_images(D.scale_pixels(raw, scaling), shifts, D.background_value(scaling))
        expected = D.scale_pixels(D.shift_images(raw, shifts, 0.0), scaling)
        assert torch.allclose(scaled, expected, atol=1e-12)


def test_views_shapes_dtype_and_determinism():
    cfg = D.DigitsConfig(aug_sigma=0.2, max_shift=2)
    x = D.make_digits(cfg).x_train[:30].reshape(3, 10, 64)
    a = D.make_views(x, cfg, torch.Generator().manual_seed(4))
    b = D.make_views(x, cfg, torch.Generator().manual_seed(4))
    c = D.make_views(x, cfg, torch.Generator().manual_seed(5))
    assert a[0].shape == a[1].shape == (3, 10, 64) and a[0].dtype == torch.float64
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0]) and not torch.equal(a[0], a[1])
    v1, _ = D.make_views(x.float(), cfg, torch.Generator().manual_seed(4))
    assert v1.dtype == torch.float32


def test_views_equal_the_definition_with_the_same_draws():
    """Per view: shifts drawn first (uniform in [-m, m]^2), then the noise."""
    cfg = D.DigitsConfig(aug_sigma=0.3, max_shift=2)
    x = D.make_digits(cfg).x_train[:12].reshape(2, 6, 64)
    v1, v2 = D.make_views(x, cfg, torch.Generator().manual_seed(9))
    g = torch.Generator().manual_seed(9)
    fill = D.background_value(cfg.scaling)
    for v in (v1, v2):
        shifts = torch.randint(-2, 3, (2, 6, 2), generator=g)
        noise = torch.randn((2, 6, 64), generator=g, dtype=torch.float64)
        for r in range(2):
            for b in range(6):
                img = _shift_reference(x[r, b].numpy().reshape(8, 8), *shifts[r, b].tolist(), fill)
                expected = img.reshape(64) + 0.3 * noise[r, b].numpy()
                assert np.allclose(v[r, b].numpy(), expected, atol=1e-12)


def test_shift_statistics():
    """Each offset is uniform over {-m..m}, independently per axis, image and view."""
    g = torch.Generator().manual_seed(0)
    s = D.draw_shifts((4000, 2), 2, g)
    assert s.shape == (4000, 2, 2) and s.dtype == torch.int64
    assert int(s.min()) == -2 and int(s.max()) == 2
    freq = torch.bincount((s + 2).flatten(), minlength=5).double() / s.numel()
    assert torch.allclose(freq, torch.full((5,), 0.2, dtype=torch.float64), atol=0.01)
    # no shift at max_shift = 0: views are the images plus noise
    cfg = D.DigitsConfig(max_shift=0, aug_sigma=0.0)
    x = D.make_digits(cfg).x_train[:8]
    v1, v2 = D.make_views(x, cfg, g)
    assert torch.equal(v1, x) and torch.equal(v2, x)


def test_noise_statistics():
    cfg = D.DigitsConfig(max_shift=0, aug_sigma=0.25)
    x = D.make_digits(cfg).x_train[:200].reshape(4, 50, 64)
    v1, v2 = D.make_views(x, cfg, torch.Generator().manual_seed(2))
    for v in (v1, v2):
        e = (v - x).flatten()
        assert abs(float(e.mean())) < 4 * 0.25 / e.numel() ** 0.5
        assert float(e.std()) == pytest.approx(0.25, rel=0.03)
    corr = torch.corrcoef(torch.stack([(v1 - x).flatten(), (v2 - x).flatten()]))[0, 1]
    assert abs(float(corr)) < 0.03

"""scikit-learn's digits, shipped with the package: a small real dataset for the same
training program as the Gaussian mixtures.

The 1,797 8x8 images (10 classes, pixel values 0..16) live in ``simulate/datasets/digits.npz``
(written by ``simulate/datasets/build_digits.py`` from ``sklearn.datasets.load_digits``), so
nothing is downloaded and scikit-learn is not needed at run time. :func:`make_digits` returns
the structure :func:`simulate.data.make_mixture` returns (:class:`simulate.data.MixtureData`),
with the same meaning of ``label_fraction``, ``holdout_fraction`` and ``seed``; each image is
a row of 64 pixels (row-major, ``x[..., 8 * i + j]`` is pixel ``(i, j)``).

Pixel scaling: pixels are divided by 16 (to [0, 1]); with ``scaling="standard"`` (the default)
they are then standardised with one scalar mean and standard deviation, those of all
1,797 x 64 pixel values of the shipped set (:data:`PIXEL_MEAN`, :data:`PIXEL_STD`). One scalar
pair (not a per-pixel one) keeps every pixel on one scale, so a shifted image stays an image:
the blank background maps to one value, :func:`background_value`. ``scaling="unit"`` keeps the
[0, 1] pixels.

Views (augmentations): each view shifts every image by an independent random offset
``(dy, dx)``, each uniform in ``{-max_shift, ..., max_shift}``, filling the uncovered pixels
with the background (zero ink), then adds Gaussian pixel noise of std ``aug_sigma`` (in the
scaled units).

Example:
    >>> cfg = DigitsConfig(label_fraction=0.1, max_shift=1, seed=0)
    >>> data = make_digits(cfg)
    >>> v1, v2 = make_views(data.x_train, cfg, torch.Generator().manual_seed(1))
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass
from importlib import resources

import numpy as np
import torch

from .data import MixtureData, _fail, _is_int, _is_number

#: image side; each image is a row of SIDE * SIDE pixels
SIDE = 8
#: number of pixels per image (the ambient dimension d of the digits data)
N_PIXELS = SIDE * SIDE
#: largest raw pixel value
PIXEL_MAX = 16
#: number of classes in the shipped set
N_CLASSES = 10
SCALINGS = ("standard", "unit")
_FILE = "digits.npz"
_SEED_TAG = 0x646967  # "dig": keeps digits seeds apart from the mixture's streams


@functools.lru_cache(maxsize=1)
def load_digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """The shipped images ``(1797, 8, 8)`` uint8 (values 0..16) and classes ``(1797,)`` int64,
    in scikit-learn's order. Read-only arrays (cached)."""
    path = resources.files("simulate").joinpath("datasets").joinpath(_FILE)
    with path.open("rb") as fh, np.load(fh) as f:
        images, target = f["images"], f["target"].astype(np.int64)
    images.setflags(write=False)
    target.setflags(write=False)
    return images, target


def _unit_pixels() -> np.ndarray:
    return load_digits_arrays()[0].reshape(-1, N_PIXELS).astype(np.float64) / PIXEL_MAX


#: mean of all pixel values of the shipped set, after division by 16
PIXEL_MEAN = float(_unit_pixels().mean())
#: standard deviation (biased) of all pixel values of the shipped set, after division by 16
PIXEL_STD = float(_unit_pixels().std())


@dataclass(frozen=True)
class DigitsConfig:
    """Configuration of the digits data.

    Attributes:
        k: number of classes kept: the digits ``0 .. k-1`` (2 <= k <= 10).
        per_class: images kept per class (a seeded random subset; each class has 174 to 183),
            or ``None`` for all of them.
        label_fraction: fraction of training points that keep their label, in [0, 1].
        holdout_fraction: fraction of points held out for probes, in [0, 1).
        scaling: ``standard`` (pixels / 16, then ``(p - PIXEL_MEAN) / PIXEL_STD``) or ``unit``
            (pixels / 16, in [0, 1]).
        aug_sigma: standard deviation of the additive view noise, in the scaled units (>= 0).
        max_shift: largest shift of a view along each image axis, in pixels (0 <= max_shift
            <= 7; 0 disables shifts).
        seed: which points are kept, held out and labelled (the only source of randomness).
    """

    k: int = N_CLASSES
    per_class: int | None = None
    label_fraction: float = 1.0
    holdout_fraction: float = 0.25
    scaling: str = "standard"
    aug_sigma: float = 0.1
    max_shift: int = 1
    seed: int = 0

    def __post_init__(self):
        if not (_is_int(self.k) and 2 <= self.k <= N_CLASSES):
            _fail("k", f"an integer in [2, {N_CLASSES}]", self.k)
        if self.per_class is not None and not (_is_int(self.per_class) and self.per_class >= 1):
            _fail("per_class", "None or an integer >= 1", self.per_class)
        if self.per_class is not None:
            smallest = int(np.bincount(load_digits_arrays()[1])[: self.k].min())
            if self.per_class > smallest:
                _fail("per_class", f"None or <= {smallest} (the smallest of the first "
                      f"{self.k} classes)", self.per_class)
        if not (_is_number(self.label_fraction) and 0.0 <= self.label_fraction <= 1.0):
            _fail("label_fraction", "a number in [0, 1]", self.label_fraction)
        if not (_is_number(self.holdout_fraction) and 0.0 <= self.holdout_fraction < 1.0):
            _fail("holdout_fraction", "a number in [0, 1)", self.holdout_fraction)
        if self.scaling not in SCALINGS:
            _fail("scaling", f"one of {', '.join(SCALINGS)}", self.scaling)
        if not (_is_number(self.aug_sigma) and self.aug_sigma >= 0):
            _fail("aug_sigma", "a finite number >= 0", self.aug_sigma)
        if not (_is_int(self.max_shift) and 0 <= self.max_shift < SIDE):
            _fail("max_shift", f"an integer in [0, {SIDE - 1}]", self.max_shift)
        if not (_is_int(self.seed) and self.seed >= 0):
            _fail("seed", "an integer >= 0", self.seed)

    @property
    def d(self) -> int:
        """Ambient dimension: 64 pixels."""
        return N_PIXELS

    @property
    def n_points(self) -> int:
        """Number of images kept (training plus held out)."""
        if self.per_class is not None:
            return self.per_class * self.k
        return int(np.bincount(load_digits_arrays()[1])[: self.k].sum())

    @property
    def n_test(self) -> int:
        """Number of held-out images (``round(holdout_fraction * n_points)``)."""
        return round(self.holdout_fraction * self.n_points)

    @property
    def n_train(self) -> int:
        """Number of training images."""
        return self.n_points - self.n_test

    def to_dict(self) -> dict:
        return asdict(self)


def scale_pixels(pixels: np.ndarray | torch.Tensor, scaling: str = "standard"):
    """Raw pixel values (0..16) to the scaled units of ``scaling`` (see the module docstring).
    Works on numpy arrays and tensors alike; the result is floating point."""
    if scaling not in SCALINGS:
        _fail("scaling", f"one of {', '.join(SCALINGS)}", scaling)
    unit = pixels / PIXEL_MAX
    return (unit - PIXEL_MEAN) / PIXEL_STD if scaling == "standard" else unit


def background_value(scaling: str = "standard") -> float:
    """The scaled value of a blank (zero-ink) pixel: the fill of a shifted image."""
    return float(scale_pixels(np.float64(0.0), scaling))


def make_digits(cfg: DigitsConfig) -> MixtureData:
    """The digits described by ``cfg`` as :class:`simulate.data.MixtureData` (deterministic
    in ``cfg.seed``).

    Shape: ``x_train`` (N_train, 64) and ``x_test`` (N_test, 64) float64 scaled pixels;
    ``y_train``, ``y_test`` int64 true classes; ``labels_train`` (N_train,) int64 with ``-1``
    for unlabelled points; ``means`` (k, 64) float64, the class means of the scaled pixels
    over all kept points (training and held out); ``config`` is ``cfg``.

    The kept images (all of classes ``0 .. k-1``, or ``per_class`` of each drawn at random)
    are shuffled; the first ``round(holdout_fraction * n)`` are held out, and
    ``round(label_fraction * N_train)`` training points drawn at random keep their label,
    as in :func:`simulate.data.make_mixture`.
    """
    images, target = load_digits_arrays()
    rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, _SEED_TAG]))
    if cfg.per_class is None:
        keep = np.flatnonzero(target < cfg.k)
    else:
        keep = np.concatenate([
            np.sort(rng.permutation(np.flatnonzero(target == c))[: cfg.per_class])
            for c in range(cfg.k)
        ])
    x = scale_pixels(images[keep].reshape(-1, N_PIXELS).astype(np.float64), cfg.scaling)
    y = target[keep]
    means = np.stack([x[y == c].mean(0) for c in range(cfg.k)])
    order = rng.permutation(y.size)
    x, y = x[order], y[order]
    n_test = cfg.n_test
    x_te, y_te, x_tr, y_tr = x[:n_test], y[:n_test], x[n_test:], y[n_test:]
    labels = y_tr.copy()
    n_lab = round(cfg.label_fraction * y_tr.size)
    labels[rng.permutation(y_tr.size)[n_lab:]] = -1

    def t(a, dt=torch.float64):
        return torch.as_tensor(np.ascontiguousarray(a), dtype=dt)

    return MixtureData(
        x_train=t(x_tr), y_train=t(y_tr, torch.int64), labels_train=t(labels, torch.int64),
        x_test=t(x_te), y_test=t(y_te, torch.int64), means=t(means), config=cfg,
    )


def shift_images(x: torch.Tensor, shifts: torch.Tensor, fill: float = 0.0) -> torch.Tensor:
    """Shift each 8x8 image by its own integer offset, filling uncovered pixels with ``fill``.

    ``out[i, j] = x[i - dy, j - dx]`` where ``0 <= i - dy, j - dx < 8``, else ``fill``: the
    direction of ``np.roll(img, (dy, dx), axis=(0, 1))``, without the wrap-around. One gather
    over all images (no per-image loop).

    Shape:
        x: (..., 64), images as rows of 64 pixels (row-major).
        shifts: (..., 2) integer ``(dy, dx)`` per image, on any device.
        returns: (..., 64), the dtype and device of ``x``.
    """
    if x.shape[-1] != N_PIXELS:
        raise ValueError(f"images must have {N_PIXELS} pixels in the last dim, got {tuple(x.shape)}")
    if shifts.shape != x.shape[:-1] + (2,):
        raise ValueError(f"shifts must have shape {tuple(x.shape[:-1]) + (2,)}, got {tuple(shifts.shape)}")
    ar = torch.arange(SIDE, device=x.device)
    shifts = shifts.to(device=x.device, dtype=torch.int64)
    src_r = ar - shifts[..., 0:1]  # (..., 8) source row of each output row
    src_c = ar - shifts[..., 1:2]  # (..., 8) source column of each output column
    ok_r = (src_r >= 0) & (src_r < SIDE)
    ok_c = (src_c >= 0) & (src_c < SIDE)
    idx = src_r.clamp(0, SIDE - 1)[..., :, None] * SIDE + src_c.clamp(0, SIDE - 1)[..., None, :]
    ok = (ok_r[..., :, None] & ok_c[..., None, :]).flatten(-2)
    out = torch.gather(x, -1, idx.flatten(-2))
    return torch.where(ok, out, torch.as_tensor(fill, dtype=x.dtype, device=x.device))


def draw_shifts(shape: tuple, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Random offsets ``(*shape, 2)`` int64, each uniform in ``{-max_shift, ..., max_shift}``
    (drawn on the generator's device, CPU for a default generator)."""
    return torch.randint(-max_shift, max_shift + 1, tuple(shape) + (2,), generator=generator,
                         device=generator.device)


def make_views(
    x: torch.Tensor, cfg: DigitsConfig, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Two augmented views of the scaled images ``x`` (any leading shape, e.g. (R, B, 64);
    last dim 64): per view and image, a random shift of up to ``max_shift`` pixels per axis
    with background fill (:func:`shift_images`, :func:`background_value`), then additive
    Gaussian noise of std ``aug_sigma``. Per view, the shifts are drawn before the noise."""
    fill = background_value(cfg.scaling)
    views = []
    for _ in range(2):
        v = x
        if cfg.max_shift > 0:
            v = shift_images(x, draw_shifts(x.shape[:-1], cfg.max_shift, generator), fill)
        noise = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=generator.device)
        views.append(v + cfg.aug_sigma * noise.to(x.device))
    return views[0], views[1]

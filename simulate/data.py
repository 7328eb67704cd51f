"""Gaussian-mixture data with two augmented views, fully determined by a seed.

The generator draws ``k`` class means (orthonormal, random or simplex-ETF directions times
``mean_scale``), samples points around them with isotropic noise or noise confined to a
random ``noise_rank``-dimensional subspace per class (``noise_rank=1`` gives the rank-1
clusters of the paper's 3-D toy experiment), hides the label of all but ``label_fraction``
of the training points (label ``-1``), and splits off held-out points for probes.

Example:
    >>> cfg = MixtureConfig(k=3, d=3, per_class=50, noise_rank=1, sign_flip=True, seed=0)
    >>> data = make_mixture(cfg)
    >>> v1, v2 = make_views(data.x_train, cfg, torch.Generator().manual_seed(1))
"""

from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

MEAN_KINDS = ("orthonormal", "random", "simplex")


#: mixed into a mixture's seed so that its stream differs from the prototypes' for one seed
#: (the bytes of "mix"; the prototypes use "pro", :data:`simulate.losses.clop.PROTOTYPE_SEED_SALT`)
MIXTURE_SEED_SALT = 0x6D6978


def _fail(name: str, accepted: str, value) -> None:
    raise ValueError(f"{name} must be {accepted}, got {value!r}")


def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_number(v) -> bool:
    """A finite real number (booleans and numeric strings are not numbers)."""
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


@dataclass(frozen=True)
class MixtureConfig:
    """Configuration of a Gaussian mixture.

    Attributes:
        k: number of classes (>= 2).
        d: ambient dimension (>= 1; >= k for orthonormal means, >= k - 1 for simplex).
        per_class: points per class when ``class_weights`` is None.
        class_weights: relative class sizes (imbalance); with it, ``per_class * k`` points
            are split in these proportions.
        means: ``orthonormal`` | ``random`` (unit Gaussian directions) | ``simplex``
            (simplex-ETF directions).
        mean_scale: norm of every class mean (>= 0).
        sigma: within-class noise standard deviation (>= 0).
        noise_rank: ``None`` for isotropic noise, else noise in a random subspace of this
            dimension per class (1 <= noise_rank <= d).
        label_fraction: fraction of training points that keep their label, in [0, 1].
        aug_sigma: standard deviation of the additive view noise (>= 0).
        sign_flip: each view is multiplied by a random sign (the toy experiment's augmentation).
        holdout_fraction: fraction of points held out for probes, in [0, 1).
        seed: the only source of randomness.
    """

    k: int = 4
    d: int = 16
    per_class: int = 64
    class_weights: tuple[float, ...] | None = None
    means: str = "orthonormal"
    mean_scale: float = 3.0
    sigma: float = 1.0
    noise_rank: int | None = None
    label_fraction: float = 1.0
    aug_sigma: float = 0.1
    sign_flip: bool = False
    holdout_fraction: float = 0.25
    seed: int = 0

    def __post_init__(self):
        if not (_is_int(self.k) and self.k >= 2):
            _fail("k", "an integer >= 2", self.k)
        if not (_is_int(self.d) and self.d >= 1):
            _fail("d", "an integer >= 1", self.d)
        if not (_is_int(self.per_class) and self.per_class >= 1):
            _fail("per_class", "an integer >= 1", self.per_class)
        if self.means not in MEAN_KINDS:
            _fail("means", f"one of {', '.join(MEAN_KINDS)}", self.means)
        if self.means == "orthonormal" and self.k > self.d:
            _fail("k", f"<= d = {self.d} for orthonormal means", self.k)
        if self.means == "simplex" and self.k > self.d + 1:
            _fail("k", f"<= d + 1 = {self.d + 1} for simplex means", self.k)
        if self.class_weights is not None:
            w = np.asarray(self.class_weights, dtype=float)
            if w.shape != (self.k,) or not np.all(np.isfinite(w)) or np.any(w <= 0):
                _fail("class_weights", f"{self.k} positive numbers", self.class_weights)
        for name in ("mean_scale", "sigma", "aug_sigma"):
            v = getattr(self, name)
            if not (_is_number(v) and v >= 0):
                _fail(name, "a finite number >= 0", v)
        if self.noise_rank is not None and not (
            _is_int(self.noise_rank) and 1 <= self.noise_rank <= self.d
        ):
            _fail("noise_rank", f"None or an integer in [1, {self.d}]", self.noise_rank)
        if not (_is_number(self.label_fraction) and 0.0 <= self.label_fraction <= 1.0):
            _fail("label_fraction", "a number in [0, 1]", self.label_fraction)
        if not isinstance(self.sign_flip, bool):
            _fail("sign_flip", "true or false", self.sign_flip)
        if not (_is_number(self.holdout_fraction) and 0.0 <= self.holdout_fraction < 1.0):
            _fail("holdout_fraction", "a number in [0, 1)", self.holdout_fraction)
        if not (_is_int(self.seed) and self.seed >= 0):
            _fail("seed", "an integer >= 0", self.seed)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class MixtureData:
    """A drawn mixture. Shape: ``x_*`` (N, d) float64; ``y_*`` (N,) int64 true classes;
    ``labels_train`` (N,) int64 with ``-1`` for unlabelled points; ``means`` (k, d)."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    labels_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    means: torch.Tensor
    config: MixtureConfig = field(repr=False)


def class_directions(kind: str, k: int, d: int, rng: np.random.Generator) -> np.ndarray:
    """Unit class directions ``(k, d)``: orthonormal (QR of a Gaussian matrix), random
    Gaussian, or a simplex ETF (pairwise cosine ``-1/(k-1)``) in a random subspace."""
    if kind == "random":
        x = rng.standard_normal((k, d))
        return x / np.linalg.norm(x, axis=1, keepdims=True)
    q, r = np.linalg.qr(rng.standard_normal((d, d)))
    q = q * np.sign(np.diag(r))  # Haar-distributed
    if kind == "orthonormal":
        return np.ascontiguousarray(q[:, :k].T)
    # simplex: centre k orthonormal vectors in a k-dim space, then embed in d >= k - 1 dims
    etf = np.sqrt(k / (k - 1)) * (np.eye(k) - np.ones((k, k)) / k)  # rows: simplex in R^k
    basis = np.linalg.svd(etf)[2][: k - 1]  # (k-1, k): the simplex's own (k-1)-dim span
    return (etf @ basis.T) @ q[:, : k - 1].T


def make_mixture(cfg: MixtureConfig) -> MixtureData:
    """Draw the mixture described by ``cfg`` (deterministic in ``cfg.seed``)."""
    rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, MIXTURE_SEED_SALT]))
    dirs = class_directions(cfg.means, cfg.k, cfg.d, rng)
    means = cfg.mean_scale * dirs
    total = cfg.per_class * cfg.k
    if cfg.class_weights is None:
        counts = np.full(cfg.k, cfg.per_class)
    else:
        w = np.asarray(cfg.class_weights, dtype=float)
        counts = np.maximum(1, np.floor(total * w / w.sum()).astype(int))
    y = np.repeat(np.arange(cfg.k), counts)
    if cfg.noise_rank is None:
        noise = rng.standard_normal((y.size, cfg.d))
    else:
        bases = np.stack([
            np.linalg.qr(rng.standard_normal((cfg.d, cfg.noise_rank)))[0].T for _ in range(cfg.k)
        ])  # (k, r, d)
        coef = rng.standard_normal((y.size, cfg.noise_rank))
        noise = np.einsum("nr,nrd->nd", coef, bases[y])
    x = means[y] + cfg.sigma * noise
    order = rng.permutation(y.size)
    x, y = x[order], y[order]
    n_test = int(round(cfg.holdout_fraction * y.size))
    x_te, y_te, x_tr, y_tr = x[:n_test], y[:n_test], x[n_test:], y[n_test:]
    labels = y_tr.copy()
    n_lab = int(round(cfg.label_fraction * y_tr.size))
    hidden = rng.permutation(y_tr.size)[n_lab:]
    labels[hidden] = -1
    t = lambda a, dt=torch.float64: torch.as_tensor(a, dtype=dt)  # noqa: E731
    return MixtureData(
        x_train=t(x_tr), y_train=t(y_tr, torch.int64), labels_train=t(labels, torch.int64),
        x_test=t(x_te), y_test=t(y_te, torch.int64), means=t(means), config=cfg,
    )


def augment(x: torch.Tensor, noise: torch.Tensor, signs: torch.Tensor | None = None) -> torch.Tensor:
    """One view of ``x``: ``(x + noise) * signs`` (no sign flip when ``signs`` is None). The
    one place a view is formed; the caller draws ``noise`` (already scaled) and ``signs``."""
    v = x + noise
    return v if signs is None else v * signs


def make_views(
    x: torch.Tensor, cfg: MixtureConfig, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Two augmented views of ``x`` (any leading shape, last dim ``d``): additive Gaussian
    noise of std ``aug_sigma`` and, with ``sign_flip``, an independent random sign per view."""
    views = []
    for _ in range(2):
        noise = cfg.aug_sigma * torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
        signs = None
        if cfg.sign_flip:
            signs = (2 * torch.randint(0, 2, x.shape[:-1] + (1,), generator=generator) - 1).to(x.device, x.dtype)
        views.append(augment(x, noise, signs))
    return views[0], views[1]

"""The pair map: the raw step's mean-field map of one pair's angle, and the edges it gives.

A point's two views at an angle, the other rows isotropic (:func:`isotropic_statistics`):
one raw update multiplies ``tan(theta / 2)`` by :func:`pair_split_ratio`. From it come the
rate at which a pair starts to split (:func:`splitting_edge`), the rate at which the
run's pairs reach :data:`ESCAPE_ANGLE` within the updates a point takes
(:func:`escape_edge`) and the rate at which they reach the mirror of their initial angle,
anti-aligned (:func:`mirror_edge`), starting from the views' initial angle
(:func:`initial_pair_cosine`)."""

from __future__ import annotations

import math

from ..config import RunConfig
from .edges import isotropic_statistics


def training_points(run: RunConfig) -> int:
    """Number of training points N (the minibatches draw B of them per step)."""
    data = run.data_config()
    if run.data == "digits":
        return int(data.n_train)
    n = data.per_class * data.k
    return int(n - round(data.holdout_fraction * n))


def updates_per_point(run: RunConfig) -> float:
    """How often a point (both its views) takes a step in a run: ``steps * B / N``."""
    return run.steps * run.batch_size / training_points(run)


def initial_pair_cosine(run: RunConfig) -> float:
    """Cosine between a point's two views at the start, from the data model: views
    ``x + aug_sigma * n1`` and ``x + aug_sigma * n2`` of a point ``x`` with
    ``|x|^2 ~ mean_scale^2 + noise_dims sigma^2``, so ``cos ~ |x|^2 / (|x|^2 + d aug_sigma^2)``
    (the ratio of the expected dot product to the expected squared norm). ``init_norm``
    rescales rows and leaves it unchanged. Gaussian-mixture data without ``sign_flip`` only
    (the edges below are NaN otherwise)."""
    noise_dims = run.d if run.noise_rank is None else run.noise_rank
    sig = run.mean_scale**2 + noise_dims * run.sigma**2
    return sig / (sig + run.d * run.aug_sigma**2)


def pair_split_ratio(run: RunConfig, beta: float, cos_pair: float) -> float:
    """One update of an aligned-then-split pair under the raw step, mean field.

    A point's two views ``z_i, z_p`` at angle theta (``cos_pair``), the other 2B - 2 rows
    isotropic. The raw step of NT-Xent (mean over the 2B anchors) moves ``z_i`` to
    ``z_i + beta [(2 - q_ip - q_pi) z_p - sum_k (q_ik + q_ki) z_k]`` with
    ``beta = lr / (2 B tau)``; for isotropic others the softmax-weighted sum is, on average,
    ``2 qc z_i`` (:func:`isotropic_statistics` at this ``cos_pair``), so
    ``z_i' ~ (1 - 2 beta qc) z_i + 2 beta (1 - p) z_p`` and after renormalisation
    ``tan(theta'/2) = r tan(theta/2)`` with
    ``r = |1 - 2 beta (qc + 1 - p)| / (1 + 2 beta (1 - p - qc))``. Returns r: the pair
    re-aligns for r < 1 and splits for r > 1, which happens for ``beta > 1 / (2 qc)``
    (p cancels). Linearised at theta = 0 it is the splitting mode's multiplier
    ``1 - eta lambda / (1 - eta gamma)`` of the raw step (claim ``ntxent_batch``'s splitting
    eigenvalue lambda, the normal gradient gamma renormalising it). DCL has p = 0; SupCon is
    treated as NT-Xent (its class positives are left out); weight decay ``wd`` scales ``z_i``
    by ``1 - lr wd`` first, so ``1 - 2 beta qc`` becomes ``1 - lr wd - 2 beta qc``."""
    st = isotropic_statistics(run, cos_pair=cos_pair)
    return _split_ratio(beta, st["p"], st["qc"], _decay_per_beta(run))


def _decay_per_beta(run: RunConfig) -> float:
    """Weight decay's radial factor ``1 - lr wd`` written as ``1 - beta w``, ``w = 2B tau wd``."""
    return 2 * run.batch_size * run.temperature * run.weight_decay


def _split_ratio(beta: float, p: float, qc: float, w: float = 0.0) -> float:
    # z_i' ~ a z_i + c z_p with a = 1 - beta w - 2 beta qc, c = 2 beta (1 - p): the pair's
    # centre scales by a + c, its half-difference by a - c
    a, c = 1 - beta * w - 2 * beta * qc, 2 * beta * (1 - p)
    den = abs(a + c)
    return math.inf if den == 0 else abs(a - c) / den


def _raw_temperature_run(run: RunConfig) -> bool:
    """Whether the pair map applies: raw steps, a temperature loss, mixture data whose views
    start on the same side (:func:`initial_pair_cosine` models exactly that)."""
    return (run.update_mode == "sphere_raw" and run.loss in ("ntxent", "supcon", "dcl")
            and run.data == "mixture" and not run.sign_flip)


def splitting_edge(run: RunConfig, cos_pair: float | None = None) -> float:
    """Learning rate above which a pair at cosine ``cos_pair`` (default
    :func:`initial_pair_cosine`) splits under the raw step: ``lr = 2B tau / (2 qc)``
    (:func:`pair_split_ratio` = 1; with weight decay ``2B tau / (2 qc + 2B tau wd)``). At ``cos_pair = 1`` it is ``2B tau^2 / (2 s)``, half the
    isotropic :func:`collective_edge`. The initial pairs are not aligned (the views differ by
    the augmentation), which lowers the positive's softmax weight and raises ``qc``; at small
    tau this moves the edge by a large factor (tau = 0.1, B = 32, d = 16: 5.5 instead of 25
    times 2B tau). NaN unless the update mode is ``sphere_raw`` with a temperature loss on
    mixture data without ``sign_flip``."""
    if not _raw_temperature_run(run):
        return math.nan
    c = initial_pair_cosine(run) if cos_pair is None else float(cos_pair)
    qc = isotropic_statistics(run, cos_pair=c)["qc"]
    return 2 * run.batch_size * run.temperature / (2 * qc + _decay_per_beta(run))


#: the pair angle at which a split pair counts as having left the healthy state: its views
#: orthogonal, halfway to the antipodal (+-u*) pairing
ESCAPE_ANGLE = math.pi / 2


def mirror_angle(theta0: float) -> float:
    """The angle at which a pair that started at ``theta0`` counts as anti-aligned: its mirror
    image ``pi - theta0``, as close to antipodal as it was to aligned at the start. The pair
    map multiplies ``tan(theta / 2)`` and ``tan((pi - theta0) / 2) = 1 / tan(theta0 / 2)``, so
    at a constant ratio the way from pi/2 to the mirror takes as many updates as the way from
    ``theta0`` to pi/2."""
    return math.pi - theta0


def _pair_weights(run: RunConfig):
    """``cos_pair -> (p, qc)`` of :func:`isotropic_statistics`, its integrals done once."""
    st = isotropic_statistics(run)  # at cos_pair = 1: recover the integrals from p and qc
    tau = run.temperature
    if run.loss == "dcl":
        return lambda c: (0.0, st["qc"])
    neg = (1.0 / st["p"] - 1.0)  # (2B - 2) E[e^{(c - 1)/tau}] with the positive's term 1
    cos_sum = st["qc"] / st["p"]  # (2B - 2) E[e^{(c - 1)/tau} c]

    def weights(c):
        pos = math.exp((c - 1.0) / tau)
        z = pos + neg
        return pos / z, cos_sum / z

    return weights


def _reaches(beta: float, theta0: float, angle: float, updates: int, weights, w: float) -> bool:
    """Whether the pair map at ``beta`` takes a pair from ``theta0`` to ``angle`` within
    ``updates`` updates."""
    t = math.tan(theta0 / 2)
    target = math.tan(angle / 2)
    for _ in range(updates):
        th = 2 * math.atan(t)
        p, qc = weights(math.cos(th))
        t *= _split_ratio(beta, p, qc, w)
        if t >= target:
            return True
    return False


def escape_edge(run: RunConfig, rel_tol: float = 1e-4) -> float:
    """Smallest learning rate at which the run's pairs leave the healthy state within its
    steps: the pair angle, iterated by :func:`pair_split_ratio` (its statistics updated with
    the angle) from :func:`initial_pair_cosine`, reaches :data:`ESCAPE_ANGLE` within the
    ``floor(updates_per_point(run))`` updates a point takes. The ratio grows with the rate
    (its derivative in beta has the sign of 1 - p), so a bisection on the rate finds it.
    ``math.inf`` when even the largest rates (the ratio's limit
    ``(qc + 1 - p) / (1 - p - qc)``) do not split the pairs in time (few updates per point);
    NaN unless the update mode is ``sphere_raw`` with a temperature loss on mixture data
    without ``sign_flip``. Rates in the engine's units, ``lr = beta * 2 B tau``."""
    return _pair_edge(run, lambda theta0: ESCAPE_ANGLE, rel_tol)


def mirror_edge(run: RunConfig, rel_tol: float = 1e-4) -> float:
    """Smallest learning rate at which the run's pairs anti-align within its steps: as
    :func:`escape_edge`, with the pair map iterated on to :func:`mirror_angle` of the views'
    initial angle instead of pi/2. Complete collapse puts a point's two views on opposite
    ends of one line (+-u*), so it needs the split carried that far; the dimensional level
    needs only the escape. Never below the escape edge; ``math.inf`` and NaN as there."""
    return _pair_edge(run, mirror_angle, rel_tol)


def _pair_edge(run: RunConfig, angle_of, rel_tol: float) -> float:
    """Smallest rate at which the pair map takes the views' initial angle ``theta0`` to
    ``angle_of(theta0)`` within the run's updates per point (bisection on the rate)."""
    if not _raw_temperature_run(run):
        return math.nan
    theta0 = math.acos(min(1.0, max(-1.0, initial_pair_cosine(run))))
    angle = angle_of(theta0)
    updates = int(math.floor(updates_per_point(run)))
    weights = _pair_weights(run)
    w = _decay_per_beta(run)
    big = 1e12

    def reaches(beta):
        return _reaches(beta, theta0, angle, updates, weights, w)

    if updates < 1 or theta0 <= 0 or not reaches(big):
        return math.inf
    lo, hi = 1e-6, big
    while hi / lo - 1 > rel_tol:
        mid = math.sqrt(lo * hi)
        lo, hi = (lo, mid) if reaches(mid) else (mid, hi)
    return hi * 2 * run.batch_size * run.temperature

"""Collapse metrics, computed per run and vectorised over a stack of runs.

Every function takes embeddings ``(R, N, D)`` (or ``(N, D)``, treated as R = 1) and returns
one value per run, in float64 (inputs are promoted). No per-sample Python loops.
"""

from __future__ import annotations

import torch

#: collapse_state codes and their names
HEALTHY, RANK1_COLLAPSED, FULLY_COLLAPSED = 0, 1, 2
STATE_NAMES = {HEALTHY: "healthy", RANK1_COLLAPSED: "rank1", FULLY_COLLAPSED: "collapsed"}
#: mean pairwise cosine at or above which a run is fully collapsed (one point)
FULL_COLLAPSE_MEAN_COS = 0.99
#: mean pairwise squared cosine at or above which a run is rank-1 collapsed (one line, +-u*)
RANK1_MEAN_SQ_COS = 0.98
#: probability floor inside RankMe's entropy (Garrido et al. 2023 use 1e-7)
RANKME_EPS = 1e-7


def _runs(z: torch.Tensor) -> torch.Tensor:
    z = z.detach()
    if z.dim() == 2:
        z = z.unsqueeze(0)
    if z.dim() != 3:
        raise ValueError(f"embeddings must have shape (N, D) or (R, N, D), got {tuple(z.shape)}")
    return z.to(torch.float64)


def _unit(z: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(z, dim=-1)


def singular_values(z: torch.Tensor) -> torch.Tensor:
    """Singular values of each run's (uncentred) embedding matrix, descending. (R, min(N, D))."""
    return torch.linalg.svdvals(_runs(z))


def effective_rank(z: torch.Tensor) -> torch.Tensor:
    """RankMe (Garrido et al., ICML 2023, eq. 1): ``exp(-sum_k p_k log p_k)`` with
    ``p_k = s_k / ||s||_1 + eps``, ``s`` the singular values of the uncentred embeddings,
    ``eps = RANKME_EPS``. The one definition of effective rank in this toolkit. (R,).

    Note: the value lies between about 1 (one non-zero singular value: all rows on one line)
    and ``min(N, D)``. Normalised by ``min(N, D)``, it therefore has a floor of about
    ``1 / min(N, D)``, which is ``1 / N`` when ``N <= D``: a fully collapsed batch of 8 rows in
    128 dimensions reads 0.125, not 0. Compare normalised ranks only at equal ``N`` and ``D``."""
    s = singular_values(z)
    p = s / s.sum(-1, keepdim=True).clamp_min(torch.finfo(s.dtype).tiny) + RANKME_EPS
    return torch.exp(-(p * p.log()).sum(-1))


def embedding_variance(z: torch.Tensor) -> torch.Tensor:
    """Sum over dimensions of the per-dimension variance (biased, over the N rows). (R,).
    Pass normalised embeddings for the scale-free quantity the paper plots."""
    return _runs(z).var(dim=1, unbiased=False).sum(-1)


def mean_pairwise_cosine(z: torch.Tensor, unit: bool = False) -> torch.Tensor:
    """Mean of cos(z_i, z_j) over i != j. (R,). O(N D): ``(|sum_i u_i|^2 - N) / (N (N - 1))``.
    ``unit=True``: the rows are unit vectors already (not normalised again)."""
    u = _runs(z) if unit else _unit(_runs(z))
    n = u.shape[1]
    total = (u.sum(1) ** 2).sum(-1) - (u * u).sum((1, 2))
    return total / (n * (n - 1))


def mean_sq_pairwise_cosine(z: torch.Tensor, unit: bool = False) -> torch.Tensor:
    """Mean of cos(z_i, z_j)^2 over i != j. (R,). O(N D^2): ``(|U^T U|_F^2 - N) / (N (N - 1))``;
    1 exactly when every row lies on one line through the origin. ``unit`` as in
    :func:`mean_pairwise_cosine`."""
    u = _runs(z) if unit else _unit(_runs(z))
    n = u.shape[1]
    g = u.transpose(1, 2) @ u
    return ((g**2).sum((1, 2)) - (u * u).sum((1, 2)) ** 2 / n) / (n * (n - 1))


def max_pairwise_cosine(z: torch.Tensor) -> torch.Tensor:
    """Largest cos(z_i, z_j) over i != j. (R,). The Gram matrix is symmetric, so each row
    block meets only the columns from its own start on (half the work); blocks hold about
    2^21 entries (cache-sized) and use the embeddings' own dtype (float32 resolves cosines to
    ~1e-7). The result is float64."""
    z = z.detach()
    z = z.unsqueeze(0) if z.dim() == 2 else z
    u = _unit(z if z.dtype in (torch.float32, torch.float64) else z.float())
    runs, n, _ = u.shape
    block = max(1, (1 << 21) // max(1, runs * n))
    best = torch.full((runs,), -2.0, dtype=u.dtype, device=u.device)
    ut = u.transpose(1, 2)
    for i in range(0, n, block):
        c = torch.bmm(u[:, i: i + block], ut[:, :, i:])
        c[:, :, :block].diagonal(dim1=1, dim2=2).fill_(-2.0)
        best = torch.maximum(best, c.amax((1, 2)))
    return best.to(torch.float64)


def mean_norm(z: torch.Tensor) -> torch.Tensor:
    """Mean Euclidean norm of the rows. (R,)."""
    return _runs(z).norm(dim=-1).mean(-1)


def _class_means(z: torch.Tensor, y: torch.Tensor, k: int):
    z = _runs(z)
    y = y.to(z.device)
    if y.dim() == 1:
        y = y.unsqueeze(0).expand(z.shape[0], -1)
    onehot = torch.nn.functional.one_hot(y.clamp(min=0), k).to(z.dtype) * (y >= 0)[..., None]
    counts = onehot.sum(1)  # (R, k)
    means = onehot.transpose(1, 2) @ z / counts.clamp(min=1)[..., None]
    return z, onehot, counts, means


def nc1(z: torch.Tensor, y: torch.Tensor, k: int) -> torch.Tensor:
    """NC1 within-class variability (Papyan, Han, Donoho, PNAS 2020, Sec. 3):
    ``Tr(Sigma_W Sigma_B^+) / k`` with ``Sigma_W`` the within-class covariance and
    ``Sigma_B`` the covariance of the class means around the global mean. Rows with label
    -1 are ignored. (R,)."""
    z, onehot, counts, means = _class_means(z, y, k)
    n = counts.sum(-1)
    centred = z - onehot @ means
    valid = onehot.sum(-1, keepdim=True)
    sw = (centred * valid).transpose(1, 2) @ (centred * valid) / n[:, None, None]
    present = (counts > 0).to(z.dtype)
    gmean = (means * present[..., None]).sum(1, keepdim=True) / present.sum(-1)[:, None, None]
    mc = (means - gmean) * present[..., None]
    sb = mc.transpose(1, 2) @ mc / present.sum(-1)[:, None, None]
    return torch.diagonal(sw @ torch.linalg.pinv(sb, hermitian=True), dim1=1, dim2=2).sum(-1) / k


def target_gram(k: int, kind: str = "orthonormal") -> torch.Tensor:
    """Target Gram matrix of unit class means: identity (orthonormal, CLOP's target) or the
    simplex ETF ``(k I - 1 1^T) / (k - 1)``."""
    if kind == "orthonormal":
        return torch.eye(k, dtype=torch.float64)
    if kind == "simplex":
        return (k * torch.eye(k, dtype=torch.float64) - 1) / (k - 1)
    raise ValueError(f"kind must be orthonormal or simplex, got {kind!r}")


def gram_distance(z: torch.Tensor, y: torch.Tensor, k: int, target: str = "orthonormal") -> torch.Tensor:
    """Distance of the normalised class-mean Gram matrix to a target (an NC2-style measure,
    Papyan et al. 2020): ``|| M M^T / ||M M^T||_F - G / ||G||_F ||_F`` with ``M`` the unit
    class means (uncentred) and ``G = target_gram(k, target)``. (R,)."""
    _, _, _, means = _class_means(z, y, k)
    m = _unit(means)
    g = m @ m.transpose(1, 2)
    t = target_gram(k, target).to(g.device)
    return (g / g.norm(dim=(1, 2), keepdim=True) - t / t.norm()).norm(dim=(1, 2))


def min_class_angle(z: torch.Tensor, y: torch.Tensor, k: int) -> torch.Tensor:
    """Smallest angle (radians) between two class means. (R,)."""
    _, _, _, means = _class_means(z, y, k)
    m = _unit(means)
    c = (m @ m.transpose(1, 2)).clamp(-1, 1)
    c = c.masked_fill(torch.eye(k, dtype=torch.bool, device=c.device), -1.0)
    return torch.arccos(c.amax((1, 2)))


def prototype_cosine(z: torch.Tensor, y: torch.Tensor, prototypes: torch.Tensor, unit: bool = False) -> torch.Tensor:
    """Mean cos(z_i, p_{y_i}) over rows with a label (y >= 0). (R,). ``unit`` as in
    :func:`mean_pairwise_cosine`."""
    z = _runs(z) if unit else _unit(_runs(z))
    y = y.to(z.device)
    if y.dim() == 1:
        y = y.unsqueeze(0).expand(z.shape[0], -1)
    p = prototypes.to(device=z.device, dtype=z.dtype)[y.clamp(min=0)]
    lab = (y >= 0).to(z.dtype)
    return ((z * p).sum(-1) * lab).sum(-1) / lab.sum(-1).clamp(min=1)


def knn_accuracy(train: torch.Tensor, y_train: torch.Tensor, test: torch.Tensor, y_test: torch.Tensor,
                 k_classes: int, neighbours: int = 5) -> torch.Tensor:
    """Accuracy of a cosine-similarity k-nearest-neighbour vote (ties to the lowest class). (R,)."""
    a, b = _unit(_runs(train)), _unit(_runs(test))
    sim = b @ a.transpose(1, 2)  # (R, Nte, Ntr)
    nb = min(neighbours, a.shape[1])
    idx = sim.topk(nb, dim=-1).indices
    ytr = y_train.to(a.device)
    ytr = ytr.unsqueeze(0).expand(a.shape[0], -1) if ytr.dim() == 1 else ytr
    votes = torch.gather(ytr[:, None, :].expand(-1, idx.shape[1], -1), 2, idx)
    counts = torch.nn.functional.one_hot(votes, k_classes).sum(2)
    pred = counts.argmax(-1)
    yte = y_test.to(a.device)
    return (pred == yte).to(torch.float64).mean(-1)


def linear_probe_accuracy(train: torch.Tensor, y_train: torch.Tensor, test: torch.Tensor,
                          y_test: torch.Tensor, k_classes: int, ridge: float = 1e-3) -> torch.Tensor:
    """Accuracy of a ridge-regression linear probe on one-hot targets (closed form, with a
    bias; inputs standardised per run, ``ridge`` times the identity added). (R,)."""
    a, b = _runs(train), _runs(test)
    mu, sd = a.mean(1, keepdim=True), a.std(1, keepdim=True).clamp_min(1e-12)
    a, b = (a - mu) / sd, (b - mu) / sd
    ones = lambda x: torch.cat([x, torch.ones_like(x[..., :1])], -1)  # noqa: E731
    a, b = ones(a), ones(b)
    ytr = y_train.to(a.device)
    t = torch.nn.functional.one_hot(ytr, k_classes).to(a.dtype)
    t = t.unsqueeze(0).expand(a.shape[0], -1, -1) if t.dim() == 2 else t
    gram = a.transpose(1, 2) @ a + ridge * a.shape[1] * torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
    w = torch.linalg.solve(gram, a.transpose(1, 2) @ t)
    pred = (b @ w).argmax(-1)
    return (pred == y_test.to(a.device)).to(torch.float64).mean(-1)


def collapse_state(z: torch.Tensor, unit: bool = False) -> torch.Tensor:
    """Classify each run: ``FULLY_COLLAPSED`` (2) when the mean pairwise cosine is at least
    ``FULL_COLLAPSE_MEAN_COS``; else ``RANK1_COLLAPSED`` (1) when the mean pairwise squared
    cosine is at least ``RANK1_MEAN_SQ_COS``; else ``HEALTHY`` (0). (R,) int64. ``unit`` as
    in :func:`mean_pairwise_cosine`."""
    if not unit:
        z = _unit(_runs(z))
    full = mean_pairwise_cosine(z, unit=True) >= FULL_COLLAPSE_MEAN_COS
    line = mean_sq_pairwise_cosine(z, unit=True) >= RANK1_MEAN_SQ_COS
    state = torch.full(full.shape, HEALTHY, dtype=torch.int64, device=full.device)
    state[line] = RANK1_COLLAPSED
    state[full] = FULLY_COLLAPSED
    return state


def std_of_l2_normalized(z: torch.Tensor) -> torch.Tensor:
    """Mean over dimensions of the per-dimension standard deviation of the l2-normalised
    rows: ``(1/D) sum_k std_i(u_ik)`` with ``u_i = z_i / max(||z_i||, 1e-12)`` and the
    unbiased standard deviation over the N rows (divisor ``N - 1``). (R,).

    The definition of lightly's ``lightly.utils.debug.std_of_l2_normalized``
    (``torch.std(normalize(z, dim=1), dim=0).mean()``), itself the collapse check of SimSiam
    (Chen & He, CVPR 2021, Sec. 4.1): for rows drawn from an isotropic Gaussian (unit vectors
    uniform on the sphere) it tends to ``1 / sqrt(D)``; it is 0 when every row points the same
    way. A zero row stays zero. ``N = 1`` gives nan (the unbiased std is undefined, as in
    ``torch.std``), without a warning."""
    u = _unit(_runs(z))
    if u.shape[1] < 2:
        return torch.full(u.shape[:1], float("nan"), dtype=u.dtype, device=u.device)
    return u.std(dim=1, unbiased=True).mean(-1)


def collapse_level(z: torch.Tensor, clip: bool = True) -> torch.Tensor:
    """SimSiam's collapse level ``1 - sqrt(D) * std_of_l2_normalized(z)`` (Chen & He, CVPR
    2021, Sec. 4.1: the std of the l2-normalised output is ``1/sqrt(D)`` without collapse and
    0 when it collapses to one vector), as lightly's SimSiam tutorial logs it. (R,).

    1 means all rows point the same way; about 0 means isotropic rows. With ``clip=True`` (the
    default, lightly's ``max(0, ...)``) values below 0 are set to 0; unclipped the level lies in
    ``[1 - sqrt(N / (N - 1)), 1]`` (since ``mean_k s_k <= sqrt(sum_k s_k^2 / D)`` and the
    unbiased variances of unit rows sum to at most ``N / (N - 1)``), so it is slightly negative
    for spread-out rows at small N."""
    u = _runs(z)
    level = 1.0 - u.shape[-1] ** 0.5 * std_of_l2_normalized(u)
    return level.clamp_min(0.0) if clip else level


def singular_value_spectrum(z: torch.Tensor, normalize: str = "sum", center: bool = False,
                            length: int | None = None) -> torch.Tensor:
    """Normalised singular values of each run's embedding matrix, descending, for logging the
    spectrum at chosen steps (dimensional collapse shows as a tail of near-zero values, Jing,
    Vincent, LeCun, Tian, ICLR 2022, Sec. 3). (R, L) float64.

    Args:
        z: embeddings (R, N, D) or (N, D).
        normalize: ``sum``: ``s_k / sum_j s_j`` (the distribution inside RankMe,
            :func:`effective_rank`, without its eps; sums to 1); ``max``: ``s_k / s_1`` (the
            largest is 1; plot on a log scale); ``none``: the raw singular values.
        center: subtract each run's mean row first. Jing et al. plot the eigenvalues of the
            embedding covariance, which are ``s_k^2 / N`` of the centred matrix; the default
            (uncentred) matches :func:`singular_values` and :func:`effective_rank`.
        length: width L of the result: the ``min(N, D)`` values, padded with zeros (or cut)
            to ``length``, so that runs of different shapes log rows of one width. ``None``:
            ``L = min(N, D)``.

    A zero matrix gives zeros (no division by zero)."""
    if normalize not in ("sum", "max", "none"):
        raise ValueError(f"normalize must be sum, max or none, got {normalize!r}")
    if length is not None and (isinstance(length, bool) or not isinstance(length, int) or length < 1):
        raise ValueError(f"length must be None or an integer >= 1, got {length!r}")
    x = _runs(z)
    if center:
        x = x - x.mean(1, keepdim=True)
    s = torch.linalg.svdvals(x)
    tiny = torch.finfo(s.dtype).tiny
    if normalize == "sum":
        s = s / s.sum(-1, keepdim=True).clamp_min(tiny)
    elif normalize == "max":
        s = s / s[..., :1].clamp_min(tiny)
    if length is not None:
        k = s.shape[-1]
        s = s[..., :length] if length <= k else torch.nn.functional.pad(s, (0, length - k))
    return s

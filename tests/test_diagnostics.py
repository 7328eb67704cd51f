"""The collapse diagnostics users know from SSL libraries (std of l2-normalised embeddings,
SimSiam's collapse level, the singular-value spectrum) against loops written from their
formulas and their closed forms."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from simulate import metrics as M

DT = torch.float64


def std_of_l2_normalized_loop(z: np.ndarray) -> float:
    """(1/D) sum_k sqrt( sum_i (u_ik - mean_k)^2 / (N - 1) ), u_i = z_i / ||z_i||."""
    n, d = z.shape
    u = []
    for row in z:
        norm = math.sqrt(sum(float(v) ** 2 for v in row))
        u.append([float(v) / max(norm, 1e-12) for v in row])
    total = 0.0
    for k in range(d):
        col = [u[i][k] for i in range(n)]
        mean = sum(col) / n
        total += math.sqrt(sum((c - mean) ** 2 for c in col) / (n - 1))
    return total / d


def spectrum_loop(z: np.ndarray, normalize: str, center: bool) -> np.ndarray:
    """Singular values as square roots of the eigenvalues of X^T X (numpy), normalised."""
    x = z - z.mean(0) if center else z
    ev = np.sort(np.clip(np.linalg.eigvalsh(x.T @ x), 0, None))[::-1]
    s = np.sqrt(ev)[: min(z.shape)]
    if normalize == "sum":
        s = s / s.sum()
    elif normalize == "max":
        s = s / s[0]
    return s


@given(n=st.integers(2, 12), d=st.integers(1, 9), scale=st.floats(1e-3, 1e3), seed=st.integers(0, 10_000))
def test_std_of_l2_normalized_against_loop(n, d, scale, seed):
    g = torch.Generator().manual_seed(seed)
    z = scale * torch.randn(n, d, generator=g, dtype=DT)
    got = float(M.std_of_l2_normalized(z)[0])
    assert got == pytest.approx(std_of_l2_normalized_loop(z.numpy()), rel=1e-10, abs=1e-14)
    level = float(M.collapse_level(z, clip=False)[0])
    assert level == pytest.approx(1 - math.sqrt(d) * got, rel=1e-12, abs=1e-14)
    assert 1 - math.sqrt(n / (n - 1)) - 1e-12 <= level <= 1 + 1e-12
    assert float(M.collapse_level(z)[0]) == pytest.approx(max(0.0, level), abs=1e-14)


def test_batched_equals_per_run_and_float64():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(3, 30, 7, generator=g)  # float32 in, float64 out
    for f in (M.std_of_l2_normalized, M.collapse_level,
              lambda x: M.collapse_level(x, clip=False), M.singular_value_spectrum,
              lambda x: M.singular_value_spectrum(x, "max", center=True, length=9)):
        batched = f(z)
        assert batched.dtype == DT
        single = torch.cat([f(z[r]) for r in range(3)])
        assert torch.allclose(batched, single, rtol=1e-12, atol=1e-15)


def test_isotropic_points_closed_form():
    """Uniform unit vectors have per-coordinate std exactly 1/sqrt(D): std -> 1/sqrt(D),
    collapse level -> 0."""
    g = torch.Generator().manual_seed(1)
    for d in (2, 16, 128):
        z = torch.randn(2, 20_000, d, generator=g, dtype=DT)
        std = M.std_of_l2_normalized(z)
        assert torch.allclose(std, torch.full((2,), d ** -0.5, dtype=DT), rtol=0.01)
        assert bool((M.collapse_level(z, clip=False).abs() < 0.01).all())
        assert bool((M.collapse_level(z) < 0.01).all())


def test_all_equal_rows_are_fully_collapsed():
    row = torch.tensor([0.3, -1.2, 2.0, 0.7, 0.1], dtype=DT)
    for scale in (1.0, 1e-4, 1e4):
        z = (scale * row).expand(2, 50, 5)
        assert torch.allclose(M.std_of_l2_normalized(z), torch.zeros(2, dtype=DT), atol=1e-14)
        assert torch.allclose(M.collapse_level(z), torch.ones(2, dtype=DT), atol=1e-12)
    # the same direction at different norms is the same point after normalisation
    norms = torch.linspace(0.1, 10.0, 40, dtype=DT)[:, None]
    assert float(M.collapse_level(norms * row)[0]) == pytest.approx(1.0, abs=1e-12)
    # one line (+-u*) is not "collapsed" for this measure: the signs spread each coordinate
    signs = torch.tensor([1.0, -1.0] * 20, dtype=DT)[:, None]
    assert float(M.collapse_level(signs * row)[0]) < 0.5


def test_collapse_level_clipping_and_its_bound():
    # two antipodal points in 1-D reach the lower bound 1 - sqrt(N / (N - 1)) = 1 - sqrt(2)
    z = torch.tensor([[1.0], [-1.0]], dtype=DT)
    assert float(M.collapse_level(z, clip=False)[0]) == pytest.approx(1 - math.sqrt(2), rel=1e-12)
    assert float(M.collapse_level(z)[0]) == 0.0


def test_single_row_gives_nan_like_torch_std(recwarn):
    assert torch.isnan(M.std_of_l2_normalized(torch.ones(3, 1, 4))).all()
    assert torch.isnan(M.collapse_level(torch.ones(1, 4))).all()
    assert not recwarn.list


@pytest.mark.parametrize("normalize", ["sum", "max", "none"])
@pytest.mark.parametrize("center", [False, True])
@pytest.mark.parametrize("shape", [(9, 4), (4, 9), (6, 6)])
def test_spectrum_against_eigenvalues(normalize, center, shape):
    g = torch.Generator().manual_seed(2)
    z = torch.randn(*shape, generator=g, dtype=DT)
    got = M.singular_value_spectrum(z, normalize, center=center)
    assert got.shape == (1, min(shape)) and got.dtype == DT
    assert np.allclose(got[0].numpy(), spectrum_loop(z.numpy(), normalize, center), atol=1e-7)
    assert bool((got[0][:-1] >= got[0][1:]).all())


def test_spectrum_padding_and_degenerate_cases():
    g = torch.Generator().manual_seed(3)
    z = torch.randn(2, 5, 12, generator=g, dtype=DT)  # N < D: min(N, D) = 5 values
    s = M.singular_value_spectrum(z, length=12)
    assert s.shape == (2, 12)
    assert torch.equal(s[:, 5:], torch.zeros(2, 7, dtype=DT))
    assert torch.allclose(s.sum(-1), torch.ones(2, dtype=DT), atol=1e-12)
    assert torch.equal(M.singular_value_spectrum(z, length=3), M.singular_value_spectrum(z)[:, :3])
    assert torch.equal(M.singular_value_spectrum(torch.zeros(4, 3)), torch.zeros(1, 3, dtype=DT))
    # all rows on one line: one non-zero value
    line = torch.randn(20, 1, generator=g, dtype=DT) * torch.randn(1, 6, generator=g, dtype=DT)
    s = M.singular_value_spectrum(line, "max")[0]
    assert float(s[0]) == pytest.approx(1.0) and float(s[1:].abs().max()) < 1e-12
    # the sum-normalised spectrum is RankMe's distribution: exp(entropy) is the effective rank
    p = M.singular_value_spectrum(z)
    q = p + M.RANKME_EPS
    assert torch.allclose(torch.exp(-(q * q.log()).sum(-1)), M.effective_rank(z), rtol=1e-12)
    with pytest.raises(ValueError, match="normalize must be"):
        M.singular_value_spectrum(z, "l2")
    with pytest.raises(ValueError, match="length must be"):
        M.singular_value_spectrum(z, length=0)


def test_normalised_effective_rank_floor_is_one_over_n():
    """The docstring's note: normalised by min(N, D), a collapsed batch with N <= D reads
    about 1/N, not 0."""
    row = torch.randn(1, 64, generator=torch.Generator().manual_seed(4), dtype=DT)
    for n in (4, 8, 32):
        z = row.expand(n, 64)
        assert float(M.effective_rank(z)[0]) / min(n, 64) == pytest.approx(1 / n, rel=1e-3)

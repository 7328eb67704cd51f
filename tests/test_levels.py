"""Collapse levels (simulate.stability.levels) against hand-made embeddings: a rank-2 set, a
line, an isotropic set, a simplex of class means; the reference-rank logic; NaN."""

import math

import pytest
import torch

from simulate import stability as S
from simulate.metrics import effective_rank
from simulate.stability import levels as L

N, D = 256, 16


def _rank(z: torch.Tensor) -> float:
    return float(effective_rank(z)[0])


def _isotropic(seed: int = 0) -> torch.Tensor:
    return torch.randn(N, D, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def _on_axes(k: int, signed: bool = True) -> torch.Tensor:
    """N rows spread over the first k axes, equally weighted (both signs with ``signed``)."""
    z = torch.zeros(N, D, dtype=torch.float64)
    idx = torch.arange(N)
    sign = torch.where((idx // k) % 2 == 0, 1.0, -1.0).double()
    z[idx, idx % k] = sign if signed else 1.0
    return z


def _simplex(k: int) -> torch.Tensor:
    """N rows on the k vertices of a centred regular simplex (class collapse onto k means)."""
    e = torch.eye(k, dtype=torch.float64) - 1.0 / k
    z = torch.zeros(N, D, dtype=torch.float64)
    z[:, :k] = e[torch.arange(N) % k]
    return z


REF = _rank(_isotropic(1))  # the reference: an isotropic (healthy) set of the same shape


def test_hand_made_sets_have_the_expected_ranks():
    assert _rank(_on_axes(1)) == pytest.approx(1.0, abs=1e-4)
    assert _rank(_on_axes(2)) == pytest.approx(2.0, abs=1e-4)
    assert _rank(_simplex(4)) == pytest.approx(3.0, abs=1e-4)
    assert 14 < REF <= D


def test_rank_two_set_is_dimensionally_but_not_completely_collapsed():
    r = _rank(_on_axes(2))
    assert S.is_collapsed(r, "dimensional", reference_rank=REF)
    assert not S.is_collapsed(r, "complete", reference_rank=REF)
    assert not S.COMPLETE.collapsed(r) and not S.collapsed(r)


def test_line_is_collapsed_at_both_levels():
    for z in (_on_axes(1), _on_axes(1, signed=False)):  # +-u* and all rows equal
        r = _rank(z)
        assert S.collapsed(r) and S.COMPLETE.collapsed(r)
        assert S.DIMENSIONAL.collapsed(r, REF)


def test_isotropic_set_is_collapsed_at_no_level():
    r = _rank(_isotropic(2))
    for name, level in S.LEVELS.items():
        assert not level.collapsed(r, REF, k=4), name
        assert not S.is_collapsed(r, name, reference_rank=REF, k=4)


def test_reference_rank_logic():
    dim = S.DIMENSIONAL
    assert dim.threshold(16.0) == S.DIMENSIONAL_FRACTION * 16.0 == 8.0
    # a small reference never makes the level looser than complete collapse...
    assert dim.threshold(2.5) == S.COLLAPSED_RANK
    assert not dim.collapsed(1.6, 2.5) and dim.collapsed(1.5, 2.5)
    # ...and a missing (diverged) reference leaves only what collapses under every reference
    assert dim.threshold(math.nan) == S.COLLAPSED_RANK
    assert dim.collapsed(1.2, math.nan) and not dim.collapsed(3.0, math.nan)
    # the same final rank is collapsed against a healthy reference, not against a low one
    assert dim.collapsed(4.0, 15.9) and not dim.collapsed(4.0, 6.0)
    # the threshold itself counts as collapsed, as for COLLAPSED_RANK
    assert dim.collapsed(8.0, 16.0) and not dim.collapsed(8.0 + 1e-9, 16.0)
    assert dim.needs_reference and not S.COMPLETE.needs_reference and S.CLASS.needs_k


def test_nan_rank_is_collapsed_at_every_level():
    for level in S.LEVELS.values():
        assert level.collapsed(math.nan, REF, k=4)
        assert level.collapsed(math.nan, math.nan, k=4)


def test_class_level_is_the_simplex_of_class_means():
    r = _rank(_simplex(4))
    assert S.CLASS.threshold(k=4) == 4 - 1 + S.CLASS_RANK_MARGIN
    assert S.is_collapsed(r, "class", k=4)
    assert not S.is_collapsed(_rank(_on_axes(8)), "class", k=4)
    assert S.is_collapsed(_rank(_on_axes(1)), "class", k=4)  # complete implies class
    assert S.CLASS.threshold(k=2) == S.COLLAPSED_RANK  # k = 2: a line, the complete level
    with pytest.raises(ValueError, match=r"\bk\b"):
        S.CLASS.collapsed(3.0)


def test_levels_are_named_and_nested():
    assert list(S.LEVELS) == ["complete", "dimensional", "class"]
    assert S.get_level("dimensional") is S.DIMENSIONAL and S.get_level(S.CLASS) is S.CLASS
    with pytest.raises(ValueError, match=r"\blevel\b"):
        S.get_level("partial")
    # complete implies dimensional and class (k >= 2) for any reference
    for ref in (math.nan, 1.0, 2.0, 3.0, 16.0, 64.0):
        for k in (2, 4, 16):
            assert S.DIMENSIONAL.threshold(ref) >= S.COMPLETE.threshold()
            assert S.CLASS.threshold(ref, k) >= S.COMPLETE.threshold()
    assert L.COLLAPSED_RANK is S.COLLAPSED_RANK == 1.5
    from simulate.stability.onset import COLLAPSED_RANK

    assert COLLAPSED_RANK == S.COLLAPSED_RANK


# ---------------------------------------------------------------- the scan's bracket rule
GRID = [1.0, 10.0, 100.0, 1000.0, 10000.0]


@pytest.mark.parametrize("ranks, bracket, dip", [
    ([16, 15, 3, 1.2, 1.1], (10.0, 100.0), None),          # monotone: the first collapsed rate
    ([16, 3, 9, 2.0, 1.0], (100.0, 1000.0), 10.0),         # a dip at 10, healthy again at 100
    ([16, 15, 14, 13, 12], (10000.0, math.inf), None),     # none collapses
    ([16, 2, 2, 2, 9], (10000.0, math.inf), 10.0),         # the largest rate is healthy: none
    ([16, 15, float("nan"), 1.0, 1.0], (10.0, 100.0), None),  # diverged counts as collapsed
])
def test_scan_bracket_is_where_every_larger_rate_collapses(ranks, bracket, dip):
    """The onset ("the rate above which runs end collapsed") is bracketed by the largest
    healthy scanned rate and the next one; a dip below a healthy rate is reported, not taken.
    Dimensional level, reference = the first rate's rank (16): collapsed when rank <= 8."""
    from simulate.stability.measure import _scan_brackets, _scan_dips, dip_note

    scans = [(0, 7, GRID)]
    test = lambda ci, seed, v: L.DIMENSIONAL.collapsed(v, ranks[0])  # noqa: E731
    assert _scan_brackets(scans, ranks, test) == {(0, 7): bracket}
    assert _scan_dips(scans, ranks, test) == {(0, 7): dip}
    note = dip_note({"dips": [dip]}, [7])
    assert (note == "") == (dip is None) and (dip is None or "seed 7 at 10" in note)

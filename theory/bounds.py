"""Numeric access to the thresholds and one-step maps: ``critical_lr``, ``step_map``.

Every number here is the SymPy expression of a claim, lambdified; nothing is re-derived.
"""

from __future__ import annotations

import functools
import math
from typing import Callable

import numpy as np
import sympy as sp

from . import batch, maps, ntxent
from ._claim import require_int_at_least, require_positive, require_range
from .symbols import a, beta, c, n, neg_cos, neg_spread, p_pos, tau, theta, w

_CRITICAL = {
    "anchor": (maps.ANCHOR_CRITICAL, ("w",)),
    "pair": (maps.PAIR_CRITICAL, ("w",)),
    "ntxent_pair": (ntxent.NTXENT_CRITICAL, ("tau", "p_pos", "neg_cos", "neg_spread")),
    "rank1_cycle": (ntxent.RANK1_CRITICAL, ("tau", "n")),
    "ntxent_batch_axes": (batch.RELATIVE_CRITICAL["axes"], ("tau", "n", "w")),
    "ntxent_batch_simplex": (batch.RELATIVE_CRITICAL["simplex"], ("tau", "n", "w")),
}
_SYMBOL = {"w": w, "tau": tau, "p_pos": p_pos, "neg_cos": neg_cos, "neg_spread": neg_spread, "n": n}
_DEFAULTS = {"ntxent_pair": {"neg_cos": -1.0, "neg_spread": 0.0},
             "ntxent_batch_axes": {"w": 0.0}, "ntxent_batch_simplex": {"w": 0.0}}
CRITICAL_KINDS = tuple(_CRITICAL)
MAP_KINDS = ("anchor", "pair", "pair_unprojected")


def _kind(kind: str, accepted) -> str:
    if kind not in accepted:
        raise ValueError(f"kind must be one of {', '.join(accepted)}; got {kind!r}")
    return kind


def critical_lr_expr(kind: str) -> sp.Expr:
    """The SymPy expression of the critical learning rate of ``kind``.

    Kinds and symbols: ``anchor`` (w), ``pair`` (w), ``ntxent_pair`` (tau, p_pos, c_neg,
    s_neg), ``rank1_cycle`` (tau, n) and ``ntxent_batch_axes`` / ``ntxent_batch_simplex``
    (tau, n, w: the splitting modes of claim ``ntxent_batch``). See the claims of the same
    names for the setting.
    """
    return _CRITICAL[_kind(kind, CRITICAL_KINDS)][0]


#: forms used for numbers where the claim's expression overflows in floating point (same
#: value; the claim proves the identity)
_NUMERIC_FORM = {"rank1_cycle": ntxent.RANK1_CRITICAL_STABLE}


@functools.lru_cache(maxsize=None)
def _lambdified(kind: str) -> Callable:
    expr, names = _CRITICAL[kind]
    expr = _NUMERIC_FORM.get(kind, expr)
    return sp.lambdify([_SYMBOL[k] for k in names], expr, "math")


def _validate(kind: str, params: dict) -> dict:
    names = _CRITICAL[kind][1]
    unknown = set(params) - set(names)
    if unknown:
        raise ValueError(
            f"unknown parameter(s) {', '.join(sorted(unknown))} for kind {kind!r}; "
            f"accepted: {', '.join(names)}"
        )
    full = {**_DEFAULTS.get(kind, {}), **params}
    missing = [k for k in names if k not in full]
    if missing:
        raise ValueError(f"kind {kind!r} needs parameter(s) {', '.join(missing)}")
    if "w" in full and kind.startswith("ntxent_batch"):
        full["w"] = require_range("w", full["w"], 0.0, math.inf)  # CLOP weight, 0: none
    elif "w" in full:
        full["w"] = require_positive("w", full["w"])
    if "tau" in full:
        full["tau"] = require_positive("tau", full["tau"])
    if "p_pos" in full:
        full["p_pos"] = require_range("p_pos", full["p_pos"], 0.0, 1.0, closed=False)
    if "neg_cos" in full:
        full["neg_cos"] = require_range("neg_cos", full["neg_cos"], -1.0, 1.0)
    if "neg_spread" in full:
        hi = 1.0 - full["neg_cos"] ** 2
        full["neg_spread"] = require_range("neg_spread", full["neg_spread"], 0.0, hi + 1e-9)
    if "n" in full:
        full["n"] = require_int_at_least("n", full["n"], 2)
    if kind.startswith("ntxent_batch") and full["tau"] < 0.002:
        raise ValueError(f"tau must be >= 0.002 for {kind} (exp(1/tau) overflows float64 "
                         f"below about 0.0014), got {full['tau']!r}")
    return full


def critical_lr(kind: str, **params: float) -> float:
    """Learning rate above which the claim's fixed point loses stability (or, for
    ``rank1_cycle``, above which the collapsed two-cycle attracts).

    Args:
        kind: ``anchor`` (w), ``pair`` (w), ``ntxent_pair`` (tau, p_pos; optional neg_cos,
            default -1, and neg_spread, default 0: antipodal negatives), ``rank1_cycle``
            (tau, n points per side), ``ntxent_batch_axes`` or ``ntxent_batch_simplex``
            (tau, n the dimension, optional w the CLOP weight, default 0): claim
            ``ntxent_batch``, a full batch of aligned pairs at +-e_i or at simplex vertices,
            every point moving, sum over anchors. For these two the value is the splitting
            modes' rate; at small tau and n a collective mode can bind first
            (:func:`theory.batch.batch_critical` gives the rate over every mode).

    Returns:
        The threshold as a float; ``math.inf`` for ``rank1_cycle`` when the configuration
        never attracts (``(n - 2) exp(2/tau) <= n``).

    Raises:
        ValueError: unknown kind, unknown or missing parameter, or a parameter out of range
            (the message names it and the accepted range).
    """
    _kind(kind, CRITICAL_KINDS)
    full = _validate(kind, params)
    names = _CRITICAL[kind][1]
    if kind == "rank1_cycle":
        k = full["n"]
        if k - 2 <= k * math.exp(-2 / full["tau"]):  # (n - 2) e^{2/tau} <= n, without overflow
            return math.inf
    with np.errstate(over="ignore"):
        value = float(_lambdified(kind)(*(full[k] for k in names)))
    return value


def ntxent_p_pos(tau_value: float, n_neg: int, neg_cos_value: float = -1.0) -> float:
    """Softmax weight of an aligned positive against ``n_neg`` negatives at cosine ``neg_cos``.

    In a SimCLR batch of N pairs each anchor sees ``n_neg = 2N - 2`` negatives.
    """
    t = require_positive("tau", tau_value)
    k = require_int_at_least("n_neg", n_neg, 1)
    cn = require_range("neg_cos", neg_cos_value, -1.0, 1.0)
    return 1.0 / (1.0 + k * math.exp((cn - 1.0) / t))


@functools.lru_cache(maxsize=None)
def _map_fn(kind: str) -> Callable:
    if kind == "anchor":
        return sp.lambdify((theta, a), maps.ANCHOR_MAP, "numpy")
    expr = maps.PAIR_MAP if kind == "pair" else maps.PAIR_MAP_RAW
    return sp.lambdify((c, beta), expr, "numpy")


def step_map(kind: str, *, eta: float, w: float) -> Callable[[np.ndarray], np.ndarray]:
    """One-step map as a NumPy function, for cobweb plots and iteration.

    Args:
        kind: ``anchor`` (angle to a fixed prototype, radians), ``pair`` (cosine of two
            points, projected step) or ``pair_unprojected`` (cosine, raw gradient).
        eta: learning rate, > 0.
        w: weight of the cosine term; > 0 for ``anchor``, nonzero for the pair maps
            (negative means repulsion).
    """
    _kind(kind, MAP_KINDS)
    e = require_positive("eta", eta)
    if kind == "anchor":
        ww = require_positive("w", w)
    else:
        ww = float(w)
        if not math.isfinite(ww) or ww == 0:
            raise ValueError(f"w must be a finite nonzero number, got {w!r}")
    fn = _map_fn(kind)
    return lambda x: fn(np.asarray(x, dtype=np.float64), e * ww)

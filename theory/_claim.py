"""The :class:`Claim` object and the registry every theory module adds to."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import sympy as sp


@dataclass(frozen=True)
class CheckResult:
    """Outcome of a claim's numeric check.

    Attributes:
        passed: every point agreed within ``tolerance``.
        max_error: largest error seen (the claim says what the error measures).
        tolerance: the bound ``max_error`` was held to.
        points: number of random points (configurations, parameter draws) tried.
    """

    passed: bool
    max_error: float
    tolerance: float
    points: int


@dataclass(frozen=True)
class Claim:
    """One statement of the collapse analysis, provable in SymPy and checkable in float64.

    Attributes:
        name: registry key, e.g. ``"anchor_map"``.
        title: one line.
        statement: the result, in LaTeX.
        assumptions: the setting, spelled out (norms, projection, renormalisation, movers).
        sketch: proof sketch (LaTeX-friendly text) for the report.
        notes: where the derivation departs from a candidate or needs care.
        proof_steps: callable returning ``{step: bool}``; each step is a SymPy computation
            (an identity simplified to zero, a derivative at a fixed point, a solved threshold).
        checker: callable ``(rng) -> (errors, tolerance)`` running the numeric check.
        objects: callable returning the SymPy objects the claim rests on, by name.
    """

    name: str
    title: str
    statement: str
    assumptions: tuple[str, ...]
    sketch: str
    proof_steps: Callable[[], dict[str, bool]]
    checker: Callable[[np.random.Generator], tuple[np.ndarray, float]]
    objects: Callable[[], dict[str, Any]] = field(default=lambda: {})
    notes: str = ""

    def prove(self) -> bool:
        """Run the symbolic proof; True when every step holds."""
        return all(self.steps().values())

    def steps(self) -> dict[str, bool]:
        return _cached_steps(self.name, self.proof_steps)

    def check(self, seed: int = 0) -> CheckResult:
        """Numeric check in float64 at random points drawn from ``seed``."""
        errors, tol = self.checker(np.random.default_rng(seed))
        errors = np.asarray(errors, dtype=np.float64).ravel()
        max_error = float(np.max(errors)) if errors.size else math.nan
        passed = bool(errors.size) and bool(np.all(np.isfinite(errors))) and max_error <= tol
        return CheckResult(passed=passed, max_error=max_error, tolerance=tol, points=errors.size)

    def __str__(self) -> str:
        lines = [f"{self.name}: {self.title}", f"  statement: {self.statement}"]
        lines += [f"  assumes: {a}" for a in self.assumptions]
        if self.notes:
            lines.append(f"  notes: {self.notes}")
        return "\n".join(lines)


@functools.lru_cache(maxsize=None)
def _cached_steps_impl(name: str, fn: Callable[[], dict[str, bool]]) -> tuple:
    return tuple((k, bool(v)) for k, v in fn().items())


def _cached_steps(name: str, fn: Callable[[], dict[str, bool]]) -> dict[str, bool]:
    return dict(_cached_steps_impl(name, fn))


_REGISTRY: dict[str, Claim] = {}


def register(claim: Claim) -> Claim:
    if claim.name in _REGISTRY:
        raise ValueError(f"claim {claim.name!r} registered twice")
    _REGISTRY[claim.name] = claim
    return claim


def registry() -> dict[str, Claim]:
    return _REGISTRY


def is_zero(expr: sp.Expr) -> bool:
    """True when ``expr`` simplifies to zero (tries cheap forms before ``simplify``)."""
    expr = sp.sympify(expr)
    for f in (sp.expand, sp.cancel, sp.together, sp.trigsimp, sp.simplify):
        expr = f(expr)
        if expr == 0:
            return True
    return False


def is_zero_modulo(expr: sp.Expr, relations: list, gens: list) -> bool:
    """True when the numerator of ``expr`` lies in the ideal of the polynomial ``relations``.

    Used for identities that hold on a constraint set, e.g. ``R**2 - (z1**2 + z2**2 + z3**2)``
    after replacing a norm by the symbol ``R``.
    """
    num, _ = sp.fraction(sp.together(sp.expand(expr)))
    num = sp.expand(num)
    if num == 0:
        return True
    _, rem = sp.reduced(num, relations, *gens)
    return sp.expand(rem) == 0


def require_positive(name: str, value: float) -> float:
    v = float(value)
    if not (math.isfinite(v) and v > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return v


def require_range(name: str, value: float, lo: float, hi: float, *, closed: bool = True) -> float:
    v = float(value)
    ok = (lo <= v <= hi) if closed else (lo < v < hi)
    if not (math.isfinite(v) and ok):
        br = "[]" if closed else "()"
        raise ValueError(f"{name} must lie in {br[0]}{lo}, {hi}{br[1]}, got {value!r}")
    return v


def require_int_at_least(name: str, value: int, lo: int) -> int:
    if isinstance(value, bool) or int(value) != value or int(value) < lo:
        raise ValueError(f"{name} must be an integer >= {lo}, got {value!r}")
    return int(value)

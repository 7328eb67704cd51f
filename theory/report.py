"""Run every claim's proof and check; render the results as text, JSON or LaTeX."""

from __future__ import annotations

import json
import textwrap
from dataclasses import dataclass

from ._claim import Claim


@dataclass(frozen=True)
class Row:
    claim: Claim
    steps: dict[str, bool]
    proved: bool
    checked: bool
    max_error: float
    tolerance: float
    points: int

    def as_dict(self) -> dict:
        return {
            "name": self.claim.name,
            "proved": self.proved,
            "checked": self.checked,
            "max_error": self.max_error,
            "tolerance": self.tolerance,
            "points": self.points,
            "title": self.claim.title,
            "statement": self.claim.statement,
            "assumptions": list(self.claim.assumptions),
            "steps": self.steps,
            "notes": self.claim.notes,
        }


def evaluate(claims: dict[str, Claim], seed: int = 0) -> list[Row]:
    rows = []
    for c in claims.values():
        steps = c.steps()
        res = c.check(seed)
        rows.append(
            Row(c, steps, all(steps.values()), res.passed, res.max_error, res.tolerance, res.points)
        )
    return rows


def to_text(rows: list[Row]) -> str:
    yes = lambda b: "yes" if b else "NO"  # noqa: E731
    head = f"{'claim':<24} {'proved':>6} {'checked':>7} {'max error':>10} {'tol':>8} {'points':>6}"
    out = [head, "-" * len(head)]
    for r in rows:
        out.append(
            f"{r.claim.name:<24} {yes(r.proved):>6} {yes(r.checked):>7} "
            f"{r.max_error:>10.2e} {r.tolerance:>8.0e} {r.points:>6}"
        )
        wrap = lambda s, p: textwrap.fill(s, 96, initial_indent=p, subsequent_indent=" " * len(p))  # noqa: E731
        out.append(wrap(r.claim.title, "    "))
        out.append(wrap(r.claim.statement, "    statement: "))
        out += [wrap(a, "    assumes:   ") for a in r.claim.assumptions]
        out += [
            wrap(f"[{'ok' if ok else 'FAILS'}] {s}", "    step:      ") for s, ok in r.steps.items()
        ]
    n_ok = sum(r.proved and r.checked for r in rows)
    out.append(f"{n_ok} of {len(rows)} claims proved and checked")
    return "\n".join(out)


def to_json(rows: list[Row]) -> str:
    return json.dumps([r.as_dict() for r in rows], indent=2)


def _tex_escape(s: str) -> str:
    for a, b in (("\\", r"\textbackslash{}"), ("_", r"\_"), ("^", r"\^{}"), ("&", r"\&"),
                 ("%", r"\%"), ("#", r"\#"), ("{", r"\{"), ("}", r"\}")):
        s = s.replace(a, b)
    return s


_MARK = {True: r"$\checkmark$", False: r"$\times$"}


def to_latex(rows: list[Row]) -> str:
    out = [
        r"\documentclass[11pt]{article}",
        r"\usepackage{amsmath,amssymb}",
        r"\usepackage[margin=2.2cm]{geometry}",
        r"\title{clop-lab: the collapse analysis, claim by claim}",
        r"\date{}",
        r"\begin{document}",
        r"\maketitle",
        "Each claim is proved symbolically (SymPy) and checked numerically in float64 "
        "at random points. Status: proved / checked (max error, tolerance, points).",
    ]
    for r in rows:
        out += [
            rf"\section*{{{_tex_escape(r.claim.name)}: {_tex_escape(r.claim.title)}}}",
            rf"\[ {r.claim.statement} \]",
            r"\paragraph{Assumptions.}",
            r"\begin{itemize}",
            *[rf"\item {_tex_escape(a)}" for a in r.claim.assumptions],
            r"\end{itemize}",
            rf"\paragraph{{Proof sketch.}} {r.claim.sketch}",
            r"\paragraph{Symbolic steps.}",
            r"\begin{itemize}",
            *[rf"\item[{_MARK[ok]}] \texttt{{{_tex_escape(s)}}}" for s, ok in r.steps.items()],
            r"\end{itemize}",
        ]
        if r.claim.notes:
            out.append(rf"\paragraph{{Notes.}} {_tex_escape(r.claim.notes)}")
        out.append(
            rf"\paragraph{{Status.}} proved: {'yes' if r.proved else 'no'}; checked: "
            rf"{'yes' if r.checked else 'no'} (max error {r.max_error:.2e}, tolerance "
            rf"{r.tolerance:.0e}, {r.points} points)."
        )
    out.append(r"\end{document}")
    return "\n".join(out) + "\n"

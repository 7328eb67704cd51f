"""``python -m theory``: prove and check every claim; exit 1 if any fails."""

from __future__ import annotations

import argparse
import os
import sys

from . import claim, claims
from .report import evaluate, to_json, to_latex, to_text


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line, ``error: ...``, with exit status 2."""

    def error(self, message: str):
        self.exit(2, "error: " + " ".join(message.split()) + "\n")


def _latex_target_problem(path: str) -> str | None:
    """Why the LaTeX report could not be written to ``path`` (None: it can), checked before
    the claims are evaluated."""
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        return "is a folder, not a file"
    if not os.path.isdir(folder):
        return f"cannot be written: the folder {folder!r} does not exist"
    if not os.access(folder, os.W_OK | os.X_OK) or (
        os.path.exists(path) and not os.access(path, os.W_OK)
    ):
        return "cannot be written: permission denied"
    return None


def main(argv: list[str] | None = None) -> int:
    ap = _Parser(
        prog="python -m theory",
        description="Prove (SymPy) and check (float64) every claim of the collapse analysis.",
    )
    ap.add_argument("--json", action="store_true", help="print the results as a JSON list")
    ap.add_argument("--latex", metavar="FILE", help="also write a LaTeX report to FILE")
    ap.add_argument("--seed", type=int, default=0,
                    help="seed of the numeric checks, an integer >= 0 (default 0)")
    ap.add_argument("--only", nargs="+", metavar="NAME", help="run only these claims")
    args = ap.parse_args(argv)
    if args.seed < 0:
        ap.error(f"--seed must be an integer >= 0, got {args.seed}")
    if args.latex:
        problem = _latex_target_problem(args.latex)
        if problem:
            ap.error(f"--latex {args.latex!r} {problem}")
    try:
        selected = {n: claim(n) for n in args.only} if args.only else claims()
    except ValueError as exc:
        ap.error(f"--only: {exc}")
    rows = evaluate(selected, seed=args.seed)
    report = to_latex(rows) if args.latex else None
    print(to_json(rows) if args.json else to_text(rows))
    if args.latex:
        try:
            with open(args.latex, "w", encoding="utf-8") as fh:
                fh.write(report)
        except OSError as exc:
            print(f"error: --latex {args.latex!r} cannot be written: {exc.strerror or exc}",
                  file=sys.stderr)
            return 2
    return 0 if all(r.proved and r.checked for r in rows) else 1


def _entry() -> int:
    """``main`` for ``python -m theory``: Ctrl-C is the one line ``error: interrupted`` with
    exit status 130, not a traceback."""
    try:
        return main()
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(_entry())

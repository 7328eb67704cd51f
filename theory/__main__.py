"""``python -m theory``: prove and check every claim; exit 1 if any fails."""

from __future__ import annotations

import argparse
import sys

from . import claim, claims
from .report import evaluate, to_json, to_latex, to_text


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m theory",
        description="Prove (SymPy) and check (float64) every claim of the collapse analysis.",
    )
    ap.add_argument("--json", action="store_true", help="print the results as a JSON list")
    ap.add_argument("--latex", metavar="FILE", help="also write a LaTeX report to FILE")
    ap.add_argument("--seed", type=int, default=0, help="seed of the numeric checks (default 0)")
    ap.add_argument("--only", nargs="+", metavar="NAME", help="run only these claims")
    args = ap.parse_args(argv)
    try:
        selected = {n: claim(n) for n in args.only} if args.only else claims()
    except ValueError as exc:
        ap.error(str(exc))
    rows = evaluate(selected, seed=args.seed)
    print(to_json(rows) if args.json else to_text(rows))
    if args.latex:
        with open(args.latex, "w", encoding="utf-8") as fh:
            fh.write(to_latex(rows))
    return 0 if all(r.proved and r.checked for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())

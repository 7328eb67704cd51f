"""``python -m figures``: build every registered figure into ``figures/out/``."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from . import FIGURES, write, write_index

DEFAULT_OUT = Path(__file__).resolve().parent / "out"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m figures", description=__doc__)
    ap.add_argument("--only", nargs="+", metavar="ID", help=f"figure ids: {', '.join(FIGURES)}")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder")
    args = ap.parse_args(argv)
    ids = args.only or list(FIGURES)
    unknown = [i for i in ids if i not in FIGURES]
    if unknown:
        ap.error(f"--only: unknown figure id(s) {', '.join(unknown)}; accepted: {', '.join(FIGURES)}")
    records = []
    for i in ids:
        rec = write(FIGURES[i], args.out)
        records.append(rec)
        print(f"wrote {args.out / i}.png/.pdf/.csv")
    cmd = "python -m figures" + (" " + " ".join(shlex.quote(a) for a in argv) if argv else "")
    print(f"index: {write_index(records, args.out, cmd)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

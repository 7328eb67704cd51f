"""``python -m figures``: run the sweeps a preset needs (cached) and draw every figure.

    python -m figures [--preset quick|paper] [--only ID ...] [--device auto] [--results DIR]
    python -m figures agreement [--small] [--steps N]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import shlex
import sys
import time
from pathlib import Path

from . import FIGURES, write, write_index

ROOT = Path(__file__).resolve().parent
DEFAULT_OUT = ROOT / "out"
DEFAULT_RESULTS = ROOT.parent / "results"


def load_data(preset: str, sweeps: set[str], results: Path, device: str, quiet: bool | None = None):
    """Run (or resume: finished chunks are skipped) the named sweeps of a preset and load them."""
    from simulate.config import SpecError, resolve_specs
    from simulate.sweep import load_embeddings, load_results, run_sweep

    specs = resolve_specs(preset)
    missing = sorted(sweeps - set(specs))
    if missing:
        raise SpecError(f"preset {preset!r} has no sweep(s) {', '.join(missing)}; "
                        f"it has {', '.join(sorted(specs))}")
    data, digests = {}, {}
    for name in sorted(sweeps):
        out = results / Path(preset).stem / name
        run_sweep(specs[name], out, device=device, quiet=quiet)
        data[name] = load_results(out)
        if specs[name].get("save_embeddings"):
            data[f"{name}:embeddings"] = load_embeddings(out)
        h = hashlib.sha256()
        for f in sorted((out / "chunks").glob("*.parquet")):
            h.update(f.read_bytes())
        digests[name] = h.hexdigest()
    return data, digests


def draw(argv: list[str]) -> int:
    from simulate.config import (
        CliParser,
        SpecError,
        check_device_here,
        check_out_folder,
        parse_device,
        resolve_specs,
    )
    from simulate.sweep import SweepFailed

    ap = CliParser(prog="python -m figures", description=__doc__,
                   formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="quick", help="sweep preset: quick (CPU minutes) or paper (GPU)")
    ap.add_argument("--only", nargs="+", metavar="ID", help=f"figure ids: {', '.join(FIGURES)}")
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default: auto)")
    ap.add_argument("--results", type=Path, default=DEFAULT_RESULTS, help="sweep results folder")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="figure output folder")
    args = ap.parse_args(argv)
    ids = args.only or list(FIGURES)
    unknown = [i for i in ids if i not in FIGURES]
    if unknown:
        ap.error(f"--only: unknown figure id(s) {', '.join(unknown)}; accepted: {', '.join(FIGURES)}")
    needed = {s for i in ids for s in FIGURES[i].preset_sweeps}
    try:  # every option is checked before any sweep runs or any figure is drawn
        resolve_specs(args.preset)
    except SpecError as exc:
        ap.error(f"--preset: {exc}")
    try:
        device = parse_device(args.device, "--device")
        check_out_folder(args.out, "--out")
        if needed:
            check_device_here(device, "--device")
            check_out_folder(args.results, "--results")
    except SpecError as exc:
        ap.error(str(exc))
    t0 = time.perf_counter()
    try:
        data, digests = load_data(args.preset, needed, args.results, device) if needed else ({}, {})
    except SweepFailed as exc:
        print("error: " + " ".join(str(exc).split()), file=sys.stderr)
        return 1
    except (ValueError, OSError) as exc:
        ap.error(str(exc))
    print(f"sweeps ready in {time.perf_counter() - t0:.1f} s: {', '.join(sorted(needed)) or 'none needed'}")
    records = []
    for i in ids:
        fig = FIGURES[i]
        h = None
        if fig.preset_sweeps:
            h = hashlib.sha256("".join(digests[s] for s in fig.preset_sweeps).encode()).hexdigest()[:16]
        records.append(write(fig, args.out, data, h))
        print(f"wrote {args.out / i}.png/.pdf/.csv")
    cmd = "python -m figures" + (" " + " ".join(shlex.quote(a) for a in argv) if argv else "")
    print(f"index: {write_index(records, args.out, cmd)}")
    return 0


def agreement(argv: list[str]) -> int:
    from simulate.config import CliParser

    ap = CliParser(prog="python -m figures agreement",
                   description="Predicted against measured critical learning rates.")
    ap.add_argument("--small", action="store_true", help="one case per claim, fewer steps")
    ap.add_argument("--steps", type=int, default=None,
                    help="steps of the growth criterion, >= 1 (default: 400; 150 with --small)")
    args = ap.parse_args(argv)
    if args.steps is not None and args.steps < 1:
        ap.error(f"--steps must be an integer >= 1, got {args.steps}")
    from simulate.theory_sims import agreement_rows

    configs = None
    if args.small:
        configs = {"anchor_map": [{"w": 0.8}], "pair_map": [{"w": 0.8}], "ntxent_pair": [{"tau": 0.5}],
                   "rank1_cycle": [{"tau": 0.5, "n": 4}]}
    steps = args.steps if args.steps is not None else (150 if args.small else 400)
    rows = agreement_rows(configs, steps=steps)
    head = f"{'claim':<14} {'parameters':<62} {'predicted':>11} {'measured':>11} {'rel.err':>8}  within 5%"
    print(head)
    print("-" * len(head))
    for r in rows:
        params = ", ".join(f"{k}={v}" for k, v in r["params"].items())
        print(f"{r['claim']:<14} {params:<62} {r['predicted']:>11.5g} {r['measured']:>11.5g} "
              f"{r['rel_error']:>8.2%}  {'yes' if r['within_5pct'] else 'NO'}")
    print(f"criterion: {rows[0]['criterion'].split(':', 1)[1].strip()} (bisection to 0.1%)")
    print(json.dumps([{**r, "measured": None if math.isnan(r["measured"]) else r["measured"]} for r in rows]))
    return 0 if all(r["within_5pct"] for r in rows) else 1


def main(argv: list[str] | None = None) -> int:
    import matplotlib

    matplotlib.use("Agg")  # command-line entry point: draw to files, never to a window
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["agreement"]:
        return agreement(argv[1:])
    return draw(argv)


if __name__ == "__main__":
    sys.exit(main())

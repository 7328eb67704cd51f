"""``python -m figures``: run the sweeps a preset needs (cached) and draw every figure.

    python -m figures [--preset quick|paper] [--only ID ...] [--device auto] [--results DIR]
                      [--wait SECONDS]
    python -m figures agreement [--small] [--steps N]
    python -m figures onset [--grid quick|full|heldout|optimizers|mlp|mlp-heldout|mlp-heldout-2|paper|tiny|encoder-tiny]
                            [--steps N] [--device cpu]
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

from simulate.interrupts import caused_by_interrupt, exit_after, startup_imports  # noqa: E402  (standard library only)

with startup_imports(__name__):  # the registry imports numpy, sympy, pandas and matplotlib (about a second)
    from . import FIGURES, write, write_index

ROOT = Path(__file__).resolve().parent
DEFAULT_OUT = ROOT / "out"
DEFAULT_RESULTS = ROOT.parent / "results"


def load_data(preset: str, sweeps: set[str], results: Path, device: str, quiet: bool | None = None,
              wait: float = 0):
    """Run (or resume: finished chunks are skipped) the named sweeps of a preset and load them.
    A sweep folder another process is writing is waited for up to ``wait`` seconds (0: the
    sweep's ``FolderLocked`` at once)."""
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
        _say_if_waiting(out, wait)
        run_sweep(specs[name], out, device=device, quiet=quiet, wait=wait)
        data[name] = load_results(out)
        if specs[name].get("save_embeddings"):
            data[f"{name}:embeddings"] = load_embeddings(out)
        h = hashlib.sha256()
        for f in sorted((out / "chunks").glob("*.parquet")):
            h.update(f.read_bytes())
        digests[name] = h.hexdigest()
    return data, digests


def _say_if_waiting(folder: Path, wait: float) -> None:
    """One line on stderr when another process holds ``folder``'s sweep lock and this run is
    about to wait for it (a probe: the sweep takes the lock itself)."""
    from filelock import FileLock, Timeout

    from simulate.store import LOCK_NAME

    if wait <= 0 or not (folder / LOCK_NAME).exists():
        return
    probe = FileLock(str(folder / LOCK_NAME))
    try:
        probe.acquire(timeout=0)
    except Timeout:
        print(f"waiting up to {wait:g} s for the process writing {str(folder)!r}",
              file=sys.stderr, flush=True)
    except OSError:
        return  # the sweep reports an unusable folder itself
    else:
        probe.release()


def _draw_parser():
    from simulate.cli import CliParser

    ap = CliParser(prog="python -m figures", description=__doc__,
                   formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="quick", help="sweep preset: quick (CPU minutes) or paper (GPU)")
    ap.add_argument("--only", nargs="+", metavar="ID", help=f"figure ids: {', '.join(FIGURES)}")
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default: auto)")
    ap.add_argument("--results", type=Path, default=DEFAULT_RESULTS, help="sweep results folder")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="figure output folder")
    ap.add_argument("--wait", default=0, metavar="SECONDS",
                    help="if another process (a sweep, or python -m figures) is writing a sweep "
                         "folder under --results, wait up to this long for it, per folder "
                         "(default: 0, exit 2 at once)")
    return ap


def _check_draw_options(ap, args) -> tuple[list[str], set[str], str]:
    """The figure ids, the preset sweeps they need and the device (``args.wait`` becomes
    seconds); every option is checked before any sweep runs or any figure is drawn (a bad
    one: ``ap.error``, exit 2)."""
    from simulate.cli import check_device_here, parse_device, parse_seconds
    from simulate.config import SpecError, resolve_specs
    from simulate.store import check_out_folder

    ids = args.only or list(FIGURES)
    unknown = [i for i in ids if i not in FIGURES]
    if unknown:
        ap.error(f"--only: unknown figure id(s) {', '.join(unknown)}; accepted: {', '.join(FIGURES)}")
    needed = {s for i in ids for s in FIGURES[i].preset_sweeps}
    try:
        resolve_specs(args.preset)
    except SpecError as exc:
        ap.error(f"--preset: {exc}")
    try:
        device = parse_device(args.device, "--device")
        args.wait = parse_seconds(args.wait, "--wait")
        check_out_folder(args.out, "--out")
        if needed:
            check_device_here(device, "--device")
            check_out_folder(args.results, "--results")
    except ValueError as exc:  # SpecError, OutputError
        ap.error(str(exc))
    return ids, needed, device


def _write_figures(ids: list[str], out: Path, data: dict, digests: dict, argv: list[str]) -> None:
    """Draw and write every figure of ``ids`` into ``out``, then merge them into its index."""
    records = []
    for i in ids:
        fig = FIGURES[i]
        h = None
        if fig.preset_sweeps:
            h = hashlib.sha256("".join(digests[s] for s in fig.preset_sweeps).encode()).hexdigest()[:16]
        records.append(write(fig, out, data, h))
        print(f"wrote {out / i}.png/.pdf/.csv")
    cmd = "python -m figures" + (" " + " ".join(shlex.quote(a) for a in argv) if argv else "")
    print(f"index: {write_index(records, out, cmd)}")


def draw(argv: list[str]) -> int:
    ap = _draw_parser()
    args = ap.parse_args(argv)
    ids, needed, device = _check_draw_options(ap, args)
    try:
        return _sweep_and_draw(ap, args, ids, needed, device, argv)
    except KeyboardInterrupt:  # chunk and figure files are written whole or not at all
        kept = f"the finished sweep chunks are kept in {str(args.results)!r} and " if needed else ""
        print(f"error: interrupted; {kept}every figure file written is complete: run the same "
              "command again to resume", file=sys.stderr)
        return 130


def _sweep_and_draw(ap, args, ids: list[str], needed: set[str], device: str, argv: list[str]) -> int:
    """Run (or resume) the sweeps the figures need, then draw them; a failed sweep: exit 1; a
    sweep folder another process holds (past ``--wait``) or cannot be used: exit 2."""
    from simulate.store import FolderLocked
    from simulate.sweep import SweepFailed

    t0 = time.perf_counter()
    try:
        data, digests = (load_data(args.preset, needed, args.results, device, wait=args.wait)
                         if needed else ({}, {}))
    except SweepFailed as exc:
        print("error: " + " ".join(str(exc).split()), file=sys.stderr)
        return 1
    except FolderLocked as exc:  # the store's hint names sweep's flag; this command's is the same
        ap.error(str(exc).replace("sweep --wait SECONDS", "figures --wait SECONDS"))
    except (ValueError, OSError) as exc:
        ap.error(str(exc))
    print(f"sweeps ready in {time.perf_counter() - t0:.1f} s: {', '.join(sorted(needed)) or 'none needed'}")
    _write_figures(ids, args.out, data, digests, argv)
    return 0


def agreement(argv: list[str]) -> int:
    from simulate.cli import CliParser

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
    head = f"{'claim':<14} {'parameters':<62} {'predicted':>11} {'measured':>11} {'rel.err':>8}  within 1%"
    print(head)
    print("-" * len(head))
    for r in rows:
        params = ", ".join(f"{k}={v}" for k, v in r["params"].items())
        print(f"{r['claim']:<14} {params:<62} {r['predicted']:>11.5g} {r['measured']:>11.5g} "
              f"{r['rel_error']:>8.2%}  {'yes' if r['within_1pct'] else 'NO'}")
    print(f"criterion: {rows[0]['criterion'].split(':', 1)[1].strip()} (bisection to 0.1%)")
    print(json.dumps([{**r, "measured": None if math.isnan(r["measured"]) else r["measured"]} for r in rows]))
    return 0 if all(r["within_1pct"] for r in rows) else 1


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        import matplotlib

        matplotlib.use("Agg")  # command-line entry point: draw to files, never to a window
        if argv[:1] == ["agreement"]:
            return agreement(argv[1:])
        if argv[:1] == ["onset"]:
            from .onset_command import onset

            return onset(argv[1:])
        return draw(argv)
    except Exception as exc:  # noqa: BLE001  (an import that Ctrl-C cut short is not a KeyboardInterrupt)
        if not caused_by_interrupt(exc):
            raise
        print("error: interrupted", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


def _entry() -> int:
    """``main`` for ``python -m figures``: Ctrl-C outside its own handler is the one line
    ``error: interrupted`` with exit status 130 too."""
    try:
        return main()
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    exit_after(_entry)

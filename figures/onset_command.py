"""``python -m figures onset``: predicted against measured onsets of collapse, per collapse
level, for the free-embedding grids (:func:`simulate.stability.onset_table`) and the encoder
grids (:func:`simulate.stability.encoder_grids.encoder_onset_table`). The table comes first,
then one summary line per level, then the JSON list of the rows (last)."""

from __future__ import annotations

import json
import math
import time


def _fmt(v: float) -> str:
    return "none" if v == math.inf else f"{v:.4g}"


def _json_value(v):
    """``v`` for JSON: NaN as null, infinities as "inf" (lists element by element)."""
    if isinstance(v, float) and not math.isfinite(v):
        return None if math.isnan(v) else "inf"
    if isinstance(v, list):
        return [_json_value(x) for x in v]
    return v


def _ratio_text(ratio: float) -> str:
    return "-" if math.isnan(ratio) else "inf" if ratio == math.inf else f"{ratio:.3g}"


def _cells(r: dict) -> str:
    """A row's predicted, measured, ratio and seed spread, aligned ("-": not predicted)."""
    spread = "-" if math.isnan(r["spread"]) else f"{r['spread']:.2f}x"
    pred = "-" if math.isnan(r["predicted"]) else _fmt(r["predicted"])
    return f"{pred:>10} {_fmt(r['measured']):>10} {_ratio_text(r['ratio']):>7} {spread:>11}"


def _per_seed(r: dict) -> str:
    return ", ".join(_fmt(v) for v in r["per_seed"])


def _print_onset_table(rows: list[dict]) -> None:
    head = (f"{'configuration':<22} {'level':<11} {'predicted':>10} {'measured':>10} {'ratio':>7} "
            f"{'seed spread':>11}  {'attract':>8} {'escape':>10} {'mirror':>10}  per seed")
    print(head)
    print("-" * len(head))
    for r in rows:
        if r["level"] == "class":  # the edge of the class-collapsed simplex; the pair map's are not its
            edges = f"{_fmt(r['class_attraction_edge']):>8} {'-':>10} {'-':>10}"
        else:
            edges = (f"{_fmt(r['attraction_edge']):>8} {_fmt(r['escape_edge']):>10} "
                     f"{_fmt(r['mirror_edge']):>10}")
        print(f"{r['config']:<22} {r['level']:<11} {_cells(r)}  {edges}  {_per_seed(r)}")
    for r in rows:
        if not r["within_2x"]:
            print(f"  {r['config']} ({r['level']}): {r['note']}")


def _print_encoder_table(rows: list[dict]) -> None:
    """Encoder rows: the rank measured (output, projection or representation), what predicts
    it (``law``: the recovery law; ``decay``: LARS's weight-decay edge; ``overflow``: LARS
    without weight decay, the embeddings' float32 overflow; ``-``: nothing, or outside the
    predictor's range, which the row's note names), the
    kick rate, the curvature at initialisation and the edge of stability beside the
    prediction."""
    head = (f"{'configuration':<18} {'level':<11} {'rank':<14} {'predicted':>10} {'measured':>10} "
            f"{'ratio':>7} {'seed spread':>11}  {'by':<8} {'kick':>7} {'lambda_0':>9} {'edge':>8}  per seed")
    print(head)
    print("-" * len(head))
    for r in rows:
        by = "-" if r["predicted_by"] == "none" or math.isnan(r["predicted"]) else r["predicted_by"]
        print(f"{r['config']:<18} {r['level']:<11} {r['rank']:<14} {_cells(r)}  {by:<8} "
              f"{'-' if math.isnan(r['kick_rate']) else _fmt(r['kick_rate']):>7} {r['lambda_0']:>9.4g} {_fmt(r['eos_edge']):>8}  {_per_seed(r)}")
    for r in rows:
        if not r["within_2x"]:
            print(f"  {r['config']} ({r['level']}, {r['rank']}): {r['note']}")


def _median(values: list[float]) -> float:
    v = sorted(values)
    if not v:
        return math.nan
    return v[len(v) // 2] if len(v) % 2 else 0.5 * (v[len(v) // 2 - 1] + v[len(v) // 2])


def _print_onset_summary(rows: list[dict], levels: dict, seconds: float,
                         scan: tuple[float, float] | None = None) -> None:
    """The definitions, then one line per level (``levels``: name -> level) over its rows
    with a prediction: median |ratio - 1|, how many within 2x and 15%, the worst. ``scan``:
    the encoder grids' fixed scan range (the reference rank is taken at its smallest rate)."""
    defs = "; ".join(f"{name}: {lev.description}" for name, lev in levels.items()
                     if any(r["level"] == name for r in rows))
    if scan is not None:
        defs = defs.replace("0.03 x 2B tau", f"lr {scan[0]:g}")
    top = "3000 x 2B tau" if scan is None else f"lr {scan[1]:g}"
    target = 0.15 if scan is None else 0.2  # free embeddings' target; the encoders'
    print(f"collapsed after the run's steps, per level ({defs}); onset: bisection on lr per "
          f"seed, median over seeds; 'none': no collapse (predicted, or measured up to "
          f"{top}); '-': not predicted; ratio = predicted / measured (1 when neither "
          f"collapses)")
    for name in levels:
        mine = [r for r in rows if r["level"] == name]
        if not mine:
            continue
        pred = [r for r in mine if not math.isnan(r["ratio"])]
        if not pred:
            print(f"{name}: not predicted in any of {len(mine)} rows")
            continue
        med = _median([abs(r["ratio"] - 1) for r in pred])
        worst = max(pred, key=lambda r: abs(math.log(r["ratio"])) if 0 < r["ratio"] < math.inf
                    else math.inf)
        within = sum(r["within_2x"] for r in pred)
        close = sum(abs(r["ratio"] - 1) <= 0.15 for r in pred)
        print(f"{name}: median |ratio - 1| = {med:.3g} (target <= {target:g}); within 2x: {within} of "
              f"{len(pred)} predicted rows ({len(mine) - len(pred)} not predicted), within 15%: "
              f"{close}; worst: {worst['config']} (ratio {_ratio_text(worst['ratio'])})")
    if scan is not None:
        _print_cost(rows)
    print(f"{seconds:.0f} s")


def _print_cost(rows: list[dict]) -> None:
    """Encoder rows with a prediction: its time over the measurement's, per predictor (the
    target is a tenth; the law's probes run for every row at once, their time is shared out)."""
    for how in sorted({r["predicted_by"] for r in rows} - {"none"}):
        cost = [r["predict_s"] / r["measure_s"] for r in rows
                if r["predicted_by"] == how and not math.isnan(r["predicted"])]
        if cost:
            print(f"cost of a prediction ({how}): {_median(cost):.2g} of measuring the row "
                  f"(median over {len(cost)} row{'s' * (len(cost) != 1)}; target <= 0.1)")


def onset(argv: list[str]) -> int:
    from simulate.cli import CliParser, check_device_here, parse_device
    from simulate.config import SpecError

    ap = CliParser(prog="python -m figures onset",
                   description="Predicted against measured learning rate of the onset of "
                               "collapse, per collapse level (complete, dimensional; class for "
                                "SupCon).")
    ap.add_argument("--grid", default="quick",
                    help="free embeddings: quick | full | heldout | optimizers | tiny; MLP encoders: mlp | "
                         "mlp-heldout | mlp-heldout-2 | paper | encoder-tiny (default: quick)")
    ap.add_argument("--steps", type=int, default=None, help="training steps per run, >= 1 "
                    "(default: the grid's: tiny 60, quick, full, heldout and optimizers 1000, encoder "
                    "grids 300, encoder-tiny 30)")
    ap.add_argument("--device", default="cpu", help="auto | cpu | cuda | cuda:N (default: cpu)")
    args = ap.parse_args(argv)
    from simulate.stability import LEVELS, ONSET_GRIDS, onset_table
    from simulate.stability.encoder_grids import ENCODER_GRIDS, encoder_onset_table

    if args.grid not in ONSET_GRIDS and args.grid not in ENCODER_GRIDS:
        ap.error(f"--grid must be one of {', '.join([*ONSET_GRIDS, *ENCODER_GRIDS])}, got {args.grid!r}")
    if args.steps is not None and args.steps < 1:
        ap.error(f"--steps must be an integer >= 1, got {args.steps}")
    try:
        device = check_device_here(parse_device(args.device, "--device"), "--device")
    except SpecError as exc:
        ap.error(str(exc))
    t0 = time.perf_counter()
    scan = None
    if args.grid in ENCODER_GRIDS:
        rows = encoder_onset_table(args.grid, device=device, steps=args.steps)
        _print_encoder_table(rows)
        scan = ENCODER_GRIDS[args.grid][-1]
    else:
        rows = onset_table(args.grid, device=device, steps=args.steps)
        _print_onset_table(rows)
    _print_onset_summary(rows, LEVELS, time.perf_counter() - t0, scan)
    print(json.dumps([{k: _json_value(v) for k, v in r.items()} for r in rows]))
    return 0

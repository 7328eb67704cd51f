"""``python -m simulate``: train one configuration, run a sweep, or benchmark the engine.

    python -m simulate run --loss ntxent --lr 1.0 --clop-weight 1.0 --steps 200
    python -m simulate sweep quick --out results/quick [--device auto] [--max-memory 4GB]
    python -m simulate bench [--device auto]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import typing

from .config import RunConfig, SpecError


def _field_type(f: dataclasses.Field):
    hint = typing.get_type_hints(RunConfig)[f.name]
    if hint is bool:
        return lambda s: {"true": True, "1": True, "yes": True, "false": False, "0": False,
                          "no": False}[s.lower()]
    if hint in (int, float, str):
        return hint
    return lambda s: None if s.lower() == "none" else int(s)  # noqa: E731  (int | None)


def _add_run_options(p: argparse.ArgumentParser) -> None:
    doc = {
        "loss": "base loss: ntxent | supcon | dcl | vicreg | barlow | align | repel",
        "temperature": "temperature tau > 0 (ntxent, supcon, dcl)",
        "clop_weight": "CLOP weight lambda >= 0 (0: off)",
        "prototypes": "CLOP prototypes: orthonormal | simplex",
        "distance": "CLOP distance: cosine | euclidean | manhattan",
        "lr": "learning rate > 0", "momentum": "SGD momentum in [0, 1)",
        "weight_decay": "SGD weight decay >= 0", "batch_size": "minibatch size",
        "steps": "training steps", "log_every": "log metrics every this many steps",
        "model": "free | mlp", "update_mode": "free | sphere | sphere_raw (sphere modes: model free)",
        "hidden": "MLP width", "depth": "MLP linear layers", "out_dim": "MLP output dimension",
        "batch_norm": "MLP batch norm (true/false)", "k": "classes", "d": "data dimension",
        "per_class": "points per class", "means": "orthonormal | random | simplex",
        "mean_scale": "norm of the class means", "sigma": "within-class noise std",
        "noise_rank": "noise subspace dimension per class (none: isotropic)",
        "label_fraction": "fraction of labelled training points", "aug_sigma": "view noise std",
        "sign_flip": "random sign per view (true/false)", "holdout_fraction": "held-out fraction",
        "data_seed": "seed of the data", "seed": "seed of initialisation and minibatches",
        "name": "free-form label",
    }
    for f in dataclasses.fields(RunConfig):
        p.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, type=_field_type(f),
                       default=f.default, help=f"{doc.get(f.name, f.name)} (default: {f.default})")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m simulate", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="train one configuration and print its trajectory")
    _add_run_options(run)
    run.add_argument("--device", default="auto", help="auto | cpu | cuda (default: auto)")

    sw = sub.add_parser("sweep", help="run or resume a sweep into an output folder")
    sw.add_argument("spec", help="spec file (YAML or JSON) or preset name (quick, paper)")
    sw.add_argument("--out", required=True, help="output folder (resumed if it exists)")
    sw.add_argument("--device", default="auto", help="auto | cpu | cuda (default: auto)")
    sw.add_argument("--max-memory", default="2GB", help="memory budget per chunk (default: 2GB)")
    sw.add_argument("--quiet", action="store_true", help="no progress bar")
    sw.add_argument("--executor", default="local", choices=["local", "ray"],
                    help="local (default, this process) or ray (one Ray task per chunk)")
    sw.add_argument("--address", default=None,
                    help="Ray cluster address (default: a private instance on 127.0.0.1)")
    sw.add_argument("--gpus-per-chunk", type=float, default=0,
                    help="GPUs per Ray task; > 0 trains on cuda (default: 0, CPU)")
    sw.add_argument("--max-retries", type=int, default=2,
                    help="retries of a failed Ray task (default: 2)")

    be = sub.add_parser("bench", help="batched engine against a per-configuration loop")
    be.add_argument("--device", default="auto", help="auto | cpu | cuda (default: auto)")
    be.add_argument("--steps", type=int, default=300, help="training steps (default: 300)")
    be.add_argument("--repeats", type=int, default=3,
                    help="engine runs, each paired with a matmul-throughput measurement; the "
                         "JSON reports medians (default: 3)")
    be.add_argument("--no-loop", action="store_true",
                    help="skip the per-configuration loop (no speedup or max_abs_diff)")

    args = ap.parse_args(argv)
    try:
        if args.command == "run":
            return _run(args)
        if args.command == "sweep":
            return _sweep(args)
        from .bench import main_bench

        return main_bench(args.device, args.steps, args.repeats, not args.no_loop)
    except SpecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _run(args) -> int:
    import pandas as pd

    from .train import train_chunk

    cfg = RunConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(RunConfig)})
    rows = train_chunk([cfg], args.device)
    cols = ["step", "objective", "effective_rank", "variance", "mean_cos", "max_cos", "mean_norm",
            "proto_cos", "state", "knn_acc", "probe_acc"]
    with pd.option_context("display.width", 160, "display.max_columns", 20):
        print(pd.DataFrame(rows)[cols].to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    return 0


def _sweep(args) -> int:
    from .sweep import SweepFailed, run_specs

    try:
        results = run_specs(args.spec, args.out, device=args.device, max_memory=args.max_memory,
                            quiet=True if args.quiet else None, executor=args.executor,
                            address=args.address, gpus_per_chunk=args.gpus_per_chunk,
                            max_retries=args.max_retries)
    except SweepFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for res in results.values():
        print(f"{res.total_runs} runs: {res.skipped_runs} already done, {res.chunks_run} chunk(s) "
              f"trained in {res.wall_s:.1f} s -> {res.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``python -m simulate``: train one configuration, run a sweep, or benchmark the engine.

    python -m simulate run --loss ntxent --lr 1.0 --clop-weight 1.0 --steps 200
    python -m simulate sweep quick --out results/quick [--device auto] [--max-memory 4GB]
    python -m simulate bench [--device auto]
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
import typing

from .interrupts import caused_by_interrupt, exit_after, startup_imports

with startup_imports(__name__):  # these import pandas and torch (about a second)
    from .cli import CliParser, check_device_here, parse_bool, parse_device, parse_seconds
    from .config import RunConfig, SpecError
    from .store import check_out_folder

#: what each field type accepts on the command line
_ACCEPTED = {bool: "true or false", int: "an integer", float: "a number", str: "text"}


def _field_type(f: dataclasses.Field):
    """The argparse type of a RunConfig field; a bad value names what the option accepts."""
    hint = typing.get_type_hints(RunConfig)[f.name]

    def convert(text: str):
        try:
            if hint is bool:
                return parse_bool(text)
            if hint in (int, float, str):
                return hint(text)
            if text.strip().lower() == "none":
                return None
            return float(text) if hint == (float | None) else int(text)  # int | None, float | None
        except ValueError:
            accepted = _ACCEPTED.get(hint, "none or a number" if hint == (float | None) else "none or an integer")
            raise argparse.ArgumentTypeError(f"must be {accepted}, got {text!r}") from None

    return convert


def _fail(message, status: int = 2) -> int:
    """Print ``error: message`` as one line on stderr and return the exit status."""
    print("error: " + " ".join(str(message).split()), file=sys.stderr)
    return status


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
        "batch_norm": "MLP batch norm (true/false)", "k": "classes",
        "d": "data dimension (none: 16 for the mixture, 64 for digits, the only width digits accepts)",
        "per_class": "points per class", "means": "orthonormal | random | simplex",
        "mean_scale": "norm of the class means", "sigma": "within-class noise std",
        "noise_rank": "noise subspace dimension per class (none: isotropic)",
        "init_norm": "initial norm of every free embedding (none: the views' own norms; update mode free)",
        "label_fraction": "fraction of labelled training points", "aug_sigma": "view noise std",
        "sign_flip": "random sign per view (true/false)", "holdout_fraction": "held-out fraction",
        "data_seed": "seed of the data", "seed": "seed of initialisation and minibatches",
        "name": "free-form label",
        "optimizer": "sgd | lars | adam | adamw (one per chunk; hyper-parameters per run)",
        "nesterov": "Nesterov momentum for sgd and lars (true/false; needs momentum > 0)",
        "lars_trust": "LARS trust coefficient eta > 0 (trust ratio eta*|w|/(|g| + wd*|w| + eps) per layer)",
        "lars_biases": "LARS and the biases: sgd (left out of the trust ratio and weight decay, as the "
                       "SimCLR recipes do) | lars (adapted and decayed like the weights); one per chunk",
        "beta1": "Adam/AdamW first-moment coefficient in [0, 1)",
        "beta2": "Adam/AdamW second-moment coefficient in [0, 1)",
        "eps": "Adam/AdamW denominator term > 0 (also in the LARS trust-ratio denominator)",
        "warmup_steps": "linear warmup: update t <= W uses lr*t/W (0: none)",
        "schedule": "learning-rate schedule after the warmup: constant | cosine (to 0 at the last step)",
        "spectrum_every": "log the singular-value spectra at logged steps that are multiples of this, "
                          "step 0 and the last (none: every logged step)",
        "projector_dims": "MLP projector head widths, comma-separated such as 64,16 (empty or none: no projector)",
        "data": "mixture | digits (scikit-learn's 8x8 digits, shipped; model mlp, d = 64)",
        "max_shift": "digits views: largest shift per image axis in pixels, 0..7",
    }
    for f in dataclasses.fields(RunConfig):
        p.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, type=_field_type(f),
                       default=f.default, help=f"{doc.get(f.name, f.name)} (default: {f.default})")


def _parser() -> CliParser:
    ap = CliParser(prog="python -m simulate", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="train one configuration and print its trajectory")
    _add_run_options(run)
    run.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default: auto)")

    _add_sweep_parser(sub)
    _add_bench_parser(sub)
    return ap


def _add_sweep_parser(sub) -> None:
    sw = sub.add_parser("sweep", help="run or resume a sweep into an output folder")
    sw.add_argument("spec", help="spec file (YAML or JSON) or preset name (quick, paper)")
    sw.add_argument("--out", required=True, help="output folder (resumed if it exists)")
    sw.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default: auto)")
    sw.add_argument("--max-memory", default="2GB", help="memory budget per chunk (default: 2GB)")
    sw.add_argument("--quiet", action="store_true", help="no progress bar")
    sw.add_argument("--wait", default=0, metavar="SECONDS",
                    help="if another sweep is writing --out, wait up to this long for it "
                         "(default: 0, exit 2 at once)")
    sw.add_argument("--dry-run", action="store_true",
                    help="print the runs, chunks, memory per chunk and an estimated wall time "
                         "(from a short calibration run per chunk shape); train and write nothing")
    sw.add_argument("--executor", default="local", choices=["local", "ray"],
                    help="local (default, this process) or ray (one Ray task per chunk)")
    sw.add_argument("--address", default=None,
                    help="Ray cluster address (default: a private instance on 127.0.0.1)")
    sw.add_argument("--gpus-per-chunk", type=float, default=0,
                    help="GPUs per Ray task; > 0 trains on cuda (default: 0, CPU)")
    sw.add_argument("--max-retries", type=int, default=2,
                    help="retries of a failed Ray task (default: 2)")
    sw.add_argument("--connect-timeout", type=float, default=30.0,
                    help="seconds to wait for the Ray cluster at --address to answer; > 0 "
                         "(default: 30)")


def _add_bench_parser(sub) -> None:
    be = sub.add_parser("bench", help="batched engine against a per-configuration loop")
    be.add_argument("--optimizer", default="sgd",
                    help="sgd | sgd-momentum | lars | adam | adamw, or several comma-separated, "
                         "each timed and compared with its per-configuration torch.optim loop "
                         "(default: sgd)")
    be.add_argument("--model", default="free", choices=("free", "mlp"),
                    help="free: free embeddings (default); mlp: the quick preset's MLP lr sweep "
                         "shape against an nn.Sequential + torch.optim loop per configuration and "
                         "(plain sgd) a torch.func vmap ensemble")
    be.add_argument("--projector", default="",
                    help="with --model mlp: a projector head's layer widths, such as 64,16 "
                         "(default: none)")
    be.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default: auto)")
    be.add_argument("--steps", type=int, default=300, help="training steps (default: 300)")
    be.add_argument("--repeats", type=int, default=3,
                    help="engine runs, each paired with a matmul-throughput measurement; the "
                         "JSON reports medians (default: 3)")
    be.add_argument("--no-loop", action="store_true",
                    help="skip the per-configuration loop (no speedup or max_abs_diff)")


def main(argv: list[str] | None = None) -> int:
    ap = _parser()
    args = ap.parse_args(argv)
    try:
        if args.command == "run":
            return _run(args)
        if args.command == "sweep":
            return _sweep(args)
        return _bench(args)
    except ValueError as exc:  # SpecError included: a bad spec, option or output folder
        return _fail(exc)
    except KeyboardInterrupt:
        where = (f"; the finished chunks are kept in {args.out}: run the same command again to "
                 "resume") if args.command == "sweep" else ""
        return _fail(f"interrupted{where}", 130)
    except (ImportError, RuntimeError) as exc:  # an import that Ctrl-C cut short
        if not caused_by_interrupt(exc):
            raise
        return _fail("interrupted", 130)
    except BrokenPipeError:  # the reader of stdout (| head) has gone: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


def _bench(args) -> int:
    from .bench import main_bench, parse_optimizers

    device = check_device_here(parse_device(args.device, "--device"), "--device")
    for flag, value in (("--steps", args.steps), ("--repeats", args.repeats)):
        if value < 1:
            raise SpecError(f"{flag} must be an integer >= 1, got {value}")
    if args.model == "mlp":
        from .bench_mlp import main_bench_mlp

        if args.no_loop:
            raise SpecError("--no-loop is not available with --model mlp")
        return main_bench_mlp(device, args.steps, args.repeats, parse_optimizers(args.optimizer),
                              args.projector)
    if args.projector.strip().lower() not in ("", "none"):
        raise SpecError("--projector needs --model mlp (free embeddings have no projector)")
    return main_bench(device, args.steps, args.repeats, not args.no_loop, parse_optimizers(args.optimizer))


def _run(args) -> int:
    import pandas as pd

    from .engine import train_chunk

    device = check_device_here(parse_device(args.device, "--device"), "--device")
    cfg = RunConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(RunConfig)})
    rows = train_chunk([cfg], device).rows
    cols = ["step", "objective", "effective_rank", "variance", "mean_cos", "max_cos", "mean_norm",
            "proto_cos", "state", "frozen", "knn_acc", "probe_acc"]
    with pd.option_context("display.width", 160, "display.max_columns", 20):
        print(pd.DataFrame(rows)[cols].to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    return 0


def _sweep(args) -> int:
    from .sweep import SweepFailed, parse_memory, run_specs

    args.device = parse_device(args.device, "--device")
    if args.executor == "local":  # Ray tasks choose their device from --gpus-per-chunk
        check_device_here(args.device, "--device")
    try:
        parse_memory(args.max_memory)
    except (ValueError, OverflowError):
        raise SpecError(f"--max-memory must be a finite size > 0 such as 4GB or 512MB, "
                        f"got {args.max_memory!r}") from None
    if not (math.isfinite(args.gpus_per_chunk) and args.gpus_per_chunk >= 0):
        raise SpecError(f"--gpus-per-chunk must be a finite number >= 0, got {args.gpus_per_chunk}")
    if args.max_retries < 0:
        raise SpecError(f"--max-retries must be an integer >= 0, got {args.max_retries}")
    if args.executor == "local":
        given = [flag for flag, value, default in (("--address", args.address, None),
                                                   ("--gpus-per-chunk", args.gpus_per_chunk, 0),
                                                   ("--connect-timeout", args.connect_timeout, 30.0))
                 if value != default]
        if given:
            raise SpecError(f"{', '.join(given)}: only with --executor ray (the local executor "
                            "trains in this process on --device)")
    if not (math.isfinite(args.connect_timeout) and args.connect_timeout > 0):
        raise SpecError(f"--connect-timeout must be a number of seconds > 0, got {args.connect_timeout}")
    args.wait = parse_seconds(args.wait, "--wait")
    check_out_folder(args.out, "--out")
    if args.dry_run:
        from .sweep import dry_run

        print("\n".join(dry_run(args.spec, args.out, device=args.device, max_memory=args.max_memory)))
        return 0
    try:
        results = run_specs(args.spec, args.out, device=args.device, max_memory=args.max_memory,
                            quiet=True if args.quiet else None, executor=args.executor,
                            address=args.address, gpus_per_chunk=args.gpus_per_chunk,
                            max_retries=args.max_retries, wait=args.wait,
                            connect_timeout=args.connect_timeout)
    except SweepFailed as exc:  # not bad input: the failed chunks' errors, in full
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        return _fail(_os_error_message(exc, args.out))
    except _ray_connect_errors() as exc:
        return _fail(exc)
    for res in results.values():
        print(f"{res.total_runs} runs: {res.skipped_runs} already done, {res.chunks_run} chunk(s) "
              f"trained in {res.wall_s:.1f} s -> {res.out}")
    return 0


def _ray_connect_errors() -> tuple[type[Exception], ...]:
    """The error :mod:`simulate.executors` raises when a Ray cluster cannot be reached in time
    (``RayConnectTimeout``, a RuntimeError): one ``error:`` line with exit 2. Any other
    RuntimeError keeps its traceback."""
    from . import executors

    cls = getattr(executors, "RayConnectTimeout", None)
    return (cls,) if isinstance(cls, type) and issubclass(cls, Exception) else ()


def _os_error_message(exc: OSError, out: str) -> str:
    """An OSError of a sweep as one line; one on the output folder (the folder, a path in it or
    a folder above it) names ``--out``."""
    if exc.filename is not None:
        name, folder = os.path.abspath(str(exc.filename)), os.path.abspath(out)
        if os.path.commonpath([name, folder]) in (name, folder):
            problem = ("is an existing file, not a folder" if isinstance(exc, FileExistsError)
                       else "lies under a file, not a folder" if isinstance(exc, NotADirectoryError)
                       else "cannot be written: permission denied" if isinstance(exc, PermissionError)
                       else f"cannot be used: {exc.strerror or exc}")
            return f"--out {out!r} {problem} ({exc.filename})"
    return str(exc)


def _entry() -> int:
    """``main`` for ``python -m simulate``: Ctrl-C outside its own handler (parsing the
    options) is the one line ``error: interrupted`` with exit status 130 too."""
    try:
        return main()
    except KeyboardInterrupt:
        return _fail("interrupted", 130)


if __name__ == "__main__":
    exit_after(_entry)

"""Sweeps: expand a spec, plan chunks under a memory budget (:mod:`simulate.plan`), train
chunk after chunk (:mod:`simulate.executors`), and store each finished chunk in the sweep's
folder (:mod:`simulate.store`, which describes the layout).

One sweep writes a folder at a time (a lock). Re-running the same command skips every run
whose chunk is stored and verifies, so an interrupted sweep resumes without loss and without
duplicate rows, whatever the chunking; results do not depend on the chunking.
"""

from __future__ import annotations

import hashlib
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import pandas as pd

from .config import RunConfig, expand, resolve_spec, resolve_specs
from .executors import EXECUTORS, run_local, run_ray
from .plan import DEFAULT_MAX_MEMORY, parse_memory, plan_chunks
from .store import SweepStore, load_embeddings, load_results  # noqa: F401  (the public readers)
from .engine import TRAJECTORY_VERSION, resolve_device


def chunk_name(chunk: list[RunConfig]) -> str:
    """File name stem of a chunk: a digest of its run ids."""
    ids = ",".join(r.run_id for r in chunk)
    return hashlib.sha256(ids.encode()).hexdigest()[:20]


def chunk_table(chunk: list[RunConfig], rows: list[dict]) -> pd.DataFrame:
    """Metrics rows joined with their runs' configurations."""
    configs = pd.DataFrame([{**r.to_dict(), "run_id": r.run_id} for r in chunk])
    return pd.DataFrame(rows).merge(configs, on="run_id", how="left", validate="many_to_one")


def _git_revision() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def provenance(device: str) -> dict:
    versions = {}
    for pkg in ("clop-lab", "torch", "numpy", "pandas", "pyarrow", "sympy"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    return {
        "versions": versions,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "git_revision": _git_revision(),
        "device": device,
    }


@dataclass
class SweepResult:
    out: Path
    total_runs: int
    skipped_runs: int
    chunks_run: int
    wall_s: float
    chunk_files: list = field(default_factory=list)
    failed: list = field(default_factory=list)


class SweepFailed(RuntimeError):
    """Some chunks kept failing; the others were written. ``result.failed`` names them."""

    def __init__(self, result: SweepResult):
        self.result = result
        names = "; ".join(f"chunk {f['chunk']} ({f['runs']} runs): {f['error']}" for f in result.failed)
        super().__init__(f"{len(result.failed)} chunk(s) failed: {names}")


def run_sweep(spec: str | Path | dict, out: str | Path, device: str = "auto",
              max_memory: int | str = DEFAULT_MAX_MEMORY, quiet: bool | None = None,
              executor: str = "local", address: str | None = None, gpus_per_chunk: float = 0,
              max_retries: int = 2, connect_timeout: float = 30.0, wait: float = 0) -> SweepResult:
    """Run (or resume) one sweep into ``out``. Every run is validated before any training.

    Args:
        spec: a spec dict, a YAML/JSON file or a single-sweep preset.
        out: output folder; finished runs found there are skipped.
        device: auto | cpu | cuda (local executor).
        max_memory: memory budget of a chunk (bytes or '4GB').
        quiet: no progress bar (default: quiet when not a terminal or when CI is set).
        executor: ``local`` or ``ray`` (see :mod:`simulate.executors`).
        address, gpus_per_chunk, max_retries, connect_timeout: Ray options.
        wait: seconds to wait for another sweep writing ``out`` to finish (0: fail at once).

    Raises:
        SpecError: invalid spec (before any training), or ``out`` holds another sweep.
        OutputError: ``out`` cannot be used (a file, not writable) or another sweep holds it.
        SweepFailed: some chunks kept failing (the others are written).
    """
    if executor not in EXECUTORS:
        raise ValueError(f"executor must be one of {', '.join(EXECUTORS)}, got {executor!r}")
    spec_dict = resolve_spec(spec)
    runs = expand(spec_dict)
    budget = parse_memory(max_memory)
    dev = resolve_device(device) if executor == "local" else ("cuda" if gpus_per_chunk > 0 else "cpu")
    store = SweepStore(out, TRAJECTORY_VERSION)
    with store.open(spec_dict, wait=wait):
        todo = [r for r in runs if r.run_id not in store.done]
        chunks = plan_chunks(todo, budget)
        _record_provenance(store, runs, dev, executor)
        quiet = (os.environ.get("CI") is not None or not sys.stderr.isatty()) if quiet is None else quiet
        t0 = time.perf_counter()
        files, failed = _train_chunks(store, chunks, dev, quiet, executor,
                                      dict(address=address, gpus_per_chunk=gpus_per_chunk,
                                           max_retries=max_retries, connect_timeout=connect_timeout))
    result = SweepResult(Path(out), len(runs), len(runs) - len(todo), len(chunks) - len(failed),
                         time.perf_counter() - t0, files, failed)
    if failed:
        raise SweepFailed(result)
    return result


def _record_provenance(store: SweepStore, runs: list[RunConfig], dev, executor: str) -> None:
    """Versions, device, executor and seeds of this sweep, into the store's provenance."""
    prov = store.prov
    prov.update(provenance(str(dev)))
    prov["executor"] = executor
    prov["seeds"] = sorted({r.seed for r in runs})
    prov["data_seeds"] = sorted({r.data_seed for r in runs})
    store.save_provenance()


def _train_chunks(store: SweepStore, chunks: list[list[RunConfig]], dev, quiet: bool, executor: str,
                  ray_options: dict) -> tuple[list, list]:
    """Train ``chunks`` on the executor and store each as it finishes; returns the written
    chunk files and the failed chunks' records (each recorded in the provenance too)."""
    from tqdm.auto import tqdm

    files, failed = [], []
    total_steps = sum(c[0].steps for c in chunks)
    with tqdm(total=total_steps, disable=quiet, desc="sweep", unit="step") as bar:
        if executor == "local":
            outcomes = run_local(chunks, dev, progress=bar.update)
        else:
            outcomes = run_ray([[r.to_dict() for r in c] for c in chunks], progress=bar.update,
                               **ray_options)
        for oc in outcomes:
            chunk = chunks[oc.index]
            record = {"chunk": chunk_name(chunk), "runs": len(chunk), "executor": executor,
                      "host": oc.host, "wall_s": round(oc.wall_s, 3)}
            if oc.error is not None:
                failed.append({**record, "error": oc.error})
                store.record_failure({**record, "error": oc.error})
            else:
                files.append(store.write_chunk(f"{record['chunk']}.parquet",
                                               chunk_table(chunk, oc.rows), oc.embeddings, record))
            bar.set_postfix_str(f"{len(files) + len(failed)}/{len(chunks)} chunks")
    return files, failed


def run_specs(spec: str | Path | dict, out: str | Path, **kwargs) -> dict[str, SweepResult]:
    """Run every sweep of a spec or preset; a multi-sweep preset writes ``out/<name>/``.
    All sweeps are validated before any of them trains."""
    specs = resolve_specs(spec)
    for sub in specs.values():
        expand(sub)
    out = Path(out)
    return {name: run_sweep(sub, out / name if name else out, **kwargs) for name, sub in specs.items()}


def dry_run(spec: str | Path | dict, out: str | Path, device: str = "auto",
            max_memory: int | str = DEFAULT_MAX_MEMORY, calibrate: bool = True) -> list[str]:
    """What ``run_specs`` would do, trained for nothing but a short calibration: one line per
    chunk (runs, what they train, memory, estimated wall time) and a total per sweep. Runs
    already stored in ``out`` are counted as done. Nothing is written."""
    from .losses import TEMPERATURE_LOSSES
    from .plan import calibrate as calibrate_chunks, describe, format_bytes
    from .store import finished_runs, spec_state

    specs = resolve_specs(spec)
    all_runs = {name: expand(sub) for name, sub in specs.items()}  # validate every sweep first
    budget = parse_memory(max_memory)
    dev = str(resolve_device(device))
    lines, grand = [], 0.0
    for name, runs in all_runs.items():
        folder = Path(out) / name if name else Path(out)
        spec_state(folder, specs[name], {r.run_id for r in runs})  # the real run would refuse
        done = finished_runs(folder)
        chunks = plan_chunks([r for r in runs if r.run_id not in done], budget)
        plans = describe(chunks, calibrate_chunks(chunks, dev) if calibrate and chunks else None)
        lines.append(f"sweep {name or '(one)'} -> {folder}: {len(runs)} runs, "
                     f"{len(runs) - sum(len(c) for c in chunks)} already done, {len(chunks)} chunk(s) "
                     f"under {format_bytes(budget)} each")
        for i, p in enumerate(plans):
            r = p.runs[0]
            tau = f", tau={r.temperature:g}" if r.loss in TEMPERATURE_LOSSES else ""
            what = (f"{r.loss}{' + CLOP' if r.clop_weight > 0 else ''}{tau}, {r.model} "
                    f"(k={r.k}, d={r.d}, batch {r.batch_size}), {r.steps} steps")
            est = "" if p.est_s != p.est_s else f", about {p.est_s:.1f} s"
            lines.append(f"  chunk {i + 1}: {len(p.runs)} runs, {what}, {format_bytes(p.memory_bytes)}{est}")
        total = sum(p.est_s for p in plans)
        grand += total
        if calibrate and plans:
            lines.append(f"  estimated wall time on {dev}: about {total:.0f} s "
                         f"(from {len({c[0].chunk_key() for c in chunks})} calibration run(s))")
    if calibrate and len(all_runs) > 1:
        lines.append(f"estimated wall time of all {len(all_runs)} sweeps: about {grand:.0f} s")
    return lines

"""Sweeps: expand a spec, group runs into chunks under a memory budget, train chunk after
chunk, and write each finished chunk atomically into a tidy Parquet table.

Output folder layout::

    OUT/spec.json          the sweep's spec (as given, normalised)
    OUT/chunks/*.parquet   one file per finished chunk (rows: run x logged step; written to a
                           temporary .partial file, then renamed)
    OUT/provenance.json    package versions, git revision, device, seed, wall time per chunk,
                           trajectory version (results of another version go to
                           OUT/superseded/ and are not resumed into)

Re-running the same command skips every run already present in ``chunks/``, so an
interrupted sweep resumes without loss and without duplicate rows (whatever the chunking).
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Callable

import pandas as pd

from .config import RunConfig, SpecError, expand, resolve_spec, resolve_specs
from .executors import EXECUTORS, run_local, run_ray
from .train import TRAJECTORY_VERSION, resolve_device

DEFAULT_MAX_MEMORY = 2 * 1024**3


def parse_memory(text: str | int) -> int:
    """``'4GB'``, ``'512MB'``, ``'100kB'`` or a byte count -> bytes."""
    if isinstance(text, int):
        value = text
    else:
        t = text.strip().upper().replace("IB", "B")
        units = {"TB": 1024**4, "GB": 1024**3, "MB": 1024**2, "KB": 1024, "B": 1}
        for unit, mult in units.items():
            if t.endswith(unit):
                try:
                    value = int(float(t[: -len(unit)]) * mult)
                except ValueError:
                    raise ValueError(f"max_memory must look like 4GB or 512MB, got {text!r}") from None
                break
        else:
            try:
                value = int(t)
            except ValueError:
                raise ValueError(f"max_memory must look like 4GB or 512MB, got {text!r}") from None
    if value <= 0:
        raise ValueError(f"max_memory must be > 0 bytes, got {text!r}")
    return value


def run_bytes(run: RunConfig, itemsize: int = 4) -> int:
    """Rough peak memory of one run inside a chunk (parameters, optimiser state, activations,
    similarity matrices, evaluation), used to size chunks."""
    n_train = run.per_class * run.k
    two_b = 2 * run.batch_size
    if run.model == "free":
        params = 2 * n_train * run.d
        acts = two_b * run.d * 4
        eval_rows = 2 * n_train
        width = run.d
    else:
        widths = [run.d] + [run.hidden] * (run.depth - 1) + [run.out_dim]
        params = sum(a * b + b for a, b in zip(widths[:-1], widths[1:]))
        acts = two_b * sum(widths) * 4
        eval_rows = n_train
        width = max(widths)
    sims = two_b * two_b * 8
    data = n_train * run.d * 3
    evaluation = eval_rows * width * 3 * 2 + eval_rows * eval_rows // 4 * 2
    return itemsize * (4 * params + acts + sims + data + evaluation) + 64 * 1024


def plan_chunks(runs: list[RunConfig], max_memory: int) -> list[list[RunConfig]]:
    """Group runs by chunk key (in first-seen order), then split each group so that a chunk
    fits ``max_memory``."""
    groups: dict[tuple, list[RunConfig]] = {}
    for r in runs:
        groups.setdefault(r.chunk_key(), []).append(r)
    chunks = []
    for members in groups.values():
        size = max(1, max_memory // run_bytes(members[0]))
        chunks += [members[i: i + size] for i in range(0, len(members), size)]
    return chunks


def chunk_name(chunk: list[RunConfig]) -> str:
    import hashlib

    ids = ",".join(r.run_id for r in chunk)
    return hashlib.sha256(ids.encode()).hexdigest()[:20]


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".partial")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _parquet_bytes(frame: pd.DataFrame) -> bytes:
    import io

    buf = io.BytesIO()
    frame.to_parquet(buf, index=False)
    return buf.getvalue()


def write_chunk(out: Path, chunk: list[RunConfig], rows: list[dict],
                embeddings: pd.DataFrame | None = None) -> Path:
    """Join metrics rows with their run configs and write them atomically as Parquet.

    Embeddings (if any) are written first; the chunk file, written last, marks the chunk done.
    """
    table = pd.DataFrame(rows)
    configs = pd.DataFrame([{**r.to_dict(), "run_id": r.run_id} for r in chunk])
    table = table.merge(configs, on="run_id", how="left", validate="many_to_one")
    name = f"{chunk_name(chunk)}.parquet"
    if embeddings is not None:
        _atomic_write_bytes(out / "embeddings" / name, _parquet_bytes(embeddings))
    path = out / "chunks" / name
    _atomic_write_bytes(path, _parquet_bytes(table))
    return path


def finished_run_ids(out: Path) -> set[str]:
    ids: set[str] = set()
    for f in sorted((out / "chunks").glob("*.parquet")):
        ids.update(pd.read_parquet(f, columns=["run_id"])["run_id"].unique().tolist())
    return ids


def load_results(out: str | Path) -> pd.DataFrame:
    """The sweep's table: one row per run and logged step, sorted by run_id and step."""
    files = sorted((Path(out) / "chunks").glob("*.parquet"))
    if not files:
        raise FileNotFoundError(f"no results in {str(out)!r} (expected {str(out)}/chunks/*.parquet)")
    df = pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
    return df.sort_values(["run_id", "step"], kind="stable").reset_index(drop=True)


def load_embeddings(out: str | Path) -> pd.DataFrame:
    """Final embeddings of the runs with ``save_embeddings`` (run_id, point, label, e0, ...),
    for finished chunks only."""
    out = Path(out)
    files = [f for f in sorted((out / "embeddings").glob("*.parquet")) if (out / "chunks" / f.name).exists()]
    if not files:
        raise FileNotFoundError(f"no saved embeddings in {str(out)!r}")
    return pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)


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


def _set_aside_other_versions(out: Path, prov: dict) -> None:
    """Results of another trajectory version (``simulate.train.TRAJECTORY_VERSION``) are not
    resumed into: their chunks move to ``OUT/superseded/v<version>/`` (nothing is deleted) and
    the sweep starts afresh. Folders written before versions were recorded count as 1."""
    chunks = sorted((out / "chunks").glob("*.parquet"))
    old = prov.get("trajectory_version", 1 if chunks else TRAJECTORY_VERSION)
    if old != TRAJECTORY_VERSION and chunks:
        dest, i = out / "superseded" / f"v{old}", 1
        while dest.exists():
            dest, i = out / "superseded" / f"v{old}-{i}", i + 1
        dest.mkdir(parents=True)
        for sub in ("chunks", "embeddings"):
            if (out / sub).exists():
                (out / sub).rename(dest / sub)
        print(f"{out}: results of trajectory version {old} moved to {dest}; this engine is "
              f"version {TRAJECTORY_VERSION}, so the sweep is run again", file=sys.stderr)
        prov.setdefault("superseded", []).append({"version": old, "folder": str(dest.relative_to(out)),
                                                  "chunks": prov.get("chunks", [])})
        prov["chunks"] = []
    prov["trajectory_version"] = TRAJECTORY_VERSION


def run_sweep(spec: str | Path | dict, out: str | Path, device: str = "auto",
              max_memory: int | str = DEFAULT_MAX_MEMORY, quiet: bool | None = None,
              on_chunk: Callable[[Path], None] | None = None, executor: str = "local",
              address: str | None = None, gpus_per_chunk: float = 0, max_retries: int = 2) -> SweepResult:
    """Run (or resume) one sweep into ``out``. Every run is validated before any training.

    Args:
        spec: a spec dict, a YAML/JSON file or a single-sweep preset.
        out: output folder; finished runs found there are skipped.
        device: auto | cpu | cuda (local executor).
        max_memory: memory budget of a chunk (bytes or '4GB').
        quiet: no progress bar (default: quiet when not a terminal or when CI is set).
        on_chunk: called with each chunk file once it is written.
        executor: ``local`` or ``ray`` (see :mod:`simulate.executors`).
        address, gpus_per_chunk, max_retries: Ray options.

    Raises:
        SpecError: invalid spec (before any training).
        SweepFailed: some chunks kept failing (the others are written).
    """
    if executor not in EXECUTORS:
        raise ValueError(f"executor must be one of {', '.join(EXECUTORS)}, got {executor!r}")
    spec_dict = resolve_spec(spec)
    runs = expand(spec_dict)
    budget = parse_memory(max_memory)
    dev = resolve_device(device) if executor == "local" else ("cuda" if gpus_per_chunk > 0 else "cpu")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    spec_path = out / "spec.json"
    spec_json = json.dumps(spec_dict, sort_keys=True, indent=2)
    if spec_path.exists() and json.loads(spec_path.read_text()) != json.loads(spec_json):
        raise SpecError(f"out folder {str(out)!r} holds a different sweep (spec.json differs)")
    _atomic_write_bytes(spec_path, spec_json.encode())
    for stale in (out / "chunks").glob(".tmp-*.partial"):  # a write cut short by a kill
        stale.unlink()
    prov_path = out / "provenance.json"
    prov = json.loads(prov_path.read_text()) if prov_path.exists() else {"chunks": []}
    _set_aside_other_versions(out, prov)
    done = finished_run_ids(out)
    todo = [r for r in runs if r.run_id not in done]
    chunks = plan_chunks(todo, budget)
    prov.update(provenance(str(dev)))
    prov["executor"] = executor
    prov["seeds"] = sorted({r.seed for r in runs})
    prov["data_seeds"] = sorted({r.data_seed for r in runs})
    from tqdm.auto import tqdm

    quiet = (os.environ.get("CI") is not None or not sys.stderr.isatty()) if quiet is None else quiet
    t0 = time.perf_counter()
    files, failed = [], []
    total_steps = sum(c[0].steps for c in chunks)
    with tqdm(total=total_steps, disable=quiet, desc="sweep", unit="step") as bar:
        if executor == "local":
            outcomes = run_local(chunks, dev, progress=bar.update)
        else:
            outcomes = run_ray([[r.to_dict() for r in c] for c in chunks], address=address,
                               gpus_per_chunk=gpus_per_chunk, max_retries=max_retries,
                               progress=bar.update)
        for oc in outcomes:
            chunk = chunks[oc.index]
            record = {"chunk": chunk_name(chunk), "runs": len(chunk), "executor": executor,
                      "host": oc.host, "wall_s": round(oc.wall_s, 3)}
            if oc.error is not None:
                failed.append({**record, "error": oc.error})
                prov.setdefault("failed_chunks", []).append({**record, "error": oc.error})
            else:
                path = write_chunk(out, chunk, oc.rows, oc.embeddings)
                files.append(path)
                prov["chunks"].append({"file": path.name, **record})
            prov["wall_s"] = round(sum(c["wall_s"] for c in prov["chunks"]), 3)
            _atomic_write_bytes(prov_path, json.dumps(prov, indent=2).encode())
            if on_chunk is not None and oc.error is None:
                on_chunk(path)
            bar.set_postfix_str(f"{len(files) + len(failed)}/{len(chunks)} chunks")
    if not chunks:
        _atomic_write_bytes(prov_path, json.dumps(prov, indent=2).encode())
    result = SweepResult(out, len(runs), len(runs) - len(todo), len(chunks) - len(failed),
                         time.perf_counter() - t0, files, failed)
    if failed:
        raise SweepFailed(result)
    return result


def run_specs(spec: str | Path | dict, out: str | Path, **kwargs) -> dict[str, SweepResult]:
    """Run every sweep of a spec or preset; a multi-sweep preset writes ``out/<name>/``.
    All sweeps are validated before any of them trains."""
    specs = resolve_specs(spec)
    for sub in specs.values():
        expand(sub)
    out = Path(out)
    return {name: run_sweep(sub, out / name if name else out, **kwargs) for name, sub in specs.items()}

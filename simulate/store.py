"""The sweep store: one output folder per sweep, written by one sweep at a time.

Layout::

    OUT/spec.json            the sweep's spec (normalised), written atomically
    OUT/chunks/*.parquet     one file per finished chunk (rows: run x logged step), written to
                             a temporary ``.partial`` file, then renamed; the engine's
                             trajectory version is kept in the file's metadata
    OUT/embeddings/*.parquet final embeddings of the runs that save them (same names)
    OUT/provenance.json      versions, device, seeds, and per chunk: file, SHA-256 digest,
                             runs, host, wall time; failed chunks with their error
    OUT/superseded/v<N>/     results of another trajectory version, set aside (never resumed)
    OUT/quarantine/          chunk files that failed verification, set aside (then recomputed)
    OUT/.lock                held by the sweep writing the folder (released when it exits,
                             however it exits): the sweep lock, :mod:`simulate.lock`

A chunk counts as finished only if it verifies: its digest equals the one recorded when it
was written (when one is recorded), it reads as Parquet, and every run in it has every logged
step of its configuration. A chunk that does not verify is moved to ``quarantine/`` with a
warning and its runs are trained again. A missing or unreadable ``provenance.json`` is
rebuilt from the chunk files. A chunk file's bytes (Parquet, atomic writes, digests) and its
checks are :mod:`simulate.chunk_files`.

The store does not import the engine: the trajectory version is passed in.
"""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from pathlib import Path

import pandas as pd

from .chunk_files import (PARTIAL_GLOB, UNVERSIONED, atomic_write_bytes, check_chunk,
                          chunk_version, digest, parquet_bytes, runs_problem)
from .config import SpecError, expand
from .lock import SweepLock

# where they were before the lock and the chunk files had modules of their own
from .chunk_files import VERSION_KEY  # noqa: F401
from .lock import LOCK_NAME, OWNER_NAME, FolderLocked, OutputError, check_out_folder  # noqa: F401


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def spec_state(out: Path, spec: dict, run_ids: set[str]) -> str:
    """How ``out/spec.json`` relates to ``spec`` (whose runs are ``run_ids``): ``missing``,
    ``unreadable``, ``same`` (the same runs, perhaps written another way); a different sweep
    raises SpecError naming the fields that differ."""
    path = Path(out) / "spec.json"
    if not path.exists():
        return "missing"
    try:
        old = json.loads(path.read_text())
        old_ids = {r.run_id for r in expand(old)} if isinstance(old, dict) else None
    except ValueError:
        old_ids = None
    if old_ids is None:
        return "unreadable"
    if old_ids != run_ids:
        fields = sorted(k for k in set(old) | set(spec) if old.get(k) != spec.get(k))
        raise SpecError(f"output folder {str(out)!r} holds a different sweep (its spec.json differs "
                        f"in {', '.join(fields) or 'its runs'}); choose another folder")
    return "same"


def _provenance_ok(prov) -> bool:
    """A provenance mapping whose chunk records are mappings with a file name and, where
    given, a numeric wall time and a string digest."""
    if not isinstance(prov, dict) or not isinstance(prov.get("chunks", []), list):
        return False
    for rec in prov.get("chunks", []):
        if not (isinstance(rec, dict) and isinstance(rec.get("file"), str)
                and isinstance(rec.get("wall_s", 0), (int, float))
                and isinstance(rec.get("sha256", ""), str)):
            return False
    return True


class SweepStore:
    """One sweep's output folder. Open it with :meth:`open` (which takes the lock); read a
    finished or running sweep with :func:`load_results`, which needs no lock."""

    def __init__(self, out: str | Path, trajectory_version: int):
        self.out = Path(out)
        self.version = trajectory_version
        self.prov: dict = {}
        self.run_ids: set[str] | None = None  # the spec's runs, once opened
        self._lock = SweepLock(self.out)

    # ------------------------------------------------------------------ paths
    @property
    def chunks_dir(self) -> Path:
        return self.out / "chunks"

    @property
    def prov_path(self) -> Path:
        return self.out / "provenance.json"

    def chunk_files(self) -> list[Path]:
        return sorted(self.chunks_dir.glob("*.parquet"))

    # ------------------------------------------------------------------ lock
    def acquire(self, wait: float = 0) -> None:
        """Take the folder's lock (:class:`simulate.lock.SweepLock`), waiting up to ``wait``
        seconds (0: fail at once)."""
        self._lock.acquire(wait)

    def release(self) -> None:
        self._lock.release()

    @contextmanager
    def open(self, spec: dict, wait: float = 0):
        """Lock the folder, check and write its spec, clear cut-short writes, set aside other
        versions and verify the chunks (each must hold runs of this spec, none held twice);
        yields the store. The lock is released on exit."""
        self.acquire(wait)
        try:
            self.run_ids = {r.run_id for r in expand(spec)}
            self._write_spec(spec)
            for sub in ("chunks", "embeddings", "."):
                for stale in (self.out / sub).glob(PARTIAL_GLOB):  # writes cut short by a kill
                    stale.unlink()
            self.prov = self._read_provenance()
            self._set_aside_other_versions()
            self.verify()
            self.save_provenance()
            yield self
        finally:
            self.release()

    def _write_spec(self, spec: dict) -> None:
        """A folder holds one sweep: a spec.json whose runs differ from ``spec``'s is refused
        (naming the fields that differ); one that does not read is quarantined (the chunks'
        runs are checked against the spec anyway)."""
        path = self.out / "spec.json"
        state = spec_state(self.out, spec, self.run_ids)
        if state == "unreadable":
            self._quarantine(path, "it is not a readable sweep spec")
        if state == "same":
            return  # the same runs (perhaps written another way): keep the folder's spec
        atomic_write_bytes(path, json.dumps(spec, sort_keys=True, indent=2).encode())

    # ------------------------------------------------------------------ provenance
    def _read_provenance(self) -> dict:
        path = self.prov_path
        if not path.exists():
            if self.chunk_files():
                warn(f"{path} is missing; rebuilt from the chunk files")
            return {"chunks": []}
        try:
            prov = json.loads(path.read_text())
        except ValueError:
            prov = None
        if not _provenance_ok(prov):
            self._quarantine(path, "it is not a provenance mapping of chunk records")
            return {"chunks": []}
        prov.setdefault("chunks", [])
        return prov

    def save_provenance(self) -> None:
        self.prov["wall_s"] = round(sum(c.get("wall_s", 0) for c in self.prov["chunks"]), 3)
        atomic_write_bytes(self.prov_path, json.dumps(self.prov, indent=2).encode())

    def _records(self) -> dict[str, dict]:
        return {c["file"]: c for c in self.prov["chunks"] if isinstance(c, dict) and "file" in c}

    # ------------------------------------------------------------------ versions
    def _set_aside_other_versions(self) -> None:
        """Chunks of another trajectory version (read from each file; for files that record
        none, from provenance, else ``UNVERSIONED``) move to ``superseded/v<version>/`` and
        are not resumed into."""
        folder_version = self.prov.get("trajectory_version", UNVERSIONED)
        by_version: dict[int, list[Path]] = {}
        for f in self.chunk_files():
            v = chunk_version(f)
            v = folder_version if v is None else v
            if v != self.version:
                by_version.setdefault(v, []).append(f)
        records = self._records()
        for old, files in sorted(by_version.items()):
            dest, i = self.out / "superseded" / f"v{old}", 1
            while dest.exists():
                dest, i = self.out / "superseded" / f"v{old}-{i}", i + 1
            for f in files:
                for sub in ("chunks", "embeddings"):
                    src = self.out / sub / f.name
                    if src.exists():
                        (dest / sub).mkdir(parents=True, exist_ok=True)
                        src.rename(dest / sub / f.name)
            warn(f"{len(files)} chunk(s) of {self.out} hold results of trajectory version {old}; "
                 f"moved to {dest}: this engine is version {self.version}, so their runs are "
                 "trained again")
            self.prov.setdefault("superseded", []).append(
                {"version": old, "folder": str(dest.relative_to(self.out)),
                 "chunks": [records[f.name] for f in files if f.name in records]})
        moved = {f.name for files in by_version.values() for f in files}
        self.prov["chunks"] = [c for c in self.prov["chunks"] if c.get("file") not in moved]
        self.prov["trajectory_version"] = self.version

    # ------------------------------------------------------------------ verification
    def _quarantine(self, path: Path, reason: str, what: str = "is damaged") -> None:
        dest_dir = self.out / "quarantine"
        dest_dir.mkdir(exist_ok=True)
        dest, i = dest_dir / path.name, 1
        while dest.exists():
            dest, i = dest_dir / f"{path.stem}-{i}{path.suffix}", i + 1
        path.rename(dest)
        emb = self.out / "embeddings" / path.name
        if path.parent == self.chunks_dir and emb.exists():
            emb.rename(dest_dir / f"{dest.stem}.embeddings{dest.suffix}")
        warn(f"{path} {what} ({reason}); moved to {dest}" +
             ("; its runs are trained again" if path.suffix == ".parquet" else ""))

    def verify(self) -> set[str]:
        """Verify every chunk file, quarantine the bad ones, reconcile provenance with the
        files (a record per file, with its digest); return the finished run ids."""
        records = self._records()
        kept, done = [], set()
        for f in sorted(self.chunk_files(), key=lambda f: (f.name not in records, f.name)):
            data = f.read_bytes()
            rec = records.get(f.name)
            table, reason = check_chunk(data, rec.get("sha256") if rec else None)
            ids = [] if table is None else table["run_id"].unique().tolist()
            if table is None:
                self._quarantine(f, reason)
                continue
            reason = runs_problem(ids, self.run_ids, done)
            if reason is not None:
                self._quarantine(f, reason, what="cannot join this folder's table")
                continue
            done.update(ids)
            kept.append({**(rec or {"file": f.name, "runs": len(ids), "rebuilt": True}),
                         "sha256": digest(data)})
        self.prov["chunks"] = kept
        self.done = done
        return done

    # ------------------------------------------------------------------ writing
    def write_chunk(self, name: str, table: pd.DataFrame, embeddings: pd.DataFrame | None,
                    record: dict) -> Path:
        """Write a finished chunk (embeddings first; the chunk file, written last, marks it
        finished) and record it, with its digest, in provenance."""
        if embeddings is not None:
            atomic_write_bytes(self.out / "embeddings" / name, parquet_bytes(embeddings))
        data = parquet_bytes(table, self.version)
        path = self.chunks_dir / name
        atomic_write_bytes(path, data)
        self.prov["chunks"].append({"file": name, **record, "sha256": digest(data)})
        self.save_provenance()
        return path

    def record_failure(self, record: dict) -> None:
        self.prov.setdefault("failed_chunks", []).append(record)
        self.save_provenance()


# ---------------------------------------------------------------------- reading
def _verified_tables(out: Path, sub: str = "chunks") -> dict[str, pd.DataFrame]:
    """Tables of the chunk files that verify (see :func:`check_chunk`); the others are left
    out with a warning (a sweep run on the folder quarantines and recomputes them)."""
    records, expected = {}, None
    try:
        prov = json.loads((out / "provenance.json").read_text())
        if _provenance_ok(prov):
            records = {c["file"]: c.get("sha256") for c in prov.get("chunks", [])}
    except (OSError, ValueError):
        pass
    try:
        expected = {r.run_id for r in expand(json.loads((out / "spec.json").read_text()))}
    except (OSError, ValueError, TypeError, AttributeError):
        pass  # no readable spec: the runs cannot be checked against it
    tables, seen = {}, set()
    for f in sorted((out / "chunks").glob("*.parquet"), key=lambda f: (f.name not in records, f.name)):
        try:
            data = f.read_bytes()
        except (FileNotFoundError, IsADirectoryError):  # moved away by a sweep meanwhile
            continue
        table, reason = check_chunk(data, records.get(f.name))
        if table is not None:
            ids = table["run_id"].unique().tolist()
            reason = runs_problem(ids, expected, seen)
        if reason is not None:
            warn(f"{f} left out: {reason}; run the sweep again to set it aside and recompute")
            continue
        seen.update(ids)
        tables[f.name] = table
    return tables


def finished_runs(out: str | Path) -> set[str]:
    """Run ids held by the chunks of ``out`` that verify (empty if there are none)."""
    return {i for t in _verified_tables(Path(out)).values() for i in t["run_id"].unique()}


def load_results(out: str | Path) -> pd.DataFrame:
    """The sweep's table: one row per run and logged step, sorted by run_id and step. Only
    chunks that verify are read."""
    out = Path(out)
    tables = _verified_tables(out)
    if not tables:
        raise FileNotFoundError(f"no results in {str(out)!r} (expected {str(out)}/chunks/*.parquet)")
    df = pd.concat(list(tables.values()), ignore_index=True)
    return df.sort_values(["run_id", "step"], kind="stable").reset_index(drop=True)


def load_embeddings(out: str | Path) -> pd.DataFrame:
    """Final embeddings of the runs with ``save_embeddings`` (run_id, point, label, e0, ...),
    for finished chunks that verify only."""
    out = Path(out)
    names = set(_verified_tables(out))
    files = [f for f in sorted((out / "embeddings").glob("*.parquet")) if f.name in names]
    if not files:
        raise FileNotFoundError(f"no saved embeddings in {str(out)!r}")
    return pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)

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
                             however it exits)

A chunk counts as finished only if it verifies: its digest equals the one recorded when it
was written (when one is recorded), it reads as Parquet, and every run in it has every logged
step of its configuration. A chunk that does not verify is moved to ``quarantine/`` with a
warning and its runs are trained again. A missing or unreadable ``provenance.json`` is
rebuilt from the chunk files.

The store does not import the engine: the trajectory version is passed in.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import socket
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import pandas as pd

from .config import SpecError, expand, logged_count

#: key of the trajectory version in a chunk file's Parquet metadata
VERSION_KEY = b"clop_lab.trajectory_version"
#: version of results written before versions were recorded anywhere
UNVERSIONED = 1
LOCK_NAME = ".lock"
OWNER_NAME = ".lock-owner.json"
PARTIAL_GLOB = ".tmp-*.partial"
_UMASK = os.umask(0)
os.umask(_UMASK)


class OutputError(ValueError):
    """The output folder cannot be used: it is a file, cannot be created or written, or
    another sweep is writing it. The message names the folder."""


class FolderLocked(OutputError):
    """Another sweep holds the output folder's lock."""


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path``, fsync, then rename onto ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".partial")
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # as an ordinary new file (mkstemp makes it 0600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def parquet_bytes(frame: pd.DataFrame, version: int | None = None) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(frame, preserve_index=False)
    if version is not None:
        table = table.replace_schema_metadata({**(table.schema.metadata or {}),
                                               VERSION_KEY: str(version).encode()})
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


def chunk_version(path: Path) -> int | None:
    """The trajectory version recorded in a chunk file (None if it records none or cannot
    be read)."""
    import pyarrow.parquet as pq

    try:
        meta = pq.read_schema(path).metadata or {}
    except Exception:  # noqa: BLE001  (any unreadable file: verification reports it)
        return None
    raw = meta.get(VERSION_KEY)
    return int(raw) if raw is not None and raw.decode().isdigit() else None


def runs_problem(ids: list[str], expected: set[str] | None, seen: set[str]) -> str | None:
    """Why a verified chunk's runs cannot join the folder's table: runs of another spec, or
    runs another chunk already holds (None: they can)."""
    if expected is not None and not set(ids) <= expected:
        return f"it holds {len(set(ids) - expected)} run(s) that are not in this folder's spec"
    if set(ids) & seen:
        return f"its runs are already held by another chunk ({len(set(ids) & seen)} run(s))"
    return None


def check_chunk(data: bytes, recorded: str | None) -> tuple[pd.DataFrame | None, str | None]:
    """(table, None) if a chunk file's bytes verify, else (None, the reason)."""
    if recorded is not None and digest(data) != recorded:
        return None, "its SHA-256 digest differs from the one recorded when it was written"
    try:
        table = pd.read_parquet(io.BytesIO(data))
    except Exception as exc:  # noqa: BLE001  (truncated or garbage bytes)
        return None, f"it does not read as Parquet ({type(exc).__name__})"
    needed = {"run_id", "step", "steps", "log_every"}
    if not needed <= set(table.columns):
        return None, f"it lacks the column(s) {', '.join(sorted(needed - set(table.columns)))}"
    if table.empty:
        return None, "it holds no rows"
    for run_id, rows in table.groupby("run_id", sort=False):
        steps, every = int(rows["steps"].iloc[0]), int(rows["log_every"].iloc[0])
        got = rows["step"].to_numpy()
        logged = (got == 0) | (got == steps) | ((got % every == 0) & (got > 0) & (got <= steps))
        if not (logged.all() and len(set(got.tolist())) == len(got) == logged_count(steps, every)):
            return None, f"run {run_id} does not hold exactly its logged steps 0..{steps}"
    return table, None


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


def check_out_folder(path: str | Path, name: str = "--out") -> Path:
    """Refuse an output folder that is a file, lies under a file or cannot be written, before
    any work is done; nothing is created.

    Raises:
        OutputError: the message names ``name`` and the path.
    """
    out = Path(path)
    shown = repr(str(path))
    if out.exists() and not out.is_dir():
        raise OutputError(f"{name} {shown} is an existing file, not a folder")
    base = out
    while not base.exists() and base != base.parent:  # the nearest part of the path that exists
        base = base.parent
    if not base.is_dir():
        raise OutputError(f"{name} {shown} lies under the file {str(base)!r}, not in a folder")
    if not os.access(base, os.W_OK | os.X_OK):
        raise OutputError(f"{name} {shown} cannot be written: permission denied on {str(base)!r}")
    return out


class SweepStore:
    """One sweep's output folder. Open it with :meth:`open` (which takes the lock); read a
    finished or running sweep with :func:`load_results`, which needs no lock."""

    def __init__(self, out: str | Path, trajectory_version: int):
        self.out = Path(out)
        self.version = trajectory_version
        self.prov: dict = {}
        self.run_ids: set[str] | None = None  # the spec's runs, once opened
        self._lock = None

    # ------------------------------------------------------------------ paths
    @property
    def chunks_dir(self) -> Path:
        return self.out / "chunks"

    @property
    def prov_path(self) -> Path:
        return self.out / "provenance.json"

    def chunk_files(self) -> list[Path]:
        return sorted(self.chunks_dir.glob("*.parquet"))

    # ------------------------------------------------------------------ folder and lock
    def _make_folder(self) -> None:
        check_out_folder(self.out, "output folder")
        try:
            self.out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"output folder {str(self.out)!r} cannot be created: {exc.strerror}") from None

    def _owner(self) -> str:
        try:
            o = json.loads((self.out / OWNER_NAME).read_text())
            return f" (pid {o['pid']} on {o['host']}, since {o['since']})"
        except (OSError, ValueError, KeyError, TypeError):
            return ""

    def acquire(self, wait: float = 0) -> None:
        """Take the folder's lock, waiting up to ``wait`` seconds (0: fail at once)."""
        from filelock import FileLock, Timeout

        if wait < 0 or wait != wait:
            raise ValueError(f"wait must be >= 0 seconds, got {wait!r}")
        self._make_folder()
        lock = FileLock(str(self.out / LOCK_NAME))
        try:
            lock.acquire(timeout=wait, poll_interval=0.2)
        except Timeout:
            raise FolderLocked(
                f"output folder {str(self.out)!r} is being written by another sweep{self._owner()}; "
                f"wait for it to finish (sweep --wait SECONDS), or choose another folder") from None
        except PermissionError:
            raise OutputError(f"out {str(self.out)!r} is not writable") from None
        self._lock = lock
        owner = {"pid": os.getpid(), "host": socket.gethostname(),
                 "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        atomic_write_bytes(self.out / OWNER_NAME, json.dumps(owner).encode())

    def release(self) -> None:
        if self._lock is not None:
            (self.out / OWNER_NAME).unlink(missing_ok=True)
            self._lock.release()
            self._lock = None

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

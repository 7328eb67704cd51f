"""Chunk files: the bytes of a finished chunk and the checks it must pass to count as finished.

A chunk file is Parquet (rows: run x logged step) with the engine's trajectory version in its
metadata (:data:`VERSION_KEY`); it is written atomically (:func:`atomic_write_bytes`: a
temporary ``.tmp-*.partial`` file beside it, fsync, rename) and recorded with its SHA-256
digest (:func:`digest`). :func:`check_chunk` verifies a file's bytes: its digest where one is
recorded, that it reads as Parquet, and that every run in it has exactly its logged steps.
The sweep folder that holds these files is :mod:`simulate.store`.
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
from pathlib import Path

import pandas as pd

from .config import logged_count

#: key of the trajectory version in a chunk file's Parquet metadata
VERSION_KEY = b"clop_lab.trajectory_version"
#: version of results written before versions were recorded anywhere
UNVERSIONED = 1
#: the temporary files of :func:`atomic_write_bytes` (left behind only by a write cut short)
PARTIAL_GLOB = ".tmp-*.partial"
_UMASK = os.umask(0)
os.umask(_UMASK)


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

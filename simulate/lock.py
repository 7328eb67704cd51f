"""The sweep lock: one sweep at a time writes an output folder.

    OUT/.lock              held (``filelock``) by the sweep writing the folder; released when
                           it exits, however it exits
    OUT/.lock-owner.json   pid, host and start time of the holder, named in the message a
                           second sweep gets

A second sweep on a held folder fails at once with :class:`FolderLocked`, or waits up to
``wait`` seconds for it (``sweep --wait SECONDS``). Reading a folder's results needs no lock.
:func:`check_out_folder` refuses, before any work, an output folder that cannot be used.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

from .chunk_files import atomic_write_bytes

LOCK_NAME = ".lock"
OWNER_NAME = ".lock-owner.json"


class OutputError(ValueError):
    """The output folder cannot be used: it is a file, cannot be created or written, or
    another sweep is writing it. The message names the folder."""


class FolderLocked(OutputError):
    """Another sweep holds the output folder's lock."""


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


class SweepLock:
    """The lock of the output folder ``out`` (taken by :meth:`acquire`, given back by
    :meth:`release`); :class:`simulate.store.SweepStore` holds one."""

    def __init__(self, out: str | Path):
        self.out = Path(out)
        self._lock = None

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

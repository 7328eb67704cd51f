"""Ctrl-C during a command's start-up imports (standard library only, so it can come first).

A SIGINT that lands while a C extension initialises (numpy importing ``datetime``, say) does
not surface as a KeyboardInterrupt: the extension's import fails and Python reports an
ImportError with a traceback. :func:`interrupts_held` holds SIGINT back while a block runs
and raises KeyboardInterrupt after it, so the command's own handler prints its one line.
"""

from __future__ import annotations

import signal
import sys
import threading
from contextlib import contextmanager


@contextmanager
def interrupts_held():
    """Run the block with SIGINT blocked; if one came meanwhile, consume it and raise
    KeyboardInterrupt when the block ends. Threads started inside the block (a numerical
    library's pool) keep SIGINT blocked, so later signals still reach the main thread, as
    Python expects. Where signals cannot be masked (no ``pthread_sigmask``, or not the main
    thread) the block runs as it is."""
    if not (hasattr(signal, "pthread_sigmask") and hasattr(signal, "sigtimedwait")
            and threading.current_thread() is threading.main_thread()):
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    pending = False
    try:
        yield
    finally:
        pending = signal.SIGINT in signal.sigpending()
        if pending:
            signal.sigtimedwait({signal.SIGINT}, 0)
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
    if pending:
        raise KeyboardInterrupt


def caused_by_interrupt(exc: BaseException) -> bool:
    """Whether ``exc`` came from a Ctrl-C: a KeyboardInterrupt itself, or an error raised
    while one was being handled or because of one (an import or a class body that Ctrl-C
    cut short surfaces as ImportError or RuntimeError, with the KeyboardInterrupt in its
    chain)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, KeyboardInterrupt):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


@contextmanager
def startup_imports(module_name: str):
    """A command's start-up imports under :func:`interrupts_held`; a Ctrl-C during them ends
    the command (when ``module_name`` is ``"__main__"``) with the one line ``error:
    interrupted`` and exit status 130, and is re-raised for an importer."""
    try:
        with interrupts_held():
            yield
    except KeyboardInterrupt:
        if module_name != "__main__":
            raise
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)


def _block_sigint() -> None:
    if hasattr(signal, "pthread_sigmask") and threading.current_thread() is threading.main_thread():
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})


def exit_after(entry) -> None:
    """``sys.exit(entry())`` for a command's ``__main__``, with SIGINT blocked once ``entry``
    has returned. The interpreter restores SIGINT's default action while it shuts down, so a
    Ctrl-C in that window would kill the process (status -2 to its parent, no message) after
    the work was done; blocked, it is dropped and the command's own status stands. A Ctrl-C
    that ``entry`` did not handle ends as the one line ``error: interrupted``, status 130."""
    try:
        status = entry()
        _block_sigint()
    except KeyboardInterrupt:
        _block_sigint()
        print("error: interrupted", file=sys.stderr)
        status = 130
    sys.exit(status)

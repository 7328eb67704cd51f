"""Where chunks train: in this process (``local``) or as Ray tasks on a cluster (``ray``).

Both executors receive the same chunks (lists of runs that train as one stack) and hand each
finished chunk's rows back to the driver, which writes it atomically into the sweep folder;
so resuming, loading and figures do not depend on the executor, and a sweep begun on one can
be finished on the other.

Ray (``pip install 'clop-lab[ray]'``): each chunk is one Ray task (``_train``). A task that
raises or whose worker dies is retried up to ``max_retries`` times; a chunk that keeps failing
is reported with its error while the other chunks finish. With ``gpus_per_chunk > 0`` tasks ask
Ray for that many GPUs and train on ``cuda``; otherwise they run on CPU.

Every wait on Ray is bounded:

- connecting to ``address`` gives up after ``connect_timeout`` seconds with
  :class:`RayConnectTimeout`;
- a resource request no node of the cluster can meet (GPUs it does not have) fails before any
  task is submitted, with :class:`RayResourceError`; if the cluster loses the nodes that could
  meet it during a sweep, the chunks still waiting fail with that message;
- ``address=None`` starts a private Ray instance bound to 127.0.0.1 whose processes do not
  outlive the driver, even a driver killed with SIGKILL (on Linux; see :func:`ray_init`).
"""

from __future__ import annotations

import contextlib
import math
import os
import socket
import subprocess
import sys
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from .config import RunConfig

EXECUTORS = ("local", "ray")


@dataclass
class ChunkOutcome:
    """The result of one chunk: rows (and embeddings) or the error that ended it."""

    index: int
    rows: list | None
    embeddings: object | None
    error: str | None
    host: str
    wall_s: float


def _train(run_dicts: list[dict], device: str, threads: int | None):
    import torch

    from .engine import train_chunk

    if threads:
        torch.set_num_threads(threads)
    runs = [RunConfig(**d) for d in run_dicts]
    t = time.perf_counter()
    result = train_chunk(runs, device)
    return result.rows, result.embeddings, _where(), time.perf_counter() - t


def _where() -> str:
    """``host`` locally; ``host/ray-node-id`` inside a Ray task."""
    try:
        import ray

        if ray.is_initialized():
            return f"{socket.gethostname()}/{ray.get_runtime_context().get_node_id()[:12]}"
    except ImportError:
        pass
    return socket.gethostname()


def run_local(chunks: list[list[RunConfig]], device: str, progress: Callable[[int], None] | None = None
              ) -> Iterator[ChunkOutcome]:
    """Train chunk after chunk in this process; an exception propagates (nothing is retried)."""
    from .engine import train_chunk

    for i, chunk in enumerate(chunks):
        t = time.perf_counter()
        result = train_chunk(chunk, device, progress=progress)
        yield ChunkOutcome(i, result.rows, result.embeddings, None, socket.gethostname(),
                           time.perf_counter() - t)


class RayConnectTimeout(RuntimeError):
    """No Ray cluster answered at the given address within the connect timeout.

    The message is one line naming the address, what was last seen there and the
    ``--connect-timeout`` option."""


class RayResourceError(ValueError):
    """The Ray cluster cannot meet what a chunk asks for (``--gpus-per-chunk``); the message
    names the option and what the cluster has."""


LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
#: marks every process of a private instance (their environment carries it), so that the
#: instance's reaper finds exactly those processes
INSTANCE_ENV = "CLOP_LAB_RAY_INSTANCE"
#: seconds between checks, while no chunk finishes, that the cluster can still run the rest
RECHECK_S = 10.0

_reapers: list[subprocess.Popen] = []

# The reaper of a private instance: a small process in its own session. It reads the instance's
# session folder from its standard input, then waits until that input reaches end of file (the
# driver closed it or died, however it died) and ends the instance's processes: SIGTERM, then
# SIGKILL to whatever is left after a grace period. A process belongs to the instance when its
# environment carries the instance's marker (set while the instance starts, inherited by every
# process Ray starts), or when it has renamed itself ``ray::...`` and holds files of the
# instance's session folder open (renaming can overwrite part of the environment as the kernel
# shows it, marker included: Ray's agents do). Only this user's processes can be read.
_REAPER = r"""
import os, signal, sys, time
entry = (sys.argv[1] + "=" + sys.argv[2]).encode()
session = sys.stdin.readline().strip()
sys.stdin.read()
def holds_session_files(pid):
    try:
        fds = os.listdir("/proc/" + pid + "/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            if os.readlink("/proc/" + pid + "/fd/" + fd).startswith(session + "/"):
                return True
        except OSError:
            pass
    return False
def instance():
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            with open("/proc/" + pid + "/environ", "rb") as f:
                env = f.read()
            with open("/proc/" + pid + "/cmdline", "rb") as f:
                renamed = f.read().startswith(b"ray::")
        except OSError:
            continue
        if entry in env.split(b"\0") or (session and renamed and holds_session_files(pid)):
            found.append(int(pid))
    return found
for sig in (signal.SIGTERM, signal.SIGKILL):
    pids = instance()
    for pid in pids:
        try:
            os.kill(pid, sig)
        except OSError:
            pass
    end = time.monotonic() + 3
    while pids and time.monotonic() < end:
        time.sleep(0.1)
        pids = instance()
    if not pids:
        break
"""


def _start_reaper(marker: str) -> subprocess.Popen | None:
    """Start the reaper of the private instance marked ``marker`` (Linux: it reads /proc)."""
    if not os.path.isdir("/proc/self/fd"):
        return None
    env = {k: v for k, v in os.environ.items() if k != INSTANCE_ENV}
    return subprocess.Popen([sys.executable, "-I", "-c", _REAPER, INSTANCE_ENV, marker],
                            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=env, start_new_session=True, text=True)


def _release_reapers() -> None:
    """Let the reapers of earlier private instances (shut down by now) clean up and exit."""
    for reaper in _reapers:
        if reaper.stdin is not None and not reaper.stdin.closed:
            reaper.stdin.close()
    _reapers[:] = [r for r in _reapers if r.poll() is None]


def _split_address(address: str) -> tuple[str, int] | None:
    """``host:port`` (also ``ray://host:port`` and ``[v6]:port``), or None when it is not one."""
    rest = address.split("://", 1)[1] if "://" in address else address
    host, sep, port = rest.rpartition(":")
    if not sep or not port.isdigit() or not host:
        return None
    return host.strip("[]"), int(port)


def _ray_host(host: str) -> str:
    """The host Ray itself connects to: it replaces a loopback name by this node's address
    unless cluster mode is off (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``)."""
    if host in ("localhost", "127.0.0.1", "::1"):
        from ray.util import get_node_ip_address

        return get_node_ip_address()
    return host


# the client's connection preface and an empty SETTINGS frame (HTTP/2, RFC 9113 section 3.4)
_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"


def _answers_as_grpc(host: str, port: int, timeout: float) -> str | None:
    """None when ``host:port`` answers an HTTP/2 handshake (as Ray's GCS, a gRPC server,
    does); otherwise why not."""
    try:
        with socket.create_connection((host, port), timeout=max(timeout, 0.05)) as s:
            if os.environ.get("RAY_USE_TLS", "0").lower() in ("1", "true"):
                return None  # a TLS handshake first: reaching the port is all we check
            s.sendall(_H2_PREFACE)
            head = b""
            while len(head) < 9:
                part = s.recv(9 - len(head))
                if not part:
                    return "the connection was closed without an answer"
                head += part
    except TimeoutError:
        return "no answer"
    except OSError as exc:
        return exc.strerror or str(exc)
    if head[3] != 0x4:  # a server's first frame is its SETTINGS frame
        return "something answers there, but without the gRPC handshake of a Ray cluster"
    return None


def wait_for_cluster(address: str, timeout: float) -> None:
    """Return once ``address`` answers as a Ray cluster does; raise :class:`RayConnectTimeout`
    after ``timeout`` seconds of trying (refused, unreachable, unknown host, wrong service)."""
    parsed = _split_address(address)
    if parsed is None:
        return  # "auto" and the like: Ray resolves them and fails at once when nothing is found
    host, port = parsed[0], parsed[1]
    host = _ray_host(host) if "://" not in address else host
    deadline = time.monotonic() + timeout
    while True:
        why = _answers_as_grpc(host, port, min(deadline - time.monotonic(), 5.0))
        if why is None:
            return
        left = deadline - time.monotonic()
        if left <= 0:
            shown = address if host == parsed[0] else f"{address} (Ray connects to {host}:{port})"
            raise RayConnectTimeout(
                f"no Ray cluster answered at {shown} within {timeout:g} s ({why}); start one "
                f"there (ray start --head), check the address, or give more time with "
                f"--connect-timeout SECONDS")
        time.sleep(min(0.5, left))


def _check_same_cluster(ray, address: str | None) -> None:
    """This process is connected already: refuse another ``host:port`` than that cluster's."""
    parsed = _split_address(address) if address and "://" not in address else None
    if parsed is None:
        return  # a private instance asked for (the current one serves), or "auto"
    wanted = f"{_ray_host(parsed[0])}:{parsed[1]}"
    current = ray.get_runtime_context().gcs_address
    if current != wanted:
        raise RuntimeError(f"this process is connected to the Ray cluster at {current} already; "
                           f"it cannot also use {address} (call ray.shutdown() first)")


def ray_init(address: str | None = None, num_cpus: int | None = None, connect_timeout: float = 30.0):
    """Connect to ``address`` or start a private instance bound to the loopback interface.

    Connecting first waits (at most ``connect_timeout`` seconds) until the address answers as a
    Ray cluster, then calls ``ray.init``; :class:`RayConnectTimeout` when it does not.

    A private instance runs with Ray's cluster mode off (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``,
    read by Ray when it is imported): its processes listen on 127.0.0.1 only. On Linux a reaper
    process started beside them ends them once this process has ended, whatever ended it (when
    a driver is killed, Ray leaves its dashboard and runtime-env agents running).
    """
    if not math.isfinite(connect_timeout) or connect_timeout <= 0:
        raise ValueError(f"--connect-timeout must be a number of seconds > 0, got {connect_timeout}")
    private = not address or address == "local"
    if private and "ray" not in sys.modules:
        os.environ[LOOPBACK_ENV] = "0"
    try:
        import ray
        from ray.util import get_node_ip_address
    except ImportError as exc:  # pragma: no cover - exercised only without the extra
        raise RuntimeError("the ray executor needs the extra: pip install 'clop-lab[ray]'") from exc
    if ray.is_initialized():
        _check_same_cluster(ray, None if private else address)
        return ray
    if not private:
        wait_for_cluster(address, connect_timeout)
        try:
            ray.init(address=address, log_to_driver=False)
        except ConnectionError as exc:
            raise RayConnectTimeout(f"could not connect to the Ray cluster at {address}: "
                                    f"{' '.join(str(exc).split())}") from exc
        return ray
    if get_node_ip_address() not in ("127.0.0.1", "::1"):
        raise RuntimeError(
            f"a private Ray instance would listen on {get_node_ip_address()}, not 127.0.0.1: ray "
            f"was imported before {LOOPBACK_ENV}=0 was set; set it in the environment")
    _release_reapers()
    marker = uuid.uuid4().hex
    reaper = _start_reaper(marker)
    os.environ[INSTANCE_ENV] = marker
    try:
        # address="local": always a new private instance, never an existing cluster found on disk
        ray.init(address="local", num_cpus=num_cpus or os.cpu_count(), include_dashboard=False,
                 log_to_driver=False)
    except BaseException:
        if reaper is not None:
            reaper.stdin.close()  # clean up what was started
        raise
    finally:
        del os.environ[INSTANCE_ENV]
    if reaper is not None:
        context = ray.get_runtime_context()
        try:
            reaper.stdin.write(os.path.join(context.get_temp_dir(), context.get_session_name()) + "\n")
            reaper.stdin.flush()
        except OSError:  # the reaper is gone (killed): the instance still runs, uncovered
            pass
        _reapers.append(reaper)
    return ray


def _fmt(x: float) -> str:
    return f"{x:g}"


def check_resources(ray, gpus_per_chunk: float, where: str) -> None:
    """Raise :class:`RayResourceError` unless some live node has a CPU and ``gpus_per_chunk``
    GPUs (a chunk's task asks for both)."""
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    if any(r.get("CPU", 0) >= 1 and r.get("GPU", 0) >= gpus_per_chunk for r in nodes):
        return
    gpus = [r.get("GPU", 0) for r in nodes]
    has = (f"{len(nodes)} live node(s), {_fmt(sum(r.get('CPU', 0) for r in nodes))} CPU(s), "
           f"{_fmt(sum(gpus))} GPU(s)" + (f" (at most {_fmt(max(gpus))} on one node)" if sum(gpus) else ""))
    if gpus_per_chunk > 0:
        raise RayResourceError(
            f"--gpus-per-chunk {_fmt(gpus_per_chunk)}: no node of the Ray cluster at {where} has "
            f"{_fmt(gpus_per_chunk)} GPU(s) and a CPU for a chunk; it has {has}")
    raise RayResourceError(f"no node of the Ray cluster at {where} has a CPU for a chunk; it has {has}")


def _check_local_gpus(gpus_per_chunk: float) -> None:
    """A private instance runs on this machine: refuse more GPUs than torch can use here."""
    if gpus_per_chunk <= 0:
        return
    import torch

    have = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if gpus_per_chunk > have:
        raise RayResourceError(
            f"--gpus-per-chunk {_fmt(gpus_per_chunk)}: the private Ray instance runs on this "
            f"machine, which has {have} GPU(s) torch can use; give --address of a cluster with GPUs")


def run_ray(chunks: list[list[dict]], *, address: str | None = None, gpus_per_chunk: float = 0,
            max_retries: int = 2, connect_timeout: float = 30.0,
            progress: Callable[[int], None] | None = None) -> Iterator[ChunkOutcome]:
    """Submit every chunk (a list of run dicts) as a Ray task; yield outcomes as they finish.

    Connecting and the resource check happen when this is called, before any task is submitted.

    Args:
        chunks: the runs of each chunk as ``RunConfig.to_dict()`` dicts.
        address: a running cluster, or None for a private loopback instance.
        gpus_per_chunk: GPUs asked for each task (> 0 trains on cuda); a fraction up to 1 or a
            whole number.
        max_retries: retries of a task that raises or whose worker dies.
        connect_timeout: seconds to wait for ``address`` to answer.
        progress: called with a chunk's step count when it finishes.

    Raises:
        RayConnectTimeout: nothing answered as a Ray cluster at ``address`` in time.
        RayResourceError: no node can meet ``gpus_per_chunk``.
        ValueError: a negative ``max_retries`` or ``gpus_per_chunk``, a ``connect_timeout``
            that is not > 0.
    """
    if max_retries < 0:
        raise ValueError(f"max_retries must be >= 0, got {max_retries}")
    if not (math.isfinite(gpus_per_chunk) and gpus_per_chunk >= 0):
        raise ValueError(f"gpus_per_chunk must be a finite number >= 0, got {gpus_per_chunk}")
    if gpus_per_chunk > 1 and gpus_per_chunk != int(gpus_per_chunk):
        raise RayResourceError(f"--gpus-per-chunk above 1 must be a whole number of GPUs, "
                               f"got {_fmt(gpus_per_chunk)}")
    ray_module = sys.modules.get("ray")
    if (not address or address == "local") and not (ray_module and ray_module.is_initialized()):
        _check_local_gpus(gpus_per_chunk)  # before a private instance is started for nothing
    ray = ray_init(address, connect_timeout=connect_timeout)
    where = address or "127.0.0.1 (private instance)"
    check_resources(ray, gpus_per_chunk, where)
    return _ray_outcomes(ray, chunks, gpus_per_chunk, max_retries, where, progress)


def _ray_outcomes(ray, chunks, gpus_per_chunk, max_retries, where, progress) -> Iterator[ChunkOutcome]:
    import torch

    device = "cuda" if gpus_per_chunk > 0 else "cpu"
    threads = torch.get_num_threads()  # a chunk computes exactly as it would in the driver
    task = ray.remote(_train).options(num_cpus=1, num_gpus=gpus_per_chunk, max_retries=max_retries,
                                      retry_exceptions=True, scheduling_strategy="SPREAD")
    pending = {task.remote(c, device, threads): (i, time.perf_counter()) for i, c in enumerate(chunks)}
    try:
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1, timeout=RECHECK_S)
            if not done:
                try:
                    check_resources(ray, gpus_per_chunk, where)
                except RayResourceError as exc:  # nodes left the cluster: nothing more can run
                    for ref, (i, t0) in sorted(pending.items(), key=lambda kv: kv[1][0]):
                        ray.cancel(ref)
                        yield ChunkOutcome(i, None, None, f"RayResourceError: {exc}", "?",
                                           time.perf_counter() - t0)
                    pending.clear()
                continue
            ref = done[0]
            i, t0 = pending.pop(ref)
            try:
                rows, emb, host, wall = ray.get(ref)
                yield ChunkOutcome(i, rows, emb, None, host, wall)
            except Exception as exc:  # noqa: BLE001 - the task failed after its retries
                msg = "".join(traceback.format_exception_only(type(exc), exc)).strip().splitlines()
                yield ChunkOutcome(i, None, None, msg[-1] if msg else repr(exc), "?",
                                   time.perf_counter() - t0)
            if progress is not None:
                progress(chunks[i][0]["steps"] if chunks[i] else 0)
    finally:
        for ref in pending:  # the consumer stopped early: do not leave tasks running
            with contextlib.suppress(Exception):  # best effort: the driver is stopping
                ray.cancel(ref)

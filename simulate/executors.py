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

Connecting to a cluster and the private instance are :mod:`simulate.ray_cluster`.
"""

from __future__ import annotations

import contextlib
import math
import socket
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from .config import RunConfig
from .ray_cluster import INSTANCE_ENV, LOOPBACK_ENV, RayConnectTimeout, ray_init  # noqa: F401
from .ray_cluster import wait_for_cluster  # noqa: F401  (where it was before ray_cluster.py)

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


class RayResourceError(ValueError):
    """The Ray cluster cannot meet what a chunk asks for (``--gpus-per-chunk``); the message
    names the option and what the cluster has."""


#: seconds between checks, while no chunk finishes, that the cluster can still run the rest
RECHECK_S = 10.0


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

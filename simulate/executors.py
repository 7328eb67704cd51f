"""Where chunks train: in this process (``local``) or as Ray tasks on a cluster (``ray``).

Both executors receive the same chunks (lists of runs that train as one stack) and hand each
finished chunk's rows back to the driver, which writes it atomically into the sweep folder;
so resuming, loading and figures do not depend on the executor, and a sweep begun on one can
be finished on the other.

Ray (``pip install 'clop-lab[ray]'``): each chunk is one Ray task (``_train_chunk_task``). A
task that raises or whose worker dies is retried up to ``max_retries`` times; a chunk that
keeps failing is reported with its error while the other chunks finish. With
``gpus_per_chunk > 0`` tasks ask Ray for that many GPUs and train on ``cuda``; otherwise they
run on CPU. ``address=None`` starts a private Ray instance bound to 127.0.0.1; give the
address of a running cluster (``ray start --head`` on the head node, ``ray start
--address=HEAD:6379`` on the workers) to use it.
"""

from __future__ import annotations

import os
import socket
import time
import traceback
from dataclasses import dataclass
from typing import Callable, Iterator

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

    from .train import train_chunk

    if threads:
        torch.set_num_threads(threads)
    runs = [RunConfig(**d) for d in run_dicts]
    state: dict = {}
    t = time.perf_counter()
    rows = train_chunk(runs, device, state=state)
    return rows, state.get("embeddings"), _where(), time.perf_counter() - t


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
    from .train import train_chunk

    for i, chunk in enumerate(chunks):
        state: dict = {}
        t = time.perf_counter()
        rows = train_chunk(chunk, device, progress=progress, state=state)
        yield ChunkOutcome(i, rows, state.get("embeddings"), None, socket.gethostname(),
                           time.perf_counter() - t)


LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def ray_init(address: str | None = None, num_cpus: int | None = None):
    """Connect to ``address`` or start a private instance bound to the loopback interface.

    For a private instance Ray's cluster mode is switched off (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``,
    Ray's own local-only mode): its processes then listen on 127.0.0.1 only, instead of the
    machine's routable address.
    """
    if not address:
        os.environ.setdefault(LOOPBACK_ENV, "0")
    try:
        import ray
    except ImportError as exc:  # pragma: no cover - exercised only without the extra
        raise RuntimeError("the ray executor needs the extra: pip install 'clop-lab[ray]'") from exc
    if ray.is_initialized():
        return ray
    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        from ray._private import ray_constants

        ray_constants.ENABLE_RAY_CLUSTER = os.environ[LOOPBACK_ENV] not in ("0", "false", "False")
        # address="local": always a new private instance, never an existing cluster found on disk
        ray.init(address="local", num_cpus=num_cpus or os.cpu_count(), include_dashboard=False,
                 log_to_driver=False)
    return ray


def run_ray(chunks: list[list[dict]], *, address: str | None = None, gpus_per_chunk: float = 0,
            max_retries: int = 2, threads_per_chunk: int | None = None,
            progress: Callable[[int], None] | None = None) -> Iterator[ChunkOutcome]:
    """Submit every chunk (a list of run dicts) as a Ray task; yield outcomes as they finish.

    Args:
        chunks: the runs of each chunk as ``RunConfig.to_dict()`` dicts.
        address: a running cluster, or None for a private loopback instance.
        gpus_per_chunk: GPUs asked for each task (> 0 trains on cuda).
        max_retries: retries of a task that raises or whose worker dies.
        threads_per_chunk: torch threads in each task (default: the driver's, so a chunk
            computes exactly as it would locally).
        progress: called with a chunk's step count when it finishes.
    """
    import torch

    ray = ray_init(address)
    if max_retries < 0:
        raise ValueError(f"max_retries must be >= 0, got {max_retries}")
    if gpus_per_chunk < 0:
        raise ValueError(f"gpus_per_chunk must be >= 0, got {gpus_per_chunk}")
    device = "cuda" if gpus_per_chunk > 0 else "cpu"
    threads = threads_per_chunk or torch.get_num_threads()
    task = ray.remote(_train).options(num_cpus=1, num_gpus=gpus_per_chunk, max_retries=max_retries,
                                      retry_exceptions=True, scheduling_strategy="SPREAD")
    pending = {task.remote(c, device, threads): (i, time.perf_counter()) for i, c in enumerate(chunks)}
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        ref = done[0]
        i, t0 = pending.pop(ref)
        try:
            rows, emb, host, wall = ray.get(ref)
            yield ChunkOutcome(i, rows, emb, None, host, wall)
        except Exception as exc:  # the task failed after its retries
            msg = "".join(traceback.format_exception_only(type(exc), exc)).strip().splitlines()
            yield ChunkOutcome(i, None, None, msg[-1] if msg else repr(exc), "?", time.perf_counter() - t0)
        if progress is not None:
            progress(chunks[i][0]["steps"] if chunks[i] else 0)

"""Planning a sweep: the memory model of a run, chunks under a memory budget, and the dry run
(runs, chunks, memory per chunk and an estimated wall time from a short calibration).

A *chunk* is a group of runs with one chunk key (:meth:`simulate.config.RunConfig.chunk_key`)
that trains as one stacked program; its peak memory is about the sum of its runs'.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace

from .config import RunConfig

DEFAULT_MAX_MEMORY = 2 * 1024**3
_UNITS = {"TB": 1024**4, "GB": 1024**3, "MB": 1024**2, "KB": 1024, "B": 1}

# Memory model of one run inside a chunk, in tensor elements (times the item size). The factors
# count the copies the engine holds at its peak; they were read off the engine's step and
# evaluation, and err on the large side so that a planned chunk fits its budget.
#: parameters: the weights, their gradient, the momentum buffer and the updated copy
PARAM_COPIES = 4
#: Adam and AdamW keep two moment buffers besides the momentum-sized one
ADAM_EXTRA_COPIES = 2
#: free embeddings: the epoch-ordered table beside the weight, the padded gradient (or
#: Adam's denominator), the renormalised copy of the sphere modes and the masked copy of a
#: chunk with stopped runs
FREE_TABLE_COPIES = 5
#: activations of each layer: forward output, its gradient, the views and a temporary
ACTIVATION_COPIES = 4
#: (2B x 2B) similarity matrices: logits, exponentials, softmax, its gradient and masks
SIMILARITY_COPIES = 8
#: data points: the training inputs, the held-out inputs and the view noise
DATA_COPIES = 3
#: evaluation of every training point: float64 copies of the embeddings and unit rows
EVAL_EMBEDDING_COPIES = 6
#: evaluation: the pairwise-cosine blocks (a quarter of an N x N matrix, in float64)
EVAL_GRAM_FRACTION = 0.5
#: per-run overhead (small tensors, bookkeeping)
RUN_OVERHEAD_BYTES = 64 * 1024


def parse_memory(text: str | int) -> int:
    """``'4GB'``, ``'512MB'``, ``'100kB'`` or a byte count -> bytes (finite and > 0)."""
    if isinstance(text, bool):
        raise ValueError(f"max_memory must look like 4GB or 512MB, got {text!r}")
    if isinstance(text, int):
        value = text
    else:
        t = str(text).strip().upper().replace("IB", "B")
        unit = next((u for u in _UNITS if t.endswith(u)), "")
        number = t[: len(t) - len(unit)] if unit else t
        try:
            amount = float(number)
        except ValueError:
            raise ValueError(f"max_memory must look like 4GB or 512MB, got {text!r}") from None
        if not math.isfinite(amount):
            raise ValueError(f"max_memory must be a finite size such as 4GB, got {text!r}")
        value = int(amount * _UNITS.get(unit, 1))
    if value <= 0:
        raise ValueError(f"max_memory must be > 0 bytes, got {text!r}")
    return value


def run_bytes(run: RunConfig, itemsize: int = 4) -> int:
    """Rough peak memory of one run inside a chunk (parameters, optimiser state, activations,
    similarity matrices, evaluation), used to size chunks."""
    n_train = run.per_class * run.k
    two_b = 2 * run.batch_size
    if run.model == "free":
        params = 2 * n_train * run.d  # two views of every point
        acts = two_b * run.d * ACTIVATION_COPIES
        eval_rows = 2 * n_train
        width = run.d
    else:
        widths = [run.d] + [run.hidden] * (run.depth - 1) + [run.out_dim, *run.projector_widths]
        params = sum(a * b + b for a, b in zip(widths[:-1], widths[1:]))
        acts = two_b * sum(widths) * ACTIVATION_COPIES
        eval_rows = n_train
        width = max(widths)
    sims = two_b * two_b * SIMILARITY_COPIES
    data = n_train * run.d * DATA_COPIES
    evaluation = eval_rows * width * EVAL_EMBEDDING_COPIES + int(eval_rows * eval_rows * EVAL_GRAM_FRACTION)
    copies = PARAM_COPIES + (ADAM_EXTRA_COPIES if run.optimizer in ("adam", "adamw") else 0)
    if run.model == "free":
        copies += FREE_TABLE_COPIES
    return itemsize * (copies * params + acts + sims + data + evaluation) + RUN_OVERHEAD_BYTES


def plan_chunks(runs: list[RunConfig], max_memory: int) -> list[list[RunConfig]]:
    """Group runs by chunk key (in first-seen order), then split each group so that a chunk
    fits ``max_memory``."""
    groups: dict[tuple, list[RunConfig]] = {}
    for r in runs:
        groups.setdefault(r.chunk_key(), []).append(r)
    chunks = []
    for members in groups.values():
        need = run_bytes(members[0])
        if need > max_memory:
            raise ValueError(f"max_memory {format_bytes(max_memory)} is less than one run of this sweep "
                             f"needs ({format_bytes(need)}); raise --max-memory or shrink the runs (per_class, d, "
                             "hidden, depth, batch_size)")
        size = max_memory // need
        chunks += [members[i: i + size] for i in range(0, len(members), size)]
    return chunks


#: steps of the calibration run behind a dry run's time estimate
CALIBRATION_STEPS = 10


@dataclass
class ChunkPlan:
    """One planned chunk: its runs, their steps, its memory and its estimated wall time."""

    runs: list
    memory_bytes: int
    est_s: float


def calibrate(chunks: list[list[RunConfig]], device: str = "cpu") -> list[float]:
    """Estimated wall time (s) of each chunk: the largest chunk of each chunk key trains for
    ``CALIBRATION_STEPS`` steps (logging at both ends, as a real run does), and its time per
    run and step is scaled to each chunk's runs and steps. A rough figure: evaluation at
    logged steps and the machine's load move it."""
    from .engine import train_chunk

    per_run_step: dict[tuple, float] = {}
    largest: dict[tuple, list[RunConfig]] = {}
    for c in chunks:
        key = c[0].chunk_key()
        if len(c) > len(largest.get(key, [])):
            largest[key] = c
    for key, c in largest.items():
        steps = min(CALIBRATION_STEPS, c[0].steps)
        short = [replace(r, steps=steps, log_every=steps, save_embeddings=False) for r in c]
        t = time.perf_counter()
        train_chunk(short, device)
        per_run_step[key] = (time.perf_counter() - t) / (len(c) * steps)
    return [per_run_step[c[0].chunk_key()] * len(c) * c[0].steps for c in chunks]


def describe(chunks: list[list[RunConfig]], estimates: list[float] | None = None) -> list[ChunkPlan]:
    """The plan of each chunk (memory from :func:`run_bytes`; ``estimates`` from
    :func:`calibrate`, NaN when not given)."""
    estimates = estimates or [math.nan] * len(chunks)
    return [ChunkPlan(c, sum(run_bytes(r) for r in c), e) for c, e in zip(chunks, estimates)]


def format_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")

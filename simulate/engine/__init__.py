"""The training engine: a chunk (runs sharing a chunk key) trains as one stacked program.

    streams.py         seeds, per-run minibatch streams, the epoch-ordered table of free rows
    state.py           the chunk's stacked state, built from its runs; minibatches and views
    objective.py       each run's base loss plus its CLOP term
    fused.py           NT-Xent + cosine CLOP value and gradient in one pass
    schedules.py       the per-run learning-rate schedule (warmup, constant or cosine)
    optimizers.py      the stacked optimizers: sgd, lars, adam, adamw (their formulas)
    table.py           the table step of free embeddings and its rules (sparse, lazy, padded)
    linear_momentum.py the linear table rule: SGD and LARS momentum on the CPU
    evaluate.py        metrics at logged steps, the final embeddings
    train.py           the loop: :func:`train_chunk` -> :class:`TrainResult`
"""

from .evaluate import METRIC_COLUMNS
from .train import DIVERGED, TRAJECTORY_VERSION, TrainResult, resolve_device, train_chunk

__all__ = ["DIVERGED", "METRIC_COLUMNS", "TRAJECTORY_VERSION", "TrainResult", "resolve_device",
           "train_chunk"]

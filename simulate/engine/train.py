"""The training loop of one chunk: runs that share a chunk key train together as one stacked
program (parameters carry a leading run dimension; one update serves all runs with per-run
learning rate and schedule, optimizer hyper-parameters and CLOP weight).

Free embeddings take the table step (:class:`simulate.engine.table.TableStep`: the gradient
of the batch's rows only; plain SGD moves those rows, any other optimizer every row); encoders
a dense step of the chunk's optimizer (:class:`simulate.engine.optimizers.StackedOptimizer`)
through autograd.

A run whose loss or parameters become non-finite is marked diverged at that step and frozen;
its later rows carry ``state = "diverged"`` and NaN metrics. The others go on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .. import metrics as M
from ..cli import check_device_here, parse_device
from ..config import RunConfig, is_logged
from ..models import FreeEmbeddings
from .evaluate import METRIC_COLUMNS, SPECTRUM_COLUMNS, evaluate, final_embeddings, spectrum_logged
from .objective import base_loss_fn
from .mlp_step import MLPStep
from .state import ChunkState, build_state, draw_views
from .optimizers import StackedOptimizer, relative_change
from .table import TableStep

DIVERGED = "diverged"
#: changes whenever one configuration would train along a different trajectory (minibatch
#: sampling, initial draws, update rule); a sweep folder of another version is not resumed
#: into (see :mod:`simulate.store`). 2: shuffled epochs, float32 noise draws.
#: 3: VICReg variance term averaged over the two branches (the reference convention); the
#: softmax's exponential as exp (float exp2 rounds by tensor size).
TRAJECTORY_VERSION = 3


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` picks CUDA when available, else the CPU; ``cuda`` needs a CUDA device."""
    if isinstance(device, torch.device):
        return device
    device = check_device_here(parse_device(device, "device"), "device")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@dataclass
class TrainResult:
    """What training a chunk gives: one row per run and logged step, the final stacked state
    (its ``model`` holds the trained parameters) and, for runs with ``save_embeddings``, the
    final embeddings (a long table; None otherwise)."""

    rows: list[dict]
    state: ChunkState
    embeddings: object | None = None

    @property
    def model(self) -> torch.nn.Module:
        return self.state.model


def logged_rows(runs, step: int, ev: dict, diverged_step: torch.Tensor, last_loss: torch.Tensor,
                want_spectra: list[bool]) -> list[dict]:
    """The table's rows of the logged step ``step``, one per run: its objective (the last
    update's loss), the metrics ``ev`` of :func:`evaluate` (NaN, and state ``diverged``, for a
    run that has diverged), its spectra where ``want_spectra`` says so, its parameter change
    and whether it is frozen or diverged."""
    ev_cpu = {k: None if v is None else v.detach().cpu() for k, v in ev.items()}
    div, obj = diverged_step.cpu(), last_loss.cpu()
    rows = []
    for i, run in enumerate(runs):
        dead = bool(div[i] >= 0)
        row = {"run_id": run.run_id, "step": step, "objective": float(obj[i])}
        row.update({k: math.nan if dead else float(ev_cpu[k][i]) for k in METRIC_COLUMNS})
        row["state"] = DIVERGED if dead else M.STATE_NAMES[int(ev_cpu["state_code"][i])]
        for k in SPECTRUM_COLUMNS:  # lists of floats (None when not logged here)
            v = ev_cpu[k]
            row[k] = None if (dead or v is None or not want_spectra[i]) else v[i].tolist()
        row["param_change"] = math.nan if dead else float(ev_cpu["param_change"][i])
        row["frozen"] = row["param_change"] == 0.0
        row["diverged"] = dead
        row["diverged_step"] = int(div[i])
        rows.append(row)
    return rows


def encoder_step(state: ChunkState, mlp: MLPStep, optimizer: StackedOptimizer, batch, alive: torch.Tensor,
                 step: int, value: bool = True):
    """Update ``step`` of an encoder: the objective's gradients on ``batch`` (indices, labels,
    the views ``[v1; v2]``, :func:`simulate.engine.state.draw_views`) by :class:`MLPStep`,
    then the chunk's optimizer. Returns (per-run loss, or None when ``value`` is False and
    the fused pass skips it; per-run mask of the runs updated)."""
    _, labels, views = batch
    loss, grads, finite = mlp(views, labels, alive, value)
    ok = optimizer.step(grads, alive & finite, step)
    return loss, ok


def train_chunk(runs: list[RunConfig], device: str | torch.device = "cpu", dtype=torch.float32,
                progress=None) -> TrainResult:
    """Train ``runs`` (one chunk) together.

    Args:
        runs: runs sharing one chunk key.
        device: ``auto``, ``cpu``, ``cuda`` or a torch device.
        dtype: parameter dtype (float32 by default).
        progress: called with 1 after every step (e.g. a tqdm bar's ``update``).
    """
    device = resolve_device(device)
    state = build_state(runs, device, dtype)
    r0, R = runs[0], len(runs)
    loss_fn = base_loss_fn(r0)
    params = list(state.model.parameters())
    free = isinstance(state.model, FreeEmbeddings)
    table = TableStep(state, loss_fn, r0.update_mode != "free") if free else None
    mlp = None if free else MLPStep(state, loss_fn)
    # the table step's optimizer takes its own schedule; the sparse step and encoders read it here
    optimizer = (None if table is not None and table.optimizer is not None
                 else StackedOptimizer(state, list(state.model.named_parameters())))
    alive = torch.ones(R, dtype=torch.bool, device=device)
    diverged_step = torch.full((R,), -1, dtype=torch.int64, device=device)
    last_loss = torch.full((R,), math.nan, dtype=torch.float64, device=device)
    rows: list[dict] = []
    previous: list[torch.Tensor] | None = None  # the parameters at the last logged step

    def log(step: int, final: bool):
        nonlocal alive, previous
        want_spectra = [spectrum_logged(run, step) for run in runs]
        ev = evaluate(state, final, spectra=any(want_spectra))
        ev["param_change"] = (torch.full((R,), math.nan, dtype=torch.float64, device=device)
                              if previous is None else relative_change(params, previous))
        previous = [p.detach().clone() for p in params]
        # embeddings that overflow although the parameters are finite also end a run
        diverged_step.copy_(torch.where(~ev["finite"] & (diverged_step < 0), step, diverged_step))
        alive = alive & ev["finite"]
        rows.extend(logged_rows(runs, step, ev, diverged_step, last_loss, want_spectra))

    log(0, True)
    for step in range(1, r0.steps + 1):
        idx, labels, views = draw_views(state)
        logged = is_logged(step, r0.steps, r0.log_every)
        if table is not None:
            loss, ok = table(labels, alive, step, lr=None if optimizer is None else optimizer.lr_at(step),
                             value=logged)
            if logged:
                table.sync()  # the metrics read the weight
        else:
            loss, ok = encoder_step(state, mlp, optimizer, (idx, labels, views), alive, step, value=logged)
        diverged_step.copy_(torch.where(alive & ~ok, step, diverged_step))
        alive = alive & ok
        if loss is not None:
            last_loss = torch.where(torch.isfinite(loss), loss.detach().double(),
                                    torch.full_like(last_loss, math.nan))
        if logged:
            log(step, step == r0.steps)
        if progress is not None:
            progress(1)
    return TrainResult(rows, state, final_embeddings(state) if r0.save_embeddings else None)

"""Evaluation at logged steps: per-run metrics of the embeddings of every training point
(float64), kNN and linear-probe accuracy at the first and last logged step, and the export of
final embeddings.

The *embeddings* are the rows the loss sees: free embeddings, the MLP's output, or with a
projector head the projection. With a projector the *representation* (the encoder's output,
before the projector) is measured too, in the ``repr_*`` columns (NaN without a projector):
dimensional collapse (Jing et al., ICLR 2022) shows in its spectrum and effective rank.

Spectra (:data:`SPECTRUM_COLUMNS`) are lists of floats, one per row of the table: the
singular values of the uncentred embedding matrix of all training points, divided by their sum
(:func:`simulate.metrics.singular_value_spectrum`, ``normalize="sum"``: the distribution
inside the effective rank), descending, ``min(N, D)`` values; they are logged at the steps
``spectrum_every`` chooses (every logged step by default) and are None (null in Parquet) at
the others. In Parquet they are ``list<double>`` columns; ``np.stack(df.spectrum.dropna())``
gives a matrix.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .. import metrics as M
from ..models import FreeEmbeddings
from .state import ChunkState
from .optimizers import finite_per_run

#: per-run numbers logged at every logged step (besides objective, state and divergence)
METRIC_COLUMNS = (
    "effective_rank", "variance", "mean_cos", "max_cos", "mean_norm", "proto_cos",
    "min_class_angle", "knn_acc", "probe_acc",
    # the field's collapse diagnostics (SimSiam; lightly's std_of_l2_normalized)
    "std_l2_normalized", "collapse_level",
    # the representation before a projector head (NaN without one)
    "repr_effective_rank", "repr_std_l2_normalized", "repr_collapse_level", "repr_knn_acc",
    "repr_probe_acc",
)
#: per-run lists of floats logged at the steps ``spectrum_every`` chooses (None elsewhere)
SPECTRUM_COLUMNS = ("spectrum", "repr_spectrum")


def spectrum_logged(run, step: int) -> bool:
    """Whether ``run`` logs its spectra at the logged step ``step``: every logged step when
    ``spectrum_every`` is None, else its multiples, step 0 and the last step."""
    every = run.spectrum_every
    return every is None or step % every == 0 or step == run.steps


def _probes(train, y_train, test, y_test, k):
    tr_u = torch.nn.functional.normalize(train.double(), dim=-1)
    te_u = torch.nn.functional.normalize(test.double(), dim=-1)
    return (M.knn_accuracy(tr_u, y_train, te_u, y_test, k),
            M.linear_probe_accuracy(tr_u, y_train, te_u, y_test, k))


def _embeddings(state: ChunkState):
    """The embeddings of every training point (R, N, D), the representation before a
    projector head (None without one) and the labels of the embeddings' rows."""
    model = state.model
    if isinstance(model, FreeEmbeddings):
        return model.weight, None, torch.cat([state.y_train, state.y_train], 1)
    if model.has_projector:
        rep = model.represent(state.x_train)
        return model.project(rep), rep, state.y_train
    return model.embed_all(state.x_train), None, state.y_train


def _embedding_metrics(state: ChunkState, emb: torch.Tensor, y: torch.Tensor,
                       spectra: bool) -> dict:
    """The metrics of the embeddings ``emb`` (finite), in float64 (``max_cos`` in their dtype)."""
    e64 = emb.double()
    u64 = torch.nn.functional.normalize(e64, dim=-1)
    out = {
        "effective_rank": M.effective_rank(e64),
        "variance": M.embedding_variance(u64),
        "mean_cos": M.mean_pairwise_cosine(u64, unit=True),
        "max_cos": M.max_pairwise_cosine(emb),
        "mean_norm": M.mean_norm(e64),
        "state_code": M.collapse_state(u64, unit=True),
        "min_class_angle": M.min_class_angle(e64, y, state.runs[0].k),
    }
    nan = torch.full_like(out["mean_norm"], math.nan)
    out["proto_cos"] = nan if state.prototypes is None else torch.where(  # NaN for runs without CLOP
        state.clop_weight > 0, M.prototype_cosine(u64, y, state.prototypes, unit=True), nan)
    out["std_l2_normalized"] = M.std_of_l2_normalized(e64)
    out["collapse_level"] = M.collapse_level(e64)
    out["spectrum"] = M.singular_value_spectrum(e64) if spectra else None
    out["repr_spectrum"] = None
    for name in ("knn_acc", "probe_acc", "repr_effective_rank", "repr_std_l2_normalized",
                 "repr_collapse_level", "repr_knn_acc", "repr_probe_acc"):
        out[name] = nan
    return out


def _held_out_accuracy(state: ChunkState, out: dict, emb: torch.Tensor,
                       rep: torch.Tensor | None) -> None:
    """kNN and linear-probe accuracy on the held-out points into ``out`` (of the embeddings,
    and of the representation when there is one); a run whose held-out embeddings are not
    finite is marked not finite."""
    model = state.model
    test_rep = model.represent(state.x_test)
    test = model.project(test_rep)
    test_ok = finite_per_run([test, test_rep], test.shape[0])
    out["finite"] = out["finite"] & test_ok
    keep = out["finite"].view(-1, 1, 1)
    test = torch.where(keep, test, torch.ones_like(test))
    emb = torch.where(keep, emb, torch.ones_like(emb))
    k = state.runs[0].k
    out["knn_acc"], out["probe_acc"] = _probes(emb, state.y_train, test, state.y_test, k)
    if rep is not None:
        test_rep = torch.where(keep, test_rep, torch.ones_like(test_rep))
        rep = torch.where(keep, rep, torch.ones_like(rep))
        out["repr_knn_acc"], out["repr_probe_acc"] = _probes(rep, state.y_train, test_rep, state.y_test, k)


@torch.no_grad()
def evaluate(state: ChunkState, final: bool, spectra: bool = True) -> dict:
    """Per-run metrics of the embeddings of all training points (float64). With ``final``
    (the first and the last logged step), also kNN and linear-probe accuracy on the held-out
    points (MLP encoders; free embeddings have no held-out points: NaN). With ``spectra``,
    also the spectra (R, L) of :data:`SPECTRUM_COLUMNS` (None without a projector)."""
    emb, rep, y = _embeddings(state)
    finite = finite_per_run([emb] if rep is None else [emb, rep], emb.shape[0])
    emb = torch.where(finite.view(-1, 1, 1), emb, torch.ones_like(emb))  # keep linalg defined
    out = _embedding_metrics(state, emb, y, spectra)
    if rep is not None:
        rep = torch.where(finite.view(-1, 1, 1), rep, torch.ones_like(rep))
        r64 = rep.double()
        out["repr_effective_rank"] = M.effective_rank(r64)
        out["repr_std_l2_normalized"] = M.std_of_l2_normalized(r64)
        out["repr_collapse_level"] = M.collapse_level(r64)
        out["repr_spectrum"] = M.singular_value_spectrum(r64) if spectra else None
    out["finite"] = finite
    if final and not isinstance(state.model, FreeEmbeddings) and state.x_test.shape[1] > 0:
        _held_out_accuracy(state, out, emb, rep)
    return out


@torch.no_grad()
def final_embeddings(state: ChunkState):
    """Long table of the embeddings of every training point: run_id, point, label, e0..e{D-1}.
    Free embeddings contribute their view-1 rows."""
    import pandas as pd

    model = state.model
    n = state.x_train.shape[1]
    emb = model.weight[:, :n] if isinstance(model, FreeEmbeddings) else model.embed_all(state.x_train)
    emb = emb.double().cpu().numpy()
    frames = []
    for i, run in enumerate(state.runs):
        f = pd.DataFrame(emb[i], columns=[f"e{j}" for j in range(emb.shape[-1])])
        f.insert(0, "label", state.y_train[i].cpu().numpy())
        f.insert(0, "point", np.arange(n))
        f.insert(0, "run_id", run.run_id)
        frames.append(f)
    return pd.concat(frames, ignore_index=True)

"""Evaluation at logged steps: per-run metrics of the embeddings of every training point
(float64), kNN and linear-probe accuracy at the first and last logged step, and the export of
final embeddings."""

from __future__ import annotations

import math

import numpy as np
import torch

from .. import metrics as M
from ..models import FreeEmbeddings
from .state import ChunkState
from .update import finite_per_run

#: per-run numbers logged at every logged step (besides objective, state and divergence)
METRIC_COLUMNS = (
    "effective_rank", "variance", "mean_cos", "max_cos", "mean_norm", "proto_cos",
    "min_class_angle", "knn_acc", "probe_acc",
)


@torch.no_grad()
def evaluate(state: ChunkState, final: bool) -> dict:
    """Per-run metrics of the embeddings of all training points (float64). With ``final``
    (the first and the last logged step), also kNN and linear-probe accuracy on the held-out
    points (MLP encoders; free embeddings have no held-out points: NaN)."""
    model = state.model
    if isinstance(model, FreeEmbeddings):
        emb = model.weight
        y = torch.cat([state.y_train, state.y_train], 1)
    else:
        emb = model.embed_all(state.x_train)
        y = state.y_train
    finite = finite_per_run([emb], emb.shape[0])
    emb = torch.where(finite.view(-1, 1, 1), emb, torch.ones_like(emb))  # keep linalg defined
    e64 = emb.double()  # the metrics work in float64 (max_cos in the embeddings' dtype)
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
    # prototypes exist only in chunks whose runs use CLOP (part of the chunk key)
    out["proto_cos"] = nan if state.prototypes is None else M.prototype_cosine(u64, y, state.prototypes, unit=True)
    out["knn_acc"], out["probe_acc"] = nan, nan
    out["finite"] = finite
    if final and not isinstance(model, FreeEmbeddings) and state.x_test.shape[1] > 0:
        test = model.embed_all(state.x_test)
        test_ok = finite_per_run([test], test.shape[0])
        out["finite"] = finite & test_ok
        test = torch.where(out["finite"].view(-1, 1, 1), test, torch.ones_like(test))
        emb = torch.where(out["finite"].view(-1, 1, 1), emb, torch.ones_like(emb))
        k = state.runs[0].k
        tr_u = torch.nn.functional.normalize(emb.double(), dim=-1)
        te_u = torch.nn.functional.normalize(test.double(), dim=-1)
        out["knn_acc"] = M.knn_accuracy(tr_u, state.y_train, te_u, state.y_test, k)
        out["probe_acc"] = M.linear_probe_accuracy(tr_u, state.y_train, te_u, state.y_test, k)
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

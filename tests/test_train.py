"""Batched training: equals per-run training and torch.optim.SGD; divergence; update modes."""

import math

import numpy as np
import pandas as pd
import pytest
import torch

import theory
from simulate.config import RunConfig, expand
from simulate.engine import train_chunk
from simulate.engine.objective import base_loss_fn, objective
from simulate.engine.state import build_state, draw_batch, forward_views

SMALL = dict(k=3, d=6, per_class=16, batch_size=8, steps=12, log_every=4, hidden=16, out_dim=8)
METRICS = ["objective", "effective_rank", "variance", "mean_cos", "max_cos", "mean_norm", "knn_acc", "probe_acc"]


def _groups(runs):
    """The runs split by chunk key (free embeddings with and without momentum or weight decay
    train in different chunks)."""
    groups = {}
    for r in runs:
        groups.setdefault(r.chunk_key(), []).append(r)
    return list(groups.values())


def _frame(rows):
    df = pd.DataFrame(rows)
    return df.sort_values(["run_id", "step"]).reset_index(drop=True)


@pytest.mark.parametrize("model", ["free", "mlp"])
def test_stack_equals_one_run_at_a_time(model):
    runs = expand({**SMALL, "model": model, "loss": "ntxent", "clop_weight": [0.0, 0.5],
                   "lr": [0.05, 0.5], "seed": [0, 1], "momentum": [0.0, 0.9], "label_fraction": 0.5})
    together = _frame([row for group in _groups(runs) for row in train_chunk(group).rows])
    alone = _frame([row for r in runs for row in train_chunk([r]).rows])
    pd.testing.assert_frame_equal(together[["run_id", "step", "state"]], alone[["run_id", "step", "state"]])
    np.testing.assert_allclose(together[METRICS].to_numpy(float), alone[METRICS].to_numpy(float),
                               rtol=2e-4, atol=2e-5)


def _sgd_reference(run: RunConfig) -> list[torch.Tensor]:
    """One run trained with torch.optim.SGD (the per-configuration script)."""
    chunk = build_state([run], torch.device("cpu"))
    params = list(chunk.model.parameters())
    opt = torch.optim.SGD(params, lr=run.lr, momentum=run.momentum, weight_decay=run.weight_decay)
    loss_fn = base_loss_fn(run)
    for _ in range(run.steps):
        idx, labels, v1, v2 = draw_batch(chunk)
        z1, z2 = forward_views(chunk, idx, v1, v2)
        loss = objective(chunk, loss_fn, torch.cat([z1, z2], 1), labels).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if run.update_mode != "free":
            chunk.model.renormalise_()
    return [p.detach()[0] for p in params]


@pytest.mark.parametrize("model, loss, lrs", [("mlp", "ntxent", [0.02, 0.3]), ("mlp", "vicreg", [1e-3, 5e-3]),
                                              ("free", "supcon", [0.02, 0.3]), ("free", "ntxent", [0.02, 0.3])])
def test_engine_matches_torch_sgd(model, loss, lrs):
    runs = expand({**SMALL, "model": model, "loss": loss, "lr": lrs, "momentum": [0.0, 0.5],
                   "weight_decay": [0.0, 0.01], "clop_weight": 0.3, "label_fraction": 0.5})
    for group in _groups(runs):
        stacked = list(train_chunk(group).model.parameters())
        for i, r in enumerate(group):
            for p_ref, p in zip(_sgd_reference(r), stacked):
                assert torch.isfinite(p_ref).all()
                assert torch.allclose(p[i], p_ref, rtol=1e-4, atol=1e-5), r


@pytest.mark.parametrize("mode", ["free", "sphere"])
@pytest.mark.parametrize("clop", [0.0, 0.7])
def test_sparse_fused_free_step_matches_torch_sgd(mode, clop):
    """Free embeddings without momentum or weight decay take the sparse step with the fused
    NT-Xent (+ CLOP) gradient over epoch-ordered rows; torch.optim.SGD with autograd through
    nt_xent and clop_term over the whole weight is the reference."""
    runs = expand({**SMALL, "model": "free", "loss": "ntxent", "update_mode": mode, "steps": 14,
                   "lr": [0.05, 2.0], "seed": [0, 1], "clop_weight": clop, "label_fraction": 0.5})
    result = train_chunk(runs)
    assert result.state.fused and result.state.sparse
    stacked = result.model.weight.detach()
    for i, r in enumerate(runs):
        (ref,) = _sgd_reference(r)
        assert torch.allclose(stacked[i], ref, rtol=1e-4, atol=1e-5), r


def test_minibatches_run_through_shuffled_epochs():
    from simulate.engine.streams import BatchStream, StackedStream

    run = RunConfig(model="free", k=2, per_class=5, batch_size=3)
    streams = [BatchStream(s, 10, 3, None, run) for s in (11, 12)]
    labels = torch.arange(10).expand(2, -1)
    stack = StackedStream(streams, labels, torch.device("cpu"), torch.float32)
    epochs = []
    for _ in range(4):
        batches = []
        for j in range(3):
            idx, lab, _, _ = stack.next()
            assert stack.new_epoch == (j == 0) and stack.j == j + 1
            assert torch.equal(lab, idx)  # each point's label travels with it
            batches.append(idx)
        epochs.append(torch.cat(batches, 1))
    for e in epochs:  # 3 batches of 3 distinct points per run; the tenth point sits out
        assert all(len(set(row.tolist())) == 9 for row in e)
    assert not torch.equal(epochs[0], epochs[1]) and not torch.equal(epochs[0][0], epochs[0][1])
    # a run's draws do not depend on its chunk-mates
    alone = StackedStream([BatchStream(12, 10, 3, None, run)], labels[:1], torch.device("cpu"), torch.float32)
    assert torch.equal(torch.cat([alone.next()[0] for _ in range(3)], 1)[0], epochs[0][1])


@pytest.mark.parametrize("n, b", [(7, 2), (6, 3), (5, 5)])
def test_epoch_table_gather_write_and_sync(n, b):
    """EpochTable against a row-by-row bookkeeping of the same writes, over several epochs
    (with and without points left out of the batches)."""
    from simulate.engine.streams import EpochTable

    g = torch.Generator().manual_seed(n * 10 + b)
    runs, dim = 3, 2
    weight = torch.randn(runs, 2 * n, dim, generator=g)
    want = weight.clone()
    rows = EpochTable(weight, b)
    for _ in range(3):
        perm = torch.stack([torch.randperm(n, generator=g) for _ in range(runs)])
        rows.open(perm)
        for j in range(n // b):
            got = rows.batch(j)
            pts = perm[:, j * b: (j + 1) * b]
            for r in range(runs):
                assert torch.equal(got[r], torch.cat([want[r, pts[r]], want[r, n + pts[r]]]))
            new = torch.randn(runs, 2 * b, dim, generator=g)
            got.copy_(new)
            for r in range(runs):
                want[r, pts[r]], want[r, n + pts[r]] = new[r, :b], new[r, b:]
    rows.sync()
    assert torch.equal(weight, want)


@pytest.mark.parametrize("optimizer, extra, linear, mode", [
    (opt, extra, False, mode) for mode in ("free", "sphere") for opt, extra in (
        ("sgd", {}), ("adam", {}), ("sgd", {"momentum": 0.9}),  # sparse, lazy, lazy (or linear's code on a device)
        ("adam", {"beta1": 0.0}))] + [  # padded
    ("sgd", {"momentum": 0.9}, True, "free"), ("lars", {"momentum": 0.9, "weight_decay": 1e-3}, True, "free")])
def test_fused_table_step_freezes_a_non_finite_run(optimizer, extra, linear, mode, monkeypatch):
    """A NaN row reaches the fused gradient of its run only: the step skips the loss value
    (value=False), yet that run is not updated (its rows stay exactly as they were, in the
    sphere mode too) and is reported; its chunk-mate moves on. Plain SGD (the sparse step)
    finds the NaN when the row enters a batch; the rules that move every row find it at the
    first update."""
    from simulate.engine import table
    from simulate.engine.table import TableStep

    monkeypatch.setattr(table, "LINEAR_ON_CPU", linear)
    runs = expand({**SMALL, "model": "free", "loss": "ntxent", "clop_weight": 0.5, "label_fraction": 0.5,
                   "lr": [0.1, 0.2], "optimizer": optimizer, "update_mode": mode, **extra})
    optimizer = "sgd" if runs[0].table_rule == "sparse" else "every row"
    chunk = build_state(runs, torch.device("cpu"))
    assert chunk.fused and chunk.sparse == (optimizer == "sgd")
    w = chunk.model.weight.detach()
    w[1, 5, 0] = float("nan")  # point 5, view 1, of run 1
    step = TableStep(chunk, None, mode != "free")
    assert (step.optimizer is None) == (optimizer == "sgd")
    assert (step.optimizer is not None and step.optimizer.linear is not None) == linear
    alive = torch.ones(2, dtype=torch.bool)
    seen = False
    for t in range(1, chunk.stream.n // chunk.stream.b + 1):
        idx, labels, _, _ = draw_batch(chunk)
        step.sync()
        before = w.clone()
        loss, ok = step(labels, alive, t, value=False)
        step.sync()
        assert loss is None and bool(ok[0])
        hit = bool((idx[1] == 5).any())
        seen |= hit
        if optimizer == "sgd":
            assert bool(ok[1]) == (not hit and not seen)
        else:
            assert not ok[1]
        if not ok[1]:
            assert torch.equal(w[1].nan_to_num(7.0), before[1].nan_to_num(7.0))
        assert not torch.equal(w[0], before[0])
        alive = alive & ok
    assert seen and not alive[1]


def test_deterministic_on_cpu():
    runs = expand({**SMALL, "model": "mlp", "lr": [0.1, 1.0]})
    a, b = _frame(train_chunk(runs).rows), _frame(train_chunk(runs).rows)
    pd.testing.assert_frame_equal(a, b)


@pytest.mark.parametrize("mode, kind", [("sphere", "pair"), ("sphere_raw", "pair_unprojected")])
def test_one_step_on_the_sphere_is_the_theory_pair_map(mode, kind):
    """Free embeddings, align loss w * mean(1 - cos): each positive pair follows the pair map
    with beta = eta * w / B (the mean divides by B)."""
    run = RunConfig(model="free", update_mode=mode, loss="align", lr=3.0, k=2, d=4, per_class=4,
                    holdout_fraction=0.0, batch_size=8, steps=1, log_every=1, aug_sigma=0.5)
    chunk = build_state([run], torch.device("cpu"), torch.float64)
    w0 = chunk.model.weight.detach()[0].clone()
    w1 = train_chunk([run], dtype=torch.float64).model.weight.detach()[0]
    n = 8
    c0 = (w0[:n] * w0[n:]).sum(-1)
    c1 = (w1[:n] * w1[n:]).sum(-1)
    f = theory.step_map(kind, eta=run.lr / run.batch_size, w=1.0)
    assert torch.allclose(c1, torch.as_tensor(f(c0.numpy())), atol=1e-12)
    assert torch.allclose(w1.norm(dim=-1), torch.ones(2 * n, dtype=torch.float64))


def test_free_mode_norm_growth():
    """Free mode, plain SGD: squared norms grow by eta^2 |grad|^2 (claim norm_growth) — so they
    never shrink."""
    run = RunConfig(model="free", loss="ntxent", lr=5.0, k=2, d=4, per_class=8, holdout_fraction=0.0,
                    batch_size=16, steps=5, log_every=1)
    df = _frame(train_chunk([run], dtype=torch.float64).rows)
    assert (np.diff(df.mean_norm.to_numpy()) >= -1e-12).all()
    assert df.mean_norm.iloc[-1] > df.mean_norm.iloc[0]


def test_device_auto_resolves_and_cuda_is_refused_without_gpu():
    from simulate.engine import resolve_device

    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="cuda"):
            resolve_device("cuda")
    with pytest.raises(ValueError, match="device"):
        resolve_device("tpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")
@pytest.mark.parametrize("model, clop", [("mlp", 0.0), ("free", 0.0), ("free", 0.5)])
def test_cuda_matches_cpu(model, clop):
    runs = expand({**SMALL, "model": model, "lr": [0.1, 0.5], "clop_weight": clop, "label_fraction": 0.5})
    a, b = _frame(train_chunk(runs, "cpu").rows), _frame(train_chunk(runs, "cuda").rows)
    np.testing.assert_allclose(a[METRICS].to_numpy(float), b[METRICS].to_numpy(float), rtol=1e-3, atol=1e-4)


def test_nan_metrics_are_nan_not_missing():
    df = _frame(train_chunk(expand({**SMALL, "model": "free"})).rows)
    assert math.isnan(df.knn_acc.iloc[-1])  # free embeddings have no held-out points


def test_init_norm_sets_every_free_row_and_is_refused_elsewhere():
    base = dict(model="free", loss="ntxent", k=2, d=4, per_class=8, batch_size=4, steps=2, log_every=1)
    result = train_chunk(expand({**base, "init_norm": [0.5, 20.0]}))
    rows, norms = result.rows, result.model.weight.norm(dim=-1)
    first = [r for r in rows if r["step"] == 0]
    assert [r["mean_norm"] for r in first] == pytest.approx([0.5, 20.0], rel=1e-6)  # float32 rows
    # norms only grow in the free mode (norm-growth identity), so they start at init_norm
    assert bool((norms[0] >= 0.5 - 1e-6).all()) and bool((norms[1] >= 20.0 - 1e-4).all())
    from simulate.config import SpecError

    for bad in ({"update_mode": "sphere"}, {"model": "mlp"}, {"init_norm": 0.0}):
        with pytest.raises(SpecError, match="init_norm"):
            expand({**base, "init_norm": 2.0, **bad})


# ---------------------------------------------------------------------- projector, diagnostics, digits
def _numpy_std_l2(e):
    """lightly's std_of_l2_normalized, in numpy: mean over dims of the unbiased std of the
    l2-normalised rows."""
    u = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
    return u.std(axis=0, ddof=1).mean()


def test_projector_head_logs_representation_and_projection():
    """With projector_dims the loss sees the projection (CLOP prototypes in its width) and the
    rows carry the diagnostics of both: std of l2-normalised rows, collapse level, effective
    rank and spectra, each recomputed here from the final parameters with numpy."""
    runs = expand({**SMALL, "model": "mlp", "projector_dims": "12,5", "clop_weight": 0.5, "k": 3,
                   "label_fraction": 0.5, "optimizer": "lars", "momentum": 0.9, "lr": [0.5, 2.0]})
    assert runs[0].embedding_dim == 5
    result = train_chunk(runs, dtype=torch.float64)
    state = result.state
    assert state.prototypes.shape == (3, 5)
    df = pd.DataFrame(result.rows)
    last = df[df.step == runs[0].steps].reset_index(drop=True)
    # the layers, evaluated by hand: encoder (3 layers, ReLU) then projector (2 layers, ReLU)
    p = dict(result.model.named_parameters())
    for i in range(len(runs)):
        h = state.x_train[i].numpy()
        for j in range(3):
            h = h @ p[f"weights.{j}"][i].detach().numpy() + p[f"biases.{j}"][i, 0].detach().numpy()
            h = np.maximum(h, 0) if j < 2 else h
        z = np.maximum(h @ p["proj_weights.0"][i].detach().numpy() + p["proj_biases.0"][i, 0].detach().numpy(), 0)
        z = z @ p["proj_weights.1"][i].detach().numpy() + p["proj_biases.1"][i, 0].detach().numpy()
        assert h.shape[1] == 8 and z.shape[1] == 5
        for prefix, e in (("", z), ("repr_", h)):
            row = last.iloc[i]
            assert row[f"{prefix}std_l2_normalized"] == pytest.approx(_numpy_std_l2(e), rel=1e-9)
            level = max(0.0, 1 - math.sqrt(e.shape[1]) * _numpy_std_l2(e))
            assert row[f"{prefix}collapse_level"] == pytest.approx(level, rel=1e-9, abs=1e-12)
            s = np.linalg.svd(e, compute_uv=False)
            np.testing.assert_allclose(row[f"{prefix}spectrum"], s / s.sum(), rtol=1e-9, atol=1e-12)
            if prefix:
                q = s / s.sum() + 1e-7
                assert row.repr_effective_rank == pytest.approx(math.exp(-(q * np.log(q)).sum()), rel=1e-9)
    assert df.repr_knn_acc.notna().sum() == 2 * len(runs)  # first and last logged step


def test_without_projector_the_repr_columns_are_nan_and_spectra_follow_spectrum_every():
    runs = expand({**SMALL, "model": ["mlp", "free"], "spectrum_every": 8})
    for run in runs:
        df = pd.DataFrame(train_chunk([run]).rows)
        assert df.repr_effective_rank.isna().all() and df.repr_spectrum.isna().all()
        logged = df[df.spectrum.notna()].step.tolist()
        assert logged == [0, 8, 12]  # multiples of 8, and the last step
        width = min(run.embedding_dim, 2 * run.per_class * run.k if run.model == "free" else 99)
        assert all(len(v) == width and abs(sum(v) - 1) < 1e-9 for v in df.spectrum.dropna())
        assert df.std_l2_normalized.notna().all() and df.collapse_level.between(0, 1).all()


def test_digits_views_come_from_each_runs_own_stream():
    """data: digits trains an MLP on 64 pixels; a run's shifted, noisy views (drawn in its
    own stream) and so its whole row set do not depend on its chunk-mates."""
    from simulate.digits import DigitsConfig, make_digits

    spec = {**SMALL, "model": "mlp", "data": "digits", "d": 64, "k": 3, "per_class": 20, "batch_size": 8,
            "max_shift": [0, 2], "seed": [0, 1], "label_fraction": 0.5}
    runs = expand(spec)
    assert all(r.d == 64 for r in runs)
    chunk = build_state(runs, torch.device("cpu"))
    want = make_digits(DigitsConfig(k=3, per_class=20, label_fraction=0.5, max_shift=2))
    assert torch.equal(chunk.x_train[0], want.x_train.float())
    idx, _, v1, v2 = draw_batch(chunk)
    x = chunk.x_train.gather(1, idx[..., None].expand(-1, -1, 64))
    # without shifts the views are the images plus small noise (std aug_sigma); with shifts,
    # ink moves to other pixels
    for i, r in enumerate(runs):
        for v in (v1, v2):
            big = float((v[i] - x[i]).abs().max())
            assert (big > 1.0) == (r.max_shift > 0), (r.max_shift, big)
    together = _frame(train_chunk(runs).rows)
    alone = _frame([row for r in runs for row in train_chunk([r]).rows])
    pd.testing.assert_frame_equal(together, alone, check_exact=True)


def test_runs_of_every_optimizer_are_the_same_in_any_chunk():
    """Runs with different hyper-parameters in one chunk give exactly the rows they give alone
    (the optimizer is part of the chunk key, and for free embeddings whether momentum is on;
    everything else per run)."""
    runs = []
    for opt, extra in (("lars", {"momentum": [0.0, 0.9], "lars_trust": 1e-2}),
                       ("adam", {"beta1": [0.5, 0.9], "warmup_steps": 4, "schedule": "cosine"}),
                       ("adamw", {"weight_decay": [0.0, 0.1], "eps": 1e-3})):
        runs += expand({**SMALL, "model": ["mlp", "free"], "optimizer": opt, "lr": 0.05,
                        "clop_weight": 0.5, "label_fraction": 0.5, **extra})
    assert len({r.chunk_key() for r in runs}) == 7
    together = _frame([row for group in _groups(runs) for row in train_chunk(group).rows])
    alone = _frame([row for r in runs for row in train_chunk([r]).rows])
    pd.testing.assert_frame_equal(together, alone, check_exact=True)

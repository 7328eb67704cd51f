"""The stacked optimizers and learning-rate schedules against independent references.

Every optimizer updates all runs of a chunk at once with per-run hyper-parameters; each run
must follow the reference of its own configuration over 100 steps to 1e-6 in float64:
``torch.optim.SGD`` / ``Adam`` / ``AdamW`` run per configuration, and for LARS a slow
per-layer loop written from the formula (You et al. 2017, as lightly and solo-learn implement
it for SimCLR/BYOL: trust ratio eta |w| / (|g| + wd |w| + eps) per layer, biases left out of
adaptation and weight decay unless ``lars_biases`` is lars, then SGD momentum). A run whose update turns non-finite stops,
and its chunk-mates go on as if alone. The schedules equal ``torch.optim.lr_scheduler``.
"""

import math
import warnings

import numpy as np
import pytest
import torch

from simulate.config import SpecError, expand
from simulate.engine import train_chunk
from simulate.engine.objective import base_loss_fn, objective
from simulate.engine.state import build_state, draw_batch, forward_views
from simulate.engine.optimizers import StackedOptimizer
from simulate.engine.schedules import schedule_factors

STEPS = 100
#: a tiny MLP chunk (the optimizer tests only use its parameters and per-run tensors)
NET = dict(model="mlp", k=2, d=5, per_class=4, hidden=4, depth=2, out_dim=3, batch_size=4,
           holdout_fraction=0.0, steps=STEPS, log_every=STEPS)

GRIDS = {
    "sgd": [dict(lr=0.05), dict(lr=0.2, momentum=0.9), dict(lr=0.1, momentum=0.5, nesterov=True,
            weight_decay=0.01), dict(lr=0.03, weight_decay=0.1, warmup_steps=10, schedule="cosine")],
    "lars": [dict(lr=0.5, momentum=0.9), dict(lr=2.0, momentum=0.9, weight_decay=1e-3, lars_trust=0.01),
             dict(lr=1.0, momentum=0.5, nesterov=True, weight_decay=1e-6, warmup_steps=20,
                  schedule="cosine"), dict(lr=0.3, lars_trust=0.02, eps=1e-3)],
    "adam": [dict(lr=1e-3), dict(lr=1e-2, beta1=0.5, beta2=0.99, eps=1e-6), dict(lr=3e-3, weight_decay=0.1),
             dict(lr=1e-2, warmup_steps=10, schedule="cosine")],
    "adamw": [dict(lr=1e-3, weight_decay=0.01), dict(lr=1e-2, weight_decay=0.5, beta1=0.8),
              dict(lr=3e-3, beta2=0.9, eps=1e-4, warmup_steps=5)],
}


def _runs(optimizer, grid):
    return [expand({**NET, "optimizer": optimizer, "seed": i, **g})[0] for i, g in enumerate(grid)]


def _loss(named, x, t):
    """A per-run regression loss through the MLP layers (R,): mean((f(x) - t)^2) with
    f = W1 relu(W0 x + b0) + b1, in whatever stacking ``named`` holds."""
    p = dict(named)
    h = torch.relu(torch.baddbmm(p["biases.0"], x, p["weights.0"]))
    out = torch.baddbmm(p["biases.1"], h, p["weights.1"])
    return ((out - t) ** 2).mean((1, 2))


def _problem(R):
    """Inputs (R, 8, 5) and targets (R, 8, 3): one draw, the same for every run, so that a
    reference trained alone (R = 1) sees its run's problem."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 8, 5, generator=g, dtype=torch.float64)
    t = torch.randn(1, 8, 3, generator=g, dtype=torch.float64)
    return x.expand(R, -1, -1), t.expand(R, -1, -1)


def _stacked(runs, steps=STEPS, poison=None):
    """The engine's optimizer over the chunk ``runs`` (float64); ``poison = (run, step)``
    makes that run's gradient NaN at that step. Returns the parameters after every step
    ({name: (steps + 1, R, ...)}) and the per-step update masks (steps, R)."""
    state = build_state(runs, torch.device("cpu"), torch.float64)
    named = list(state.model.named_parameters())
    opt = StackedOptimizer(state, named)
    x, t = _problem(len(runs))
    alive = torch.ones(len(runs), dtype=torch.bool)
    history = {n: [p.detach().clone()] for n, p in named}
    masks = []
    for step in range(1, steps + 1):
        loss = _loss(named, x, t)
        grads = list(torch.autograd.grad(loss.sum(), [p for _, p in named]))
        if poison is not None and step == poison[1]:
            grads[0] = grads[0].clone()
            grads[0][poison[0]] = math.nan
        ok = opt.step(grads, alive, step)
        alive = alive & ok
        masks.append(ok.clone())
        for n, p in named:
            history[n].append(p.detach().clone())
    return {n: torch.stack(v) for n, v in history.items()}, torch.stack(masks)


def _torch_optimizer(run, params):
    """torch.optim's optimizer for ``run`` (sgd, adam or adamw) over ``params``."""
    if run.optimizer == "sgd":
        return torch.optim.SGD(params, lr=run.lr, momentum=run.momentum, weight_decay=run.weight_decay,
                               nesterov=run.nesterov)
    cls = torch.optim.Adam if run.optimizer == "adam" else torch.optim.AdamW
    return cls(params, lr=run.lr, betas=(run.beta1, run.beta2), eps=run.eps, weight_decay=run.weight_decay)


def _torch_scheduler(opt, run):
    """The reference schedule: LinearLR warmup then CosineAnnealingLR (SequentialLR)."""
    S = torch.optim.lr_scheduler
    w = run.warmup_steps
    parts = []
    if w > 0:
        parts.append(S.LinearLR(opt, start_factor=1.0 / w, end_factor=1.0, total_iters=w - 1))
    if run.schedule == "cosine" and run.steps > w:  # the milestone W is reached
        parts.append(S.CosineAnnealingLR(opt, T_max=run.steps - w, eta_min=0.0))
    if not parts:
        return None
    if len(parts) == 1:
        return parts[0]
    return S.SequentialLR(opt, parts, milestones=[w])


def _lars_reference(params, grads, bufs, run, lr, first):
    """LARS, one run, one layer at a time, from the formula (plain Python floats for the
    norms); biases adapted only with ``lars_biases`` lars."""
    for name in params:
        p, g = params[name], grads[name]
        d = g
        if "bias" not in name or run.lars_biases == "lars":
            w_norm, g_norm = float(p.norm()), float(g.norm())
            if w_norm > 0 and g_norm > 0:
                trust = run.lars_trust * w_norm / (g_norm + run.weight_decay * w_norm + run.eps)
                d = (g + run.weight_decay * p) * trust
        if run.momentum > 0:
            bufs[name] = d.clone() if first else run.momentum * bufs[name] + d
            d = d + run.momentum * bufs[name] if run.nesterov else bufs[name]
        params[name] = p - lr * d


def _reference(run, init, steps=STEPS):
    """One configuration alone: its own parameters (R = 1) and its reference optimizer.
    Returns {name: (steps + 1, ...)}."""
    params = {n: v.clone().unsqueeze(0).requires_grad_(True) for n, v in init.items()}
    x, t = (a[:1] for a in _problem(1))  # each run's problem is the same draw
    history = {n: [v.detach()[0].clone()] for n, v in params.items()}
    if run.optimizer == "lars":
        bufs, base = {}, run.lr
        factors = schedule_factors(steps, run.warmup_steps, run.schedule)
        for step in range(1, steps + 1):
            live = {n: v.detach().requires_grad_(True) for n, v in params.items()}
            loss = _loss(live.items(), x, t).sum()
            grads = dict(zip(live, torch.autograd.grad(loss, list(live.values()))))
            params = {n: v.detach() for n, v in live.items()}
            _lars_reference(params, grads, bufs, run, base * factors[step - 1], step == 1)
            for n in params:
                history[n].append(params[n][0].clone())
        return {n: torch.stack(v) for n, v in history.items()}
    plist = list(params.values())
    opt = _torch_optimizer(run, plist)
    sched = _torch_scheduler(opt, run)
    for _ in range(steps):
        opt.zero_grad()
        _loss(params.items(), x, t).sum().backward()
        opt.step()
        if sched is not None:
            sched.step()
        for n, v in params.items():
            history[n].append(v.detach()[0].clone())
    return {n: torch.stack(v) for n, v in history.items()}


@pytest.fixture(autouse=True)
def _quiet_schedulers():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # SequentialLR's epoch-argument notice
        yield


@pytest.mark.parametrize("optimizer", [*GRIDS, "lars, biases adapted"])
def test_stacked_optimizer_equals_reference_per_configuration(optimizer):
    if optimizer == "lars, biases adapted":  # lars_biases: lars (every run; it is chunk-wide)
        runs = _runs("lars", [{**g, "lars_biases": "lars"} for g in GRIDS["lars"]])
    else:
        runs = _runs(optimizer, GRIDS[optimizer])
    got, masks = _stacked(runs)
    assert bool(masks.all())
    for i, run in enumerate(runs):
        init = {n: h[0, i] for n, h in got.items()}
        want = _reference(run, init)
        for n in got:
            diff = float((got[n][:, i] - want[n]).abs().max())
            assert diff <= 1e-6, (run.optimizer, i, n, diff)
        # the run really moved (the comparison is not of two frozen trajectories)
        assert float((got["weights.0"][-1, i] - got["weights.0"][0, i]).abs().max()) > 1e-3


@pytest.mark.parametrize("optimizer", list(GRIDS))
def test_a_diverging_run_does_not_disturb_its_chunk_mates(optimizer):
    """Run 1's gradient turns NaN at step 40 (and, for sgd and lars, run 2's learning rate is
    so large that it overflows): those runs stop (their parameters keep their last finite
    values), and the others equal a chunk without them, bit for bit."""
    grid = [dict(g) for g in GRIDS[optimizer][:3]]
    if optimizer in ("sgd", "lars"):
        grid[2] = {**grid[2], "lr": 1e150}
    runs = _runs(optimizer, grid)
    got, masks = _stacked(runs, steps=60, poison=(1, 40))
    alone, _ = _stacked([runs[0]], steps=60)
    assert bool(masks[:39, 1].all()) and not bool(masks[39:, 1].any())
    for n in got:
        assert torch.equal(got[n][:, 0], alone[n][:, 0])
        assert torch.equal(got[n][40:, 1], got[n][39:40, 1].expand_as(got[n][40:, 1]))
        assert bool(torch.isfinite(got[n][:, 1]).all())
    if optimizer in ("sgd", "lars"):
        assert not bool(masks[:, 2].all())
        for n in got:
            assert bool(torch.isfinite(got[n][:, 2]).all())


@pytest.mark.parametrize("steps, warmup, schedule", [(50, 0, "cosine"), (50, 10, "cosine"),
                                                     (30, 7, "constant"), (20, 0, "constant"),
                                                     (40, 39, "cosine"), (10, 10, "constant"),
                                                     (6, 9, "cosine")])
def test_schedule_equals_torch_lr_scheduler(steps, warmup, schedule):
    run = expand({**NET, "steps": steps, "warmup_steps": warmup, "schedule": schedule, "lr": 0.3})[0]
    p = torch.zeros(1, requires_grad=True)
    opt = torch.optim.SGD([p], lr=run.lr)
    sched = _torch_scheduler(opt, run)
    want = []
    for _ in range(steps):
        want.append(opt.param_groups[0]["lr"])
        opt.step()
        if sched is not None:
            sched.step()
    got = run.lr * schedule_factors(steps, warmup, schedule)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-15)
    # the engine's per-run table: runs of different schedules in one chunk
    runs = expand({**NET, "steps": steps, "lr": [0.3, 0.05], "warmup_steps": [0, warmup],
                   "schedule": ["constant", schedule], "seed": 0})
    state = build_state(runs, torch.device("cpu"), torch.float64)
    opt2 = StackedOptimizer(state, list(state.model.named_parameters()))
    table = torch.stack([opt2.lr_at(t) for t in range(1, steps + 1)])
    for i, r in enumerate(runs):
        np.testing.assert_allclose(table[:, i].numpy(),
                                   r.lr * schedule_factors(steps, r.warmup_steps, r.schedule), rtol=1e-15)


def _engine_reference(run, dtype=torch.float64):
    """One configuration through the engine's own minibatches and loss, with torch.optim (and
    for LARS the slow reference) and the torch schedulers: the per-configuration script."""
    chunk = build_state([run], torch.device("cpu"), dtype)
    named = list(chunk.model.named_parameters())
    loss_fn = base_loss_fn(run)
    if run.optimizer == "lars":
        params = {n: p.detach().clone() for n, p in named}
        bufs, factors = {}, schedule_factors(run.steps, run.warmup_steps, run.schedule)
        for step in range(1, run.steps + 1):
            idx, labels, v1, v2 = draw_batch(chunk)
            z1, z2 = forward_views(chunk, idx, v1, v2)
            loss = objective(chunk, loss_fn, torch.cat([z1, z2], 1), labels).sum()
            grads = dict(zip(params, torch.autograd.grad(loss, [p for _, p in named])))
            _lars_reference(params, grads, bufs, run, run.lr * factors[step - 1], step == 1)
            with torch.no_grad():
                for n, p in named:
                    p.copy_(params[n])
            if run.update_mode != "free":
                chunk.model.renormalise_()
                params = {n: p.detach().clone() for n, p in named}
        return {n: p.detach()[0] for n, p in named}
    plist = [p for _, p in named]
    opt = _torch_optimizer(run, plist)
    sched = _torch_scheduler(opt, run)
    for _ in range(run.steps):
        idx, labels, v1, v2 = draw_batch(chunk)
        z1, z2 = forward_views(chunk, idx, v1, v2)
        loss = objective(chunk, loss_fn, torch.cat([z1, z2], 1), labels).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if sched is not None:
            sched.step()
        if run.update_mode != "free":
            chunk.model.renormalise_()
    return {n: p.detach()[0] for n, p in named}


#: the table step's linear rule (SGD and LARS with momentum on free rows) takes the lazy
#: rule's code on a device; ``LAZY`` marks the cases that run that code here on the CPU too
LAZY = {"lazy_on_cpu": True}


def _rule(monkeypatch, extra):
    """Strip the LAZY marker from ``extra``, setting the module flag it stands for."""
    from simulate.engine import table

    extra = dict(extra)
    monkeypatch.setattr(table, "LINEAR_ON_CPU", not extra.pop("lazy_on_cpu", False))
    return extra


@pytest.mark.parametrize("optimizer, model, extra", [
    ("lars", "mlp", dict(momentum=0.9, lr=[0.3, 3.0], weight_decay=1e-6, warmup_steps=4, schedule="cosine",
                         projector_dims="6,4")),
    ("adam", "free", dict(lr=[1e-3, 1e-2], warmup_steps=[0, 3], schedule="cosine")),
    ("adamw", "mlp", dict(lr=[1e-3, 1e-2], weight_decay=0.05)),
    ("sgd", "free", dict(lr=[0.1, 1.0], warmup_steps=3, schedule="cosine")),  # the sparse step
    # the table step's lazy rule over 40 steps: momentum (or beta1) 0.5 folds its scale into
    # the rows every 14 updates
    ("sgd", "free", dict(lr=[0.1, 0.5], momentum=[0.5, 0.9], nesterov=[False, True], weight_decay=1e-3,
                         steps=40, warmup_steps=3, schedule="cosine")),
    ("sgd", "free", dict(lr=[0.1, 0.5], momentum=[0.5, 0.9], nesterov=[False, True], weight_decay=1e-3,
                         steps=40, warmup_steps=3, schedule="cosine", **LAZY)),
    ("lars", "free", dict(lr=[0.3, 3.0], momentum=0.5, nesterov=[False, True], weight_decay=1e-3, steps=40)),
    ("lars", "free", dict(lr=[0.3, 3.0], momentum=0.5, nesterov=[False, True], weight_decay=1e-3, steps=40,
                          **LAZY)),
    ("sgd", "free", dict(lr=[0.1, 0.5], weight_decay=[1e-3, 0.1], steps=20)),  # no momentum
    ("lars", "free", dict(lr=[0.3, 3.0], momentum=0.5, nesterov=[False, True], weight_decay=1e-3,
                          steps=40, update_mode="sphere")),
    ("lars", "free", dict(lr=[0.3, 3.0], weight_decay=[0.0, 1e-3], steps=20)),  # no momentum
    ("adamw", "free", dict(lr=[1e-2, 0.1], beta1=[0.5, 0.9], weight_decay=0.05, steps=40,
                           warmup_steps=5, schedule="cosine")),
    ("adam", "free", dict(lr=[1e-2, 0.1], weight_decay=0.01, steps=20)),  # padded: Adam's L2 term
    ("adam", "free", dict(lr=[1e-2, 0.1], beta1=0.0, steps=20, update_mode="sphere")),  # padded: beta1 0
])
def test_training_loop_equals_per_configuration_script(optimizer, model, extra, monkeypatch):
    """train_chunk with an optimizer and a schedule equals each configuration trained alone by
    the reference optimizer on the engine's minibatches (float64, NT-Xent + CLOP), with SGD and
    LARS with momentum on free embeddings by the linear and by the lazy rule."""
    extra = _rule(monkeypatch, extra)
    spec = {**NET, "model": model, "d": 6, "k": 3, "per_class": 8, "hidden": 8, "out_dim": 6,
            "batch_size": 6, "steps": 15, "log_every": 5, "loss": "ntxent", "clop_weight": 0.5,
            "label_fraction": 0.5, "optimizer": optimizer, **extra}
    runs = expand(spec)
    result = train_chunk(runs, dtype=torch.float64)
    assert result.state.sparse == (model == "free" and runs[0].table_rule == "sparse")
    named = dict(result.model.named_parameters())
    for i, run in enumerate(runs):
        want = _engine_reference(run)
        for n, v in want.items():
            assert float((named[n][i] - v).abs().max()) <= 1e-6, (run, n)
        assert not any(r["diverged"] for r in result.rows)


@pytest.mark.parametrize("optimizer, extra", [
    ("adam", dict(lr=[1e-2, 0.1], beta1=[0.5, 0.9], beta2=[0.9, 0.999])),
    ("sgd", dict(lr=[0.1, 0.5], momentum=[0.5, 0.9], weight_decay=1e-3)),
    ("lars", dict(lr=[0.3, 3.0], momentum=0.9, nesterov=[False, True], weight_decay=1e-3)),
    ("sgd", dict(lr=[0.1, 0.5], momentum=[0.5, 0.9], weight_decay=1e-3, **LAZY)),
    ("lars", dict(lr=[0.3, 3.0], momentum=0.9, nesterov=[False, True], weight_decay=1e-3, **LAZY)),
])
def test_table_rule_folds_its_scales_without_changing_the_update(optimizer, extra, monkeypatch):
    """With the fold thresholds raised to 0.95 every scale (Adam's sqrt(beta2) ones included)
    and the linear rule's matrix are folded into their rows every few updates; the runs still
    equal the reference optimizer (float64, 1e-6), and the runs in one chunk equal the runs
    alone."""
    from simulate.engine import linear_momentum, table

    extra = _rule(monkeypatch, extra)
    monkeypatch.setattr(table, "RESCALE_BELOW", 0.95)
    monkeypatch.setattr(linear_momentum, "FOLD_DET", 0.95)
    spec = {**NET, "model": "free", "d": 6, "k": 3, "per_class": 8, "batch_size": 6, "steps": 25,
            "log_every": 25, "loss": "ntxent", "clop_weight": 0.5, "label_fraction": 0.5,
            "optimizer": optimizer, **extra}
    runs = expand(spec)
    assert {r.table_rule for r in runs} == {"lazy" if optimizer == "adam" else "linear"}
    result = train_chunk(runs, dtype=torch.float64)
    for i, run in enumerate(runs):
        want = _engine_reference(run)["weight"]
        assert float((result.model.weight[i] - want).abs().max()) <= 1e-6, run
        alone = train_chunk([run], dtype=torch.float64).model.weight[0]
        assert torch.equal(alone, result.model.weight[i])


def test_linear_rule_keeps_the_norm_of_the_rows_and_stops_an_overflowing_run():
    """The linear rule (SGD and LARS with momentum on free rows): the |p| it keeps from its Gram
    matrix equals the norm of the rows written out, after updates with and without folds; a
    run whose learning rate overflows the rows stops with finite rows, and its chunk-mate
    equals itself trained alone, bit for bit."""
    from simulate.engine.state import build_state as build
    from simulate.engine.table import TableStep

    spec = {**NET, "model": "free", "d": 6, "k": 3, "per_class": 8, "batch_size": 6, "steps": 40,
            "log_every": 40, "loss": "ntxent", "clop_weight": 0.5, "label_fraction": 0.5,
            "optimizer": "lars", "momentum": 0.9, "nesterov": [False, True], "weight_decay": 1e-2,
            "lr": [0.5, 3.0]}
    runs = expand(spec)
    chunk = build(runs, torch.device("cpu"), torch.float64)
    step = TableStep(chunk, None, False)
    lin = step.optimizer.linear
    alive = torch.ones(len(runs), dtype=torch.bool)
    folds = 0
    for t in range(1, 41):
        draw_batch(chunk)
        before = lin.phi.copy()
        _, ok = step(None, alive, t)
        assert bool(ok.all())
        folds += int(((lin.phi == np.eye(2)).all((1, 2)) & ~(before == np.eye(2)).all((1, 2))).sum())
        P = step.table.table
        phi = torch.from_numpy(lin.phi)
        p = phi[:, 0, 0, None, None] * P + phi[:, 0, 1, None, None] * lin.Q
        np.testing.assert_allclose(np.sqrt(lin.w2), p.reshape(len(runs), -1).norm(dim=1).numpy(), rtol=1e-10)
    assert folds >= len(runs)  # momentum 0.9: a fold about every 26 updates

    for opt in ("sgd", "lars"):
        runs = expand({**spec, "optimizer": opt, "nesterov": False, "lr": [0.5, 1e150], "steps": 12,
                       "log_every": 4})
        result = train_chunk(runs, dtype=torch.float32)
        assert result.state.sparse is False
        assert [r["diverged"] for r in result.rows if r["step"] == 12] == [False, True]
        assert bool(torch.isfinite(result.model.weight).all())
        alone = train_chunk([runs[0]], dtype=torch.float32).model.weight[0]
        assert torch.equal(alone, result.model.weight[0])


def _free(**extra):
    return {**NET, "model": "free", "d": 6, "k": 3, "per_class": 8, "batch_size": 6, "loss": "ntxent",
            "clop_weight": 0.5, "label_fraction": 0.5, **extra}


def test_nesterov_near_a_singular_step_takes_the_lazy_rule():
    """With Nesterov the linear rule's step matrix has determinant momentum (1 - lr omega): a
    run with lr omega above 1/2 (here lr weight_decay = 1, a singular step) takes the lazy
    rule and trains as torch.optim does (for 2 steps: the run blows up after them); at
    lr omega = 1/2 the linear rule still equals it."""
    for lr, rule, steps in ((1.0, "lazy", 2), (0.5, "linear", 12)):
        run = expand(_free(optimizer="sgd", lr=lr, momentum=0.5, nesterov=True, weight_decay=1.0,
                           steps=steps, log_every=steps))[0]
        assert run.table_rule == rule
        result = train_chunk([run], dtype=torch.float64)
        assert not any(r["diverged"] for r in result.rows)
        want = _engine_reference(run)["weight"]
        assert float((result.model.weight[0] - want).abs().max()) <= 1e-6
    lars = expand(_free(optimizer="lars", lr=[100.0, 1000.0], momentum=0.9, nesterov=True, weight_decay=1e-6))
    assert [r.table_rule for r in lars] == ["linear", "lazy"]  # lars_trust 1e-3


def test_linear_rule_rows_do_not_depend_on_chunk_mates_threads_or_logging():
    """LARS on a table of 2 x 1,200 x 16 numbers per run (torch splits a sum that long across
    threads): each run equals itself trained alone, and the rows do not depend on how often
    the metrics read them (float32, two threads)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        spec = dict(loss="ntxent", temperature=0.5, clop_weight=0.0, lr=[0.1, 3.0], seed=[0, 1], model="free",
                    k=8, d=16, per_class=150, holdout_fraction=0.0, label_fraction=0.5, batch_size=64,
                    steps=60, log_every=60, optimizer="lars", momentum=0.9, weight_decay=1e-6, lars_trust=0.1)
        runs = expand(spec)
        assert {r.table_rule for r in runs} == {"linear"}
        together = train_chunk(runs).model.weight
        for i, run in enumerate(runs):
            assert torch.equal(train_chunk([run]).model.weight[0], together[i]), run
        often = train_chunk(expand({**spec, "log_every": 7})).model.weight
        assert torch.equal(often, together)
    finally:
        torch.set_num_threads(threads)


def test_linear_rule_keeps_finite_rows_at_huge_rates_and_trains_huge_rows():
    """float32, the linear rule: a learning rate near float32's largest number stops the run
    with finite rows (no write-out overflows); rows of norm 1e18, whose squares overflow
    float32, train on as the lazy rule trains them."""
    from simulate.engine import table

    for momentum in (0.9, 0.999):
        runs = expand(_free(optimizer="lars", lr=[0.1, 1e39], momentum=momentum, weight_decay=1e-2,
                            steps=6, log_every=3))
        result = train_chunk(runs)
        assert [r["diverged"] for r in result.rows if r["step"] == 6] == [False, True]
        assert bool(torch.isfinite(result.model.weight).all())
    run = expand(_free(optimizer="sgd", lr=0.1, momentum=0.9, init_norm=1e18, steps=10, log_every=10))[0]
    assert run.table_rule == "linear"
    linear = train_chunk([run])
    assert not any(r["diverged"] for r in linear.rows)
    try:
        table.LINEAR_ON_CPU = False
        lazy = train_chunk([run]).model.weight
    finally:
        table.LINEAR_ON_CPU = True
    torch.testing.assert_close(linear.model.weight, lazy, rtol=1e-5, atol=0.0)


def test_linear_rule_solves_its_step_without_cancellation():
    """float64, lr times weight decay up to 1e16 (the rows grow by that factor every update):
    the linear rule's step solves in closed form, so it equals the lazy rule to rounding and
    declares no divergence the lazy rule does not."""
    from simulate.engine import table

    for lr in (1e8, 1e14, 1e16):
        run = expand(_free(optimizer="sgd", lr=lr, momentum=0.9, weight_decay=1.0, steps=3, log_every=1))[0]
        assert run.table_rule == "linear"
        linear = train_chunk([run], dtype=torch.float64)
        try:
            table.LINEAR_ON_CPU = False
            lazy = train_chunk([run], dtype=torch.float64)
        finally:
            table.LINEAR_ON_CPU = True
        assert [r["diverged_step"] for r in linear.rows] == [r["diverged_step"] for r in lazy.rows] == [-1] * 4
        w, v = linear.model.weight.detach(), lazy.model.weight.detach()
        assert float((w - v).abs().max() / v.abs().max()) <= 1e-13, lr


@pytest.mark.parametrize("optimizer, extra", [
    ("sgd", dict(momentum=1e-39)), ("lars", dict(momentum=1e-39)),
    ("adam", dict(beta1=1e-39)), ("adam", dict(beta2=1e-80)),
])
def test_decays_too_small_for_a_scale_take_the_padded_rule(optimizer, extra):
    """A momentum or beta so small that its per-run scale would leave float32's range within
    one update takes the padded rule: float32 runs stay finite (not diverged), and float64
    runs equal torch.optim's to 1e-6. (In float32 Adam with a tiny beta2 steps by about
    +-lr on every coordinate, so the two sides' rounding of near-zero gradient components
    shows at the lr scale: only float64 is compared.)"""
    spec = {**NET, "model": "free", "d": 6, "k": 3, "per_class": 8, "batch_size": 6, "steps": 12,
            "log_every": 12, "loss": "ntxent", "clop_weight": 0.5, "label_fraction": 0.5,
            "optimizer": optimizer, "lr": 0.05, **extra}
    run = expand(spec)[0]
    assert run.table_rule == "padded"
    for dtype in (torch.float32, torch.float64):
        result = train_chunk([run], dtype=dtype)
        assert not any(r["diverged"] for r in result.rows)
        assert bool(torch.isfinite(result.model.weight).all())
    want = _engine_reference(run)["weight"]
    assert float((result.model.weight[0] - want).abs().max()) <= 1e-6, run


@pytest.mark.parametrize("extra", [dict(eps=1e-45, lr=1.0), dict(eps=1e-12, lr=1e33)])
def test_adam_rows_without_gradient_yet_stay_put_when_eps_underflows(extra):
    """float32 Adam where ``eps c2 / (k mu)`` underflows: the rows not yet in a batch (M = S = 0)
    step by exactly 0, as torch.optim's do, instead of 0 / 0, and the run is not marked
    diverged."""
    spec = {**NET, "model": "free", "d": 6, "k": 3, "per_class": 8, "batch_size": 6, "steps": 3,
            "log_every": 3, "loss": "ntxent", "clop_weight": 0.5, "label_fraction": 0.5,
            "optimizer": "adam", **extra}
    run = expand(spec)[0]
    assert run.table_rule == "lazy"
    chunk = build_state([run], torch.device("cpu"), torch.float32)
    start = chunk.model.weight.detach().clone()
    seen = torch.cat([draw_batch(chunk)[0][0] for _ in range(run.steps)])
    n = start.shape[1] // 2
    untouched = sorted(set(range(n)) - set(seen.tolist()))
    assert untouched  # 3 batches of 6 out of 24 points
    result = train_chunk([run], dtype=torch.float32)
    assert not any(r["diverged"] for r in result.rows)
    w = result.model.weight.detach()[0]
    rows = untouched + [i + n for i in untouched]
    assert torch.equal(w[rows], start[0, rows])
    assert bool(torch.isfinite(w).all()) and not torch.equal(w, start[0])


@pytest.mark.parametrize("bad, field", [
    ({"optimizer": "rmsprop"}, "optimizer"), ({"nesterov": True}, "nesterov"),
    ({"optimizer": "adam", "momentum": 0.9}, "momentum"), ({"beta1": 1.0}, "beta1"),
    ({"beta2": -0.1}, "beta2"), ({"eps": 0.0}, "eps"), ({"lars_trust": 0}, "lars_trust"),
    ({"schedule": "step"}, "schedule"), ({"warmup_steps": -1}, "warmup_steps"),
    ({"warmup_steps": 2.5}, "warmup_steps"), ({"optimizer": "adamw", "nesterov": True, "momentum": 0.0}, "nesterov"),
])
def test_bad_optimizer_fields_are_refused_by_name(bad, field):
    with pytest.raises(SpecError, match=field):
        expand({**NET, **bad})

"""simulate.stability.curvature against dense float64 Hessians, and
simulate.stability.optimizer_edges against the dense Jacobians of the literal optimizer steps.

Reference Hessian: the MLP's forward written here from the parameter layout (weights then
biases, encoder then projector; ReLU and per-view batch norm between layers), NT-Xent and the
cosine CLOP term written here from their formulas, the other base losses from
simulate.losses (which test_losses checks against their loops); dense Hessian by
torch.autograd.functional.hessian (reverse over reverse). Reference steps: torch.optim.SGD
itself, and the engine's LARS rule (StackedOptimizer) for one layer.
"""

import math

import numpy as np
import pytest
import torch

from simulate.config import RunConfig
from simulate.engine.optimizers import StackedOptimizer, lars_ratio
from simulate.engine.state import build_state
from simulate.losses import BASE_LOSSES, TEMPERATURE_LOSSES
from simulate.stability import curvature as C
from simulate.stability import optimizer_edges as E

DT = torch.float64
SMALL = dict(model="mlp", k=2, d=4, per_class=8, batch_size=8, hidden=6, depth=2, out_dim=3,
             label_fraction=0.5, temperature=0.4)


def small_run(loss="ntxent", clop=0.0, projector="", batch_norm=False, **kw):
    return RunConfig(**{**SMALL, "loss": loss, "clop_weight": clop, "projector_dims": projector,
                        "batch_norm": batch_norm, **kw})


# ----------------------------------------------------------------------------- reference
def ref_layers(theta, run):
    """Split ``theta`` into the layers' (weight (in, out), bias (out,)) pairs of the encoder
    and of the projector, in the documented order."""
    widths = [[run.d] + [run.hidden] * (run.depth - 1) + [run.out_dim]]
    if run.projector_widths:
        widths.append([run.out_dim, *run.projector_widths])
    groups, at = [], 0
    for w in widths:
        shapes = list(zip(w[:-1], w[1:])) + [(1, o) for o in w[1:]]  # weights, then biases
        sizes = [i * o for i, o in shapes]
        parts = [t.view(sh) for t, sh in zip(theta[at:at + sum(sizes)].split(sizes), shapes)]
        at += sum(sizes)
        groups.append(list(zip(parts[:len(w) - 1], parts[len(w) - 1:])))
    assert at == theta.numel()
    return groups


def ref_forward(groups, x, batch_norm):
    h = x
    for layers in groups:
        for i, (w, b) in enumerate(layers):
            h = h @ w + b
            if i < len(layers) - 1:
                if batch_norm:
                    h = (h - h.mean(0)) / torch.sqrt(h.var(0, unbiased=False) + 1e-5)
                h = torch.relu(h)
    return h


def ref_ntxent(z, tau):
    n = z.shape[0]
    u = z / z.norm(dim=-1, keepdim=True)
    s = (u @ u.T / tau).masked_fill(torch.eye(n, dtype=torch.bool), -math.inf)
    partner = (torch.arange(n) + n // 2) % n
    return (torch.logsumexp(s, 1) - s[torch.arange(n), partner]).mean()


def ref_clop(z, labels, protos):
    lab = labels >= 0
    u = z / z.norm(dim=-1, keepdim=True)
    p = protos[labels.clamp(min=0)]
    b = labels.shape[0]
    d = (2 - (u[:b] * p).sum(-1) - (u[b:] * p).sum(-1)) / 2
    return (d * lab).sum() / lab.sum()


def ref_objective(obj):
    run = obj.run
    labels, v1, v2 = obj.batch
    labels = labels[0]
    b = labels.shape[0]
    base = (BASE_LOSSES[run.loss](run.temperature) if run.loss in TEMPERATURE_LOSSES
            else BASE_LOSSES[run.loss]())

    def f(theta):
        groups = ref_layers(theta, run)
        z = torch.cat([ref_forward(groups, v[0], run.batch_norm) for v in (v1, v2)])
        ntxent = run.loss == "ntxent"
        loss = ref_ntxent(z, run.temperature) if ntxent else base(z[:b], z[b:], labels)
        if run.clop_weight > 0:
            loss = loss + run.clop_weight * ref_clop(z, labels, obj.state.prototypes)
        return loss

    return f


# ----------------------------------------------------------------------------- curvature
@pytest.mark.parametrize("loss", sorted(BASE_LOSSES))
@pytest.mark.parametrize("clop", [0.0, 0.7])
@pytest.mark.parametrize("projector,batch_norm", [("", False), ("5,3", True)])
def test_hvp_and_top_eigenvalues_equal_the_dense_hessian(loss, clop, projector, batch_norm):
    obj = C.make_objective(small_run(loss, clop, projector, batch_norm))
    theta = obj.theta0
    f = ref_objective(obj)
    t = theta.clone().requires_grad_(True)
    # the engine's value and gradient, the twice-differentiable objective's, and the reference's
    ref_g = torch.autograd.grad(f(t), t)[0]
    torch.testing.assert_close(obj.engine_value(theta), f(theta), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(obj(theta), f(theta), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(obj.gradient(theta), ref_g, rtol=1e-10, atol=1e-13)
    H = torch.autograd.functional.hessian(f, theta)
    gen = torch.Generator().manual_seed(1)
    for _ in range(2):
        v = torch.randn(obj.size, generator=gen, dtype=DT)
        for hv in (obj.hvp(theta, v), obj.hvp_operator(theta)(v)):
            assert float((hv - H @ v).norm() / (H @ v).norm()) < 1e-8
    dense = np.linalg.eigvalsh(H.numpy())[::-1]
    top = C.hessian_top(obj, k=2, tol=1e-10)
    assert top.converged and top.hvps <= obj.size
    np.testing.assert_allclose(top.values, dense[:2], rtol=1e-6)
    assert dense[-1] < 0 or loss in ("vicreg", "barlow")  # indefinite (contrastive losses)


def test_lanczos_returns_the_largest_algebraic_eigenvalue():
    """A spectrum whose largest magnitude is negative: Lanczos returns the largest algebraic."""
    gen = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(40, 40, generator=gen, dtype=DT))
    vals = torch.linspace(-10.0, 3.0, 40, dtype=DT)
    a = q @ torch.diag(vals) @ q.T
    top = C.lanczos_top(lambda v: a @ v, 40, k=3, tol=1e-10)
    np.testing.assert_allclose(top.values, vals.flip(0)[:3].numpy(), rtol=1e-9)
    for val, vec in zip(top.values, top.vectors):
        torch.testing.assert_close(a @ vec, val * vec, atol=1e-7, rtol=0)
    again = C.lanczos_top(lambda v: a @ v, 40, k=3, tol=1e-10)
    assert again.hvps == top.hvps and np.array_equal(again.values, top.values)  # seeded
    capped = C.lanczos_top(lambda v: a @ v, 40, k=1, tol=1e-12, max_iter=3)
    assert capped.hvps == 3 and not capped.converged


@pytest.mark.parametrize("lars_biases", ["sgd", "lars"])
def test_layer_blocks_and_the_lars_linearisation_equal_the_dense_hessian(lars_biases):
    run = small_run("ntxent", 0.5, "5,3", optimizer="lars", weight_decay=0.01, lars_trust=0.02,
                    lr=3.0, lars_biases=lars_biases)
    obj = C.make_objective(run)
    theta = obj.theta0
    H = torch.autograd.functional.hessian(ref_objective(obj), theta)
    g = obj.gradient(theta)
    layers = C.layer_curvature(obj, tol=1e-10)
    assert [layer.name for layer in layers] == list(obj.names)
    scale, mask = torch.zeros_like(theta), torch.zeros_like(theta)
    gen = torch.Generator().manual_seed(3)
    for layer in layers:
        s = obj.slices[layer.name]
        block = H[s, s]
        v = torch.randn(s.stop - s.start, generator=gen, dtype=DT)
        torch.testing.assert_close(obj.block_hvp(theta, layer.name, v), block @ v,
                                   rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(layer.lam, np.linalg.eigvalsh(block.numpy())[-1], rtol=1e-6)
        assert layer.adapted == ("bias" not in layer.name or lars_biases == "lars")
        ratio = lars_ratio(theta[s].norm(), g[s].norm(), run.lars_trust, run.weight_decay,
                           run.eps)[0]
        assert layer.ratio == pytest.approx(float(ratio) if layer.adapted else 1.0, rel=1e-12)
        assert layer.effective_lr == pytest.approx(run.lr * layer.ratio, rel=1e-12)
        scale[s], mask[s] = math.sqrt(layer.ratio), float(layer.adapted)
    frozen = scale[:, None] * (H + run.weight_decay * torch.diag(mask)) * scale[None, :]
    whole = C.lars_top(obj, layers, tol=1e-10)
    np.testing.assert_allclose(whole.top, np.linalg.eigvalsh(frozen.numpy())[-1], rtol=1e-6)
    edges = E.lars_edges([x.lam for x in layers], [x.ratio for x in layers],
                         [x.adapted for x in layers], weight_decay=run.weight_decay)
    assert edges.min() >= 2 / whole.top * (1 - 1e-9)  # the blocks bound the frozen map's edge


@pytest.mark.parametrize("nesterov", [False, True])
def test_sharpness_trajectory_follows_the_literal_optimizer(nesterov):
    run = small_run("supcon", 0.5, momentum=0.8, nesterov=nesterov, weight_decay=0.05, lr=0.3)
    traj = C.sharpness_trajectory(run, steps=2, every=1, stream=True)
    assert [s for s, _ in traj] == [0, 1, 2]
    obj = C.make_objective(run)
    mu, wd, lr = run.momentum, run.weight_decay, run.lr
    th0 = obj.theta0
    d1 = obj.gradient(th0) + wd * th0  # torch.optim.SGD: b = d at the first update
    th1 = th0 - lr * (d1 + mu * d1 if nesterov else d1)
    d2 = obj.gradient(th1, obj.draw()) + wd * th1
    b2 = mu * d1 + d2
    th2 = th1 - lr * (d2 + mu * b2 if nesterov else b2)
    for (_, lam), th in zip(traj, (th0, th1, th2)):
        assert lam == pytest.approx(C.hessian_top(obj, th).top, rel=1e-9)
    fixed = C.sharpness_trajectory(run, steps=3, every=2)
    assert [s for s, _ in fixed] == [0, 2, 3] and fixed[0][1] == traj[0][1]


def test_sharpness_trajectory_stops_at_a_nonfinite_update():
    traj = C.sharpness_trajectory(small_run("vicreg", lr=1e200), steps=5, every=1)
    assert traj[-1][0] == 1 and math.isnan(traj[-1][1]) and len(traj) == 2


# ----------------------------------------------------------------------------- edges
def sgd_jacobian(a, lr, momentum, nesterov, wd):
    """Jacobian of torch.optim.SGD's update (x, b) -> (x', b') on f = x^T a x / 2 (a linear
    map: its columns are the images of the unit vectors)."""
    n = a.shape[0]

    def step(x, b):
        p = torch.nn.Parameter(x.clone())
        opt = torch.optim.SGD([p], lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=wd)
        if momentum:
            opt.state[p]["momentum_buffer"] = b.clone()
        (0.5 * p @ a @ p).backward()
        opt.step()
        return torch.cat([p.detach(), opt.state[p]["momentum_buffer"] if momentum else 0 * b])

    eye = torch.eye(2 * n, dtype=DT)
    return torch.stack([step(e[:n], e[n:]) for e in eye], 1)


def radius(m) -> float:
    return float(np.abs(np.linalg.eigvals(np.asarray(m))).max())


def spd(n, seed, lo=0.3, hi=2.5):
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=DT))
    vals = torch.linspace(lo, hi, n, dtype=DT)
    return q @ torch.diag(vals) @ q.T, float(vals.max())


RULES = [(0.0, False, 0.0), (0.9, False, 0.0), (0.9, True, 0.0), (0.5, True, 0.2),
         (0.3, False, 0.4), (0.0, False, 0.1)]


@pytest.mark.parametrize("momentum,nesterov,wd", RULES)
def test_sgd_edge_brackets_torch_sgd(momentum, nesterov, wd):
    a, lam = spd(3, 0)
    edge = E.sgd_edge(lam, momentum, nesterov, wd)
    mu = momentum
    expected = (2 * (1 + mu) / (1 + 2 * mu) if nesterov else 2 * (1 + mu)) / (lam + wd)
    assert edge == pytest.approx(expected, rel=1e-15)
    assert radius(sgd_jacobian(a, 0.99 * edge, momentum, nesterov, wd)) < 1
    assert radius(sgd_jacobian(a, 1.01 * edge, momentum, nesterov, wd)) > 1
    one = sgd_jacobian(torch.tensor([[lam]], dtype=DT), 0.7, momentum, nesterov, wd).numpy()
    m = E.sgd_step_matrix(0.7, lam, momentum, nesterov, wd)
    np.testing.assert_allclose(one if momentum else one[:1, :1], m if momentum else m[:1, :1],
                               rtol=1e-14, atol=1e-15)


def test_sgd_edge_of_non_positive_curvature_and_arrays():
    assert E.sgd_edge(-1.0) == math.inf and E.sgd_edge(0.0, 0.9) == math.inf
    np.testing.assert_allclose(E.sgd_edge(np.array([1.0, 4.0, -2.0])), [2.0, 0.5, np.inf])
    assert E.momentum_edge(0.0, True) == 2.0


def lars_setup(momentum, nesterov, wd, trust, lr):
    run = RunConfig(model="free", k=2, d=3, per_class=4, batch_size=2, optimizer="lars",
                    momentum=momentum, nesterov=nesterov, weight_decay=wd, lars_trust=trust, lr=lr)
    state = build_state([run], torch.device("cpu"), DT)
    p = torch.nn.Parameter(torch.zeros(1, 3, dtype=DT))
    return StackedOptimizer(state, [("weight", p)]), p


def lars_step(opt, p, a, x, b, t):
    """The engine's LARS update ``t`` of one layer from (x, b) on f = x^T a x / 2."""
    with torch.no_grad():
        p.copy_(x[None])
    if opt.state.use_momentum:
        opt.bufs[0] = b[None].clone()
    opt.step([(a @ x)[None]], torch.ones(1, dtype=torch.bool), t)
    return p.detach()[0].clone(), (opt.bufs[0][0].clone() if opt.state.use_momentum else 0 * b)


@pytest.mark.parametrize("momentum,nesterov,wd", RULES)
def test_lars_frozen_ratio_edge_brackets_the_engine_rule(momentum, nesterov, wd):
    a, lam = spd(3, 1)
    trust, eps = 0.05, RunConfig.eps
    gen = torch.Generator().manual_seed(2)
    x0, b0 = torch.randn(3, generator=gen, dtype=DT), torch.randn(3, generator=gen, dtype=DT)
    ratio = float(lars_ratio(x0.norm(), (a @ x0).norm(), trust, wd, eps)[0])
    edge = float(E.lars_edges([lam], [ratio], None, momentum, nesterov, wd)[0])
    curv = ratio * (a + wd * torch.eye(3, dtype=DT))  # the frozen map: SGD on this curvature
    frozen = lambda lr: sgd_jacobian(curv, lr, momentum, nesterov, 0.0)  # noqa: E731
    opt, p = lars_setup(momentum, nesterov, wd, trust, 0.8 * edge)
    x1, b1 = lars_step(opt, p, a, x0, b0, t=2)  # the engine's step at the point = the frozen map's
    state = torch.cat([x0, b0 if momentum else 0 * b0])
    np.testing.assert_allclose(torch.cat([x1, b1]).numpy(), (frozen(0.8 * edge) @ state).numpy(),
                               rtol=1e-12, atol=1e-14)
    assert radius(frozen(0.99 * edge)) < 1 < radius(frozen(1.01 * edge))


@pytest.mark.parametrize("momentum,nesterov,wd", RULES)
def test_lars_edge_along_an_eigenvector_is_exact_for_the_engine_rule(momentum, nesterov, wd):
    """Along an eigenvector g = lam w, so the ratio stays frozen: the engine's own LARS
    iterates shrink at 0.99 x the edge and grow at 1.01 x."""
    a, lam = spd(3, 3)
    x0 = torch.linalg.eigh(a).eigenvectors[:, -1]
    trust = 0.05
    ratio = float(lars_ratio(x0.norm(), (a @ x0).norm(), trust, wd, RunConfig.eps)[0])
    edge = float(E.lars_edges([lam], [ratio], None, momentum, nesterov, wd)[0])
    assert edge == pytest.approx(E.momentum_edge(momentum, nesterov) / trust, rel=1e-6)
    for factor, grows in ((0.99, False), (1.01, True)):
        opt, p = lars_setup(momentum, nesterov, wd, trust, factor * edge)
        x, b = x0.clone(), torch.zeros(3, dtype=DT)
        for t in range(1, 401):
            x, b = lars_step(opt, p, a, x, b, t)
        assert (float(x.norm()) > 1) == grows


# ----------------------------------------------------------------------------- errors
FREE = dict(model="free", k=2, d=3, per_class=4, batch_size=2)
ERRORS = [  # (function, args, kwargs, message)
    (C.make_objective, (RunConfig(**FREE),), {}, "run.model must be 'mlp'"),
    (C.make_objective, ({"model": "mlp"},), {}, "run must be a simulate.config.RunConfig"),
    (C.make_objective, (small_run(),), dict(lr=0.0), r"lr must be a finite number > 0"),
    (C.sharpness_trajectory, (small_run(), -1), {}, "steps must be an integer >= 0"),
    (C.sharpness_trajectory, (small_run(), 2), dict(every=0), "every must be an integer >= 1"),
    (E.sgd_edge, (1.0,), dict(momentum=1.0), r"momentum must be a finite number in \[0, 1\)"),
    (E.sgd_edge, (1.0,), dict(weight_decay=-0.1), "weight_decay must be a finite number >= 0"),
    (E.momentum_edge, (0.5,), dict(nesterov="yes"), "nesterov must be True or False"),
    (E.sgd_edge, (math.nan,), {}, "lam must be finite numbers"),
    (E.lars_edges, ([1.0, 2.0], [1.0]), {}, r"ratios must be numbers > 0, one per layer \(2\)"),
    (E.lars_edges, ([1.0, 2.0], [1.0, 1.0], [True]), {}, r"adapted must hold one flag per layer"),
    (C.hessian_top, (), dict(k=0), r"k must be an integer >= 1"),
    (C.hessian_top, (), dict(k=60), r"k must be in \[1, 51\]"),
    (C.hessian_top, (), dict(tol=0.0), r"tol must be a number in \(0, 1\)"),
    (C.hessian_top, (), dict(max_iter=0), "max_iter must be an integer >= 1"),
    (C.hessian_top, (), dict(k=3, max_iter=2), r"k must be in \[1, 2\]"),
    (C.layer_curvature, (), dict(lr=-1.0), r"lr must be a finite number > 0"),
    (C.hessian_top, (), dict(seed=1.5), "seed must be an integer"),
]


def test_errors_name_the_parameter_and_the_range():
    obj = C.make_objective(small_run())
    for fn, args, kwargs, match in ERRORS:
        with pytest.raises(ValueError, match=match):
            fn(*((obj,) if fn in (C.hessian_top, C.layer_curvature) else args), **kwargs)
    with pytest.raises(ValueError, match=r"theta must have shape \(51,\)"):
        obj.unflatten(torch.zeros(3, dtype=DT))

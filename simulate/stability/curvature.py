"""Curvature of the real training loss of MLP encoders in parameter space (float64).

:func:`make_objective` gives one run's objective ``L(theta)`` of its flattened parameters on
a fixed minibatch (the engine's first): the engine's float64 state (:func:`build_state`), the
model's own forward (one call per view, so batch norm keeps each view's statistics) and the
engine's loss module and CLOP term (:func:`simulate.engine.objective.objective`). ``theta``
is the parameters in the order of ``model.named_parameters()`` (encoder weights, encoder
biases, then the projector's), each flattened with its leading run dimension of 1.

Hessian-vector products ``H v = d/de grad L(theta + e v)`` are forward-over-reverse
(``torch.func.jvp`` of ``torch.func.grad``, :meth:`Objective.hvp`) or, for the many products
Lanczos takes at one point, reverse-over-reverse through a gradient graph built once
(:meth:`Objective.hvp_operator`); the Hessian is never formed. The engine's NT-Xent
(``_NTXentGram``) and cosine CLOP (``_CosineCLOP``) are custom autograd Functions with a
hand-written first derivative: torch.func refuses them (no ``setup_context``), and autograd's
double backward would be silently wrong (their backward reads intermediates saved without a
graph, so the loss's own curvature would be dropped). So ``L`` takes them as plain tensor
code of the same formulas: NT-Xent as :func:`simulate.losses.supcon` without labels (equal:
SupCon's only positive is then the other view), the cosine CLOP as
:func:`simulate.stability.step.cosine_clop`. :meth:`Objective.engine_value` and
:meth:`Objective.gradient` use the engine's pieces themselves (the tests check both agree).

The Hessian of a contrastive loss is indefinite. Gradient descent loses stability along the
largest ALGEBRAIC eigenvalue ``lambda_max`` (lr lambda_max = 2,
:mod:`simulate.stability.optimizer_edges`); a negative eigenvalue of large magnitude is a
saddle that grows at every rate and sets no edge. :func:`lanczos_top` returns the largest
algebraic eigenvalues (power iteration would return the largest magnitude).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch.func import functional_call, grad, jvp

from ..config import RunConfig
from ..engine.objective import base_loss_fn, objective
from ..engine.optimizers import StackedOptimizer, lars_adapts, lars_ratio
from ..engine.state import build_state, draw_batch
from ..losses import supcon
from ..losses.clop import clop_rows
from .step import DT, cosine_clop


def _check_run(run) -> RunConfig:
    if not isinstance(run, RunConfig):
        raise ValueError(f"run must be a simulate.config.RunConfig, got {type(run).__name__}")
    if run.model != "mlp":
        raise ValueError(f"run.model must be 'mlp' (the curvature acts on an MLP encoder's "
                         f"parameters), got {run.model!r}")
    return run


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


class Objective:
    """One MLP run's objective on flattened float64 parameters (see the module docstring):
    ``run``, ``state`` (the engine's float64 state of the run alone), ``loss_fn``; the
    parameters' ``names``, ``shapes`` (leading run dimension 1) and ``slices`` of ``theta``;
    ``theta0`` the initial parameters; ``batch`` the engine's first ``(labels, v1, v2)``."""

    def __init__(self, run: RunConfig, device="cpu"):
        self.run = _check_run(run)
        self.state = build_state([run], torch.device(device), DT)
        self.loss_fn = base_loss_fn(run)
        named = list(self.state.model.named_parameters())
        self.names = tuple(n for n, _ in named)
        self.shapes = tuple(p.shape for _, p in named)
        ends = np.cumsum([0] + [p.numel() for _, p in named])
        self.slices = {n: slice(int(a), int(b)) for n, a, b in zip(self.names, ends[:-1], ends[1:])}
        self.theta0 = self.theta()
        self.batch = self.draw()

    size = property(lambda self: self.theta0.numel(), doc="the number of parameters")

    def draw(self):
        """The engine's next minibatch ``(labels, v1, v2)`` of this run's stream."""
        _, labels, v1, v2 = draw_batch(self.state)
        return labels, v1, v2

    def theta(self) -> torch.Tensor:
        """The model's current parameters, flattened (a copy)."""
        return torch.cat([p.detach().reshape(-1) for p in self.state.model.parameters()]).clone()

    def unflatten(self, theta: torch.Tensor) -> dict:
        """``theta`` as ``{name: tensor}`` in the model's layout (views of ``theta``)."""
        if theta.shape != self.theta0.shape:
            raise ValueError(f"theta must have shape {tuple(self.theta0.shape)}, "
                             f"got {tuple(theta.shape)}")
        return {n: theta[self.slices[n]].view(s) for n, s in zip(self.names, self.shapes)}

    def embed(self, theta, batch=None) -> torch.Tensor:
        """The rows ``z = [z1; z2]`` (1, 2B, D): the model at ``theta``, one call per view."""
        _, v1, v2 = self.batch if batch is None else batch
        p = self.unflatten(theta)
        return torch.cat([functional_call(self.state.model, p, (None, v)) for v in (v1, v2)], 1)

    def __call__(self, theta, batch=None) -> torch.Tensor:
        """``L(theta)`` (a scalar), twice differentiable (plain-tensor NT-Xent and cosine CLOP)."""
        labels = (self.batch if batch is None else batch)[0]
        z, run, b = self.embed(theta, batch), self.run, labels.shape[1]
        norm = run.update_mode != "sphere_raw"
        if run.loss == "ntxent":
            loss = supcon(z[:, :b], z[:, b:], None, run.temperature, norm)[0]
        else:
            loss = self.loss_fn(z[:, :b], z[:, b:], labels, norm)[0]
        if self.state.prototypes is not None:
            protos = self.state.prototypes
            term = (cosine_clop(z[0], labels[0], protos) if run.distance == "cosine"
                    else clop_rows(z, labels, protos, run.distance)[0])
            loss = loss + self.state.clop_weight[0] * term
        return loss

    def engine_value(self, theta, batch=None) -> torch.Tensor:
        """``L(theta)`` by :func:`simulate.engine.objective.objective` itself (first order only)."""
        labels = (self.batch if batch is None else batch)[0]
        return objective(self.state, self.loss_fn, self.embed(theta, batch), labels)[0]

    def gradient(self, theta, batch=None) -> torch.Tensor:
        """``grad L(theta)`` through the engine's objective (what the engine steps along)."""
        t = theta.detach().clone().requires_grad_(True)
        return torch.autograd.grad(self.engine_value(t, batch), t)[0]

    def hvp(self, theta, v, batch=None) -> torch.Tensor:
        """``H(theta) v`` (forward-over-reverse: ``jvp`` of ``grad``)."""
        return jvp(grad(lambda t: self(t, batch)), (theta.detach(),), (v,))[1]

    def hvp_operator(self, theta, batch=None):
        """``v -> H(theta) v`` for many ``v`` at one point (what Lanczos needs): the gradient's
        graph is built once (``create_graph``), then every product is one reverse pass
        through it (double backward, as PyHessian does); the same values as :meth:`hvp`."""
        t = theta.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            (g,) = torch.autograd.grad(self(t, batch), t, create_graph=True)

        def matvec(v):
            with torch.enable_grad():
                return torch.autograd.grad(g, t, grad_outputs=v, retain_graph=True)[0].detach()

        return matvec

    def block_hvp(self, theta, name: str, v, batch=None) -> torch.Tensor:
        """``H_ll v``: the diagonal block of parameter ``name`` applied to ``v`` (its size)."""
        s = self.slices[name]
        theta = theta.detach()
        f = lambda w: self(torch.cat([theta[:s.start], w, theta[s.stop:]]), batch)  # noqa: E731
        return jvp(grad(f), (theta[s],), (v,))[1]


def make_objective(run: RunConfig, lr: float | None = None, device="cpu") -> Objective:
    """The :class:`Objective` of ``run`` (an MLP run; ``lr`` overrides its learning rate)."""
    run = _check_run(run)
    return Objective(run if lr is None else replace(run, lr=_check_lr(lr)), device)


def _check_lr(lr) -> float:
    if isinstance(lr, bool) or not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
    return float(lr)


@dataclass
class TopEigen:
    """Largest algebraic eigenvalues ``values`` (descending), their Ritz vectors (k, n), the
    residual bounds ``|H y - theta y|``, the operator applications used (``hvps``) and
    whether every residual met the tolerance (or the Krylov space was exhausted: exact)."""

    values: np.ndarray
    vectors: torch.Tensor
    residuals: np.ndarray
    hvps: int
    converged: bool

    @property
    def top(self) -> float:
        return float(self.values[0])


def _check_eig_args(n, k, tol, max_iter, seed):
    for name, value in (("n", n), ("k", k), ("max_iter", max_iter)):
        _positive_int(name, value)
    if k > min(n, max_iter):
        raise ValueError(f"k must be in [1, {min(n, max_iter)}] (the operator's size {n} and "
                         f"max_iter {max_iter}), got {k}")
    if isinstance(tol, bool) or not (isinstance(tol, (int, float)) and 0 < tol < 1):
        raise ValueError(f"tol must be a number in (0, 1), got {tol!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"seed must be an integer, got {seed!r}")


def lanczos_top(matvec, n: int, k: int = 1, tol: float = 1e-6, max_iter: int = 300,
                seed: int = 0, dtype=DT, device="cpu") -> TopEigen:
    """The ``k`` largest algebraic eigenvalues of a symmetric operator ``matvec`` on R^n.

    Lanczos from a seeded Gaussian start, fully reorthogonalised (classical Gram-Schmidt,
    twice). The Ritz pair ``(theta, S e_i)`` of the tridiagonal ``T_m`` has residual
    ``|beta_m S_{m,i}|``, a bound on its eigenvalue error. Stops when the top ``k`` residuals
    are at most ``tol`` times the largest Ritz magnitude (an estimate of ``|H|``), when
    ``beta_m`` vanishes (an invariant subspace: exact), or after ``max_iter`` (or ``n``)
    steps. One start vector finds one copy of a repeated eigenvalue.
    """
    _check_eig_args(n, k, tol, max_iter, seed)
    m_cap = min(max_iter, n)
    gen = torch.Generator().manual_seed(int(seed))
    q = torch.randn(n, generator=gen, dtype=dtype).to(device)
    basis = torch.zeros(m_cap, n, dtype=dtype, device=device)
    basis[0] = q / q.norm()
    alpha, beta = [], []
    for j in range(m_cap):
        w = matvec(basis[j])
        if not bool(torch.isfinite(w).all()):  # a non-finite operator (a diverged point)
            nan = np.full(k, math.nan)
            return TopEigen(nan, torch.full((k, n), math.nan, dtype=dtype), nan, j + 1, False)
        alpha.append(float(w @ basis[j]))
        for _ in range(2):
            w = w - basis[: j + 1].T @ (basis[: j + 1] @ w)
        b = float(w.norm())
        t = np.diag(alpha) + np.diag(beta, 1) + np.diag(beta, -1)
        vals, vecs = np.linalg.eigh(t)
        top = min(k, j + 1)
        res = np.abs(b * vecs[-1, ::-1][:top])
        scale = max(float(np.abs(vals).max()), np.finfo(float).tiny)
        exhausted = b <= 1e-12 * scale or j + 1 == n
        if exhausted or (j + 1 >= k and bool((res <= tol * scale).all())) or j + 1 == m_cap:
            break
        beta.append(b)
        basis[j + 1] = w / b
    ritz = torch.as_tensor(vecs[:, ::-1][:, :top].copy(), dtype=dtype, device=device)
    converged = exhausted or bool((res <= tol * scale).all() and top == k)
    return TopEigen(vals[::-1][:top].copy(), (basis[: j + 1].T @ ritz).T, res, j + 1, converged)


def hessian_top(obj: Objective, theta=None, k: int = 1, tol: float = 1e-6, max_iter: int = 300,
                seed: int = 0, batch=None) -> TopEigen:
    """The ``k`` largest algebraic eigenvalues of the Hessian of ``obj`` at ``theta`` (None:
    the initial parameters) on its fixed minibatch (or ``batch``), by :func:`lanczos_top`."""
    theta = obj.theta0 if theta is None else theta.detach()
    return lanczos_top(obj.hvp_operator(theta, batch), obj.size, k, tol, max_iter, seed,
                       theta.dtype, theta.device)


def sharpness_trajectory(run: RunConfig, steps: int, every: int = 5, lr: float | None = None,
                         stream: bool = False, tol: float = 1e-6, max_iter: int = 300,
                         seed: int = 0, device="cpu") -> list[tuple[int, float]]:
    """``lambda_max`` of the Hessian at initialisation and every ``every`` updates of the
    first ``steps`` updates (and after the last), as ``[(step, lambda_max), ...]``.

    The updates are the engine's own (:class:`StackedOptimizer` with the run's optimizer:
    SGD with its momentum, Nesterov and weight decay, LARS, Adam; the schedule's rate) in
    float64 on the engine's gradient, on the first minibatch every time (``stream`` False) or
    on the engine's stream of minibatches (as training does). The curvature is always taken
    on the first minibatch, so the values are comparable. A non-finite update or curvature
    ends the list with ``(step, nan)``.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be an integer >= 0, got {steps!r}")
    every = _positive_int("every", every)
    obj = make_objective(run, lr, device)
    opt = StackedOptimizer(obj.state, list(obj.state.model.named_parameters()))
    alive = torch.ones(1, dtype=torch.bool, device=obj.theta0.device)
    top = lambda: hessian_top(obj, obj.theta(), 1, tol, max_iter, seed).top  # noqa: E731
    out = [(0, top())]
    for t in range(1, steps + 1):
        batch = obj.batch if (t == 1 or not stream) else obj.draw()
        g = obj.unflatten(obj.gradient(obj.theta(), batch))
        if not bool(opt.step([g[n] for n in obj.names], alive, t)[0]):
            return out + [(t, math.nan)]
        if t % every == 0 or t == steps:
            out.append((t, top()))
            if math.isnan(out[-1][1]):
                break
    return out


@dataclass
class LayerCurvature:
    """One parameter tensor at a point: ``lam`` the top algebraic eigenvalue of its diagonal
    Hessian block (``hvps`` used), ``adapted`` whether LARS scales it (those
    :func:`~simulate.engine.optimizers.lars_adapts` names, with ``|w|`` and ``|g|`` > 0; by
    default not the biases), ``|w|``, ``|g|``, LARS's ``ratio`` (1 when not adapted)
    and ``effective_lr = lr * ratio``, which takes lr's place in that layer's update."""

    name: str
    adapted: bool
    lam: float
    hvps: int
    w_norm: float
    g_norm: float
    ratio: float
    effective_lr: float


def layer_curvature(obj: Objective, theta=None, lr: float | None = None, tol: float = 1e-6,
                    max_iter: int = 300, seed: int = 0, batch=None) -> list[LayerCurvature]:
    """Per-layer curvature and LARS's effective rate at ``theta`` (None: the initial point).

    LARS steps a weight ``w`` of layer l by ``lr r_l (g + wd w)``, ``r_l = trust |w| / (|g| +
    wd |w| + eps)`` (:func:`lars_ratio`), and biases by ``lr g`` (unless the run's ``lars_biases``
    is ``lars``: :func:`lars_adapts`). With ``r_l`` frozen (a
    linearisation), the effective rate ``lr r_l`` takes lr's place in layer l, so its edge is
    ``lr r_l (lam_l + wd) = 2`` (or the momentum form; :mod:`.optimizer_edges`): under LARS
    ``r_l lam_l`` meets the edge, not the whole Hessian's ``lam_max``. The blocks ignore the
    layers' coupling: :func:`lars_top` is the whole frozen map, at least every block's value.
    """
    theta = obj.theta0 if theta is None else theta.detach()
    lr = obj.run.lr if lr is None else _check_lr(lr)
    g = obj.gradient(theta, batch)
    out = []
    for name in obj.names:
        sl = obj.slices[name]
        n = sl.stop - sl.start
        top = lanczos_top(lambda v: obj.block_hvp(theta, name, v, batch), n, 1, tol, max_iter,
                          seed, theta.dtype, theta.device)
        out.append(lars_layer(obj, name, theta, g, lr, top.top, top.hvps))
    return out


def lars_layer(obj: Objective, name: str, theta, g, lr: float, lam: float = math.nan,
               hvps: int = 0) -> LayerCurvature:
    """Parameter ``name``'s :class:`LayerCurvature` at ``theta`` with gradient ``g``: LARS's
    ratio and whether it adapts the parameter (:func:`lars_adapts`, with ``|w|``, ``|g|`` > 0),
    and the block's top eigenvalue ``lam`` when it was computed."""
    sl, s = obj.slices[name], obj.state
    w_norm, g_norm = theta[sl].norm(), g[sl].norm()
    ratio, use = lars_ratio(w_norm, g_norm, s.lars_trust[0], s.weight_decay[0], s.eps[0])
    adapted = lars_adapts(name, obj.run) and bool(use)
    ratio = float(ratio) if adapted else 1.0
    return LayerCurvature(name, adapted, lam, hvps, float(w_norm), float(g_norm), ratio, lr * ratio)


def lars_top(obj: Objective, layers: list[LayerCurvature], theta=None, tol: float = 1e-6,
             max_iter: int = 300, seed: int = 0, batch=None) -> TopEigen:
    """Top algebraic eigenvalue of LARS's frozen linearisation ``P (H + wd M)`` (``P`` each
    parameter's ratio, ``M`` the mask of adapted parameters, which alone get weight decay), as
    the similar symmetric ``P^1/2 (H + wd M) P^1/2``; its edge is ``lr * value = 2`` (or the
    momentum form). ``layers`` from :func:`layer_curvature` at the same point."""
    theta = obj.theta0 if theta is None else theta.detach()
    scale = torch.zeros_like(theta)
    mask = torch.zeros_like(theta)
    for layer in layers:
        scale[obj.slices[layer.name]] = math.sqrt(layer.ratio)
        mask[obj.slices[layer.name]] = float(layer.adapted)
    wd = float(obj.state.weight_decay[0])
    hvp = obj.hvp_operator(theta, batch)
    op = lambda v: scale * (hvp(scale * v) + wd * mask * scale * v)  # noqa: E731
    return lanczos_top(op, obj.size, 1, tol, max_iter, seed, theta.dtype, theta.device)

"""The gradient of an MLP encoder's objective without autograd's graph: one forward over both
views, the loss's gradient with respect to the embeddings, then the layers' backward by hand.

The encoder (and projector) of :class:`simulate.models.StackedMLP` is a chain of linear
layers ``a_l = h_l W_l + b_l`` (batched over runs, ``W_l`` (R, in, out)), with ``h_{l+1} =
relu(bn(a_l))`` between layers (``bn`` only with batch norm) and no activation after the
encoder's last layer or the projector's last layer. With ``g_l = dL/da_l`` (R, 2B, out):

    dL/dW_l = h_l^T g_l        dL/db_l = sum over rows of g_l
    dL/dh_l = g_l W_l^T        g_{l-1} = bn'(relu'(dL/dh_l))

``relu'`` keeps the rows where the activation is positive; batch norm without affine
parameters (``y = (a - mean) / sqrt(var + eps)``, statistics per run, per view, over the B
rows) carries ``dy`` back as ``(dy - mean(dy) - y mean(dy y)) / sqrt(var + eps)``.

Both views go through the layers as one block of 2B rows (``[v1; v2]``, the losses' layout),
so every layer is one batched matmul forward and two backward; batch norm keeps the
statistics of each view apart, as two calls of the model do. ``dL/dz`` comes from the fused
NT-Xent + cosine CLOP pass (:func:`simulate.engine.fused.ntxent_clop_value_and_grad`) when
the chunk takes it, else from autograd on the loss alone (the graph of the loss, not of the
network). The optimizer then takes these gradients as it takes autograd's
(:class:`simulate.engine.optimizers.StackedOptimizer`). ``tests/test_mlp_step.py`` compares
them with float64 autograd through the model for every loss, with and without CLOP, batch
norm and a projector.
"""

from __future__ import annotations

import torch

from ..losses.clop import prototype_targets
from ..models import BATCH_NORM_EPS, StackedMLP
from .fused import ntxent_clop_value_and_grad
from .objective import objective
from .state import ChunkState


def supported(state: ChunkState) -> bool:
    """Whether the chunk's model is a :class:`StackedMLP` (the hand-written backward)."""
    return isinstance(state.model, StackedMLP)


def _layers(model: StackedMLP):
    """``(weight, bias, activated)`` of every linear layer in order: encoder, then projector;
    ``activated``: ReLU (after batch norm, if any) follows the layer."""
    out = []
    groups = [(model.weights, model.biases)]
    if model.has_projector:
        groups.append((model.proj_weights, model.proj_biases))
    for weights, biases in groups:
        last = len(weights) - 1
        out += [(w, b, i < last) for i, (w, b) in enumerate(zip(weights, biases))]
    return out


def _batch_norm(a: torch.Tensor):
    """``(y, inv_std)``: batch norm of ``a`` (R, 2B, n) per view (two blocks of B rows)."""
    R, n2, width = a.shape
    a4 = a.view(R, 2, n2 // 2, width)
    var, mean = torch.var_mean(a4, 2, unbiased=False, keepdim=True)
    inv = var.add_(BATCH_NORM_EPS).rsqrt_()
    return (a4 - mean).mul_(inv).view(R, n2, width), inv


def _batch_norm_back(dy: torch.Tensor, y: torch.Tensor, inv: torch.Tensor) -> torch.Tensor:
    """``dL/da`` from ``dL/dy`` for ``y`` = batch norm of ``a`` (see the module docstring)."""
    R, n2, width = dy.shape
    dy4, y4 = dy.view(R, 2, n2 // 2, width), y.view(R, 2, n2 // 2, width)
    mean_dy = dy4.mean(2, keepdim=True)
    mean_dyy = (dy4 * y4).mean(2, keepdim=True)
    return (dy4 - mean_dy).sub_(y4 * mean_dyy).mul_(inv).view(R, n2, width)


def forward(model: StackedMLP, x: torch.Tensor):
    """The model's output on ``x`` (R, 2B, d) and what the backward needs: per layer its input
    ``h_l`` and, for activated layers, the batch-normalised pre-activation and ``inv_std``."""
    saved = []
    h = x
    for w, b, activated in _layers(model):
        a = torch.baddbmm(b, h, w)
        bn = None
        if activated:
            if model.batch_norm:
                y, inv = _batch_norm(a)
                bn = (y, inv)
                a = y
            a = torch.relu_(a) if bn is None else torch.relu(a)
        saved.append((h, bn))
        h = a
    return h, saved


def backward(model: StackedMLP, saved, g: torch.Tensor) -> dict:
    """``{parameter: gradient}`` of every layer from ``g = dL/dz`` (R, 2B, out)."""
    grads = {}
    layers = _layers(model)
    for i in range(len(layers) - 1, -1, -1):
        w, b, _ = layers[i]
        h, _ = saved[i]
        grads[w] = torch.bmm(h.transpose(1, 2), g)
        grads[b] = g.sum(1, keepdim=True)
        if i == 0:
            break
        g = torch.bmm(g, w.transpose(1, 2))
        if layers[i - 1][2]:  # h = relu(y): the gradient passes where h > 0
            g = torch.ops.aten.threshold_backward(g, h, 0)
            _, bn = saved[i - 1]
            if bn is not None:
                g = _batch_norm_back(g, *bn)
    return grads


class MLPStep:
    """Loss and gradients of a chunk of :class:`StackedMLP` runs for one minibatch.

    Args:
        state: the chunk.
        loss_fn: the runs' base loss module (:func:`simulate.engine.objective.base_loss_fn`).
    """

    def __init__(self, state: ChunkState, loss_fn):
        self.state, self.loss_fn = state, loss_fn
        self.params = list(state.model.parameters())

    def _loss_gradient(self, z, labels, alive, value: bool):
        state = self.state
        if state.fused:
            clop = None
            if state.prototypes is not None:
                targets, weights = prototype_targets(labels, state.prototypes)
                clop = (targets, weights, state.clop_weight)
            loss, g = ntxent_clop_value_and_grad(z, state.runs[0].temperature, clop, value=value)
            return loss, g, (alive if loss is None else torch.isfinite(loss))
        leaf = z.detach().requires_grad_(True)
        with torch.enable_grad():
            loss = objective(state, self.loss_fn, leaf, labels)
            finite = torch.isfinite(loss)
            total = torch.where(alive & finite, loss, torch.zeros_like(loss)).sum()
            (g,) = torch.autograd.grad(total, [leaf])
        return loss.detach(), g, finite

    @torch.no_grad()
    def __call__(self, views: torch.Tensor, labels, alive, value: bool = True):
        """``(loss (R,) or None, gradients in the order of the model's parameters, per-run
        finite mask)`` on ``views = [v1; v2]`` (R, 2B, d). ``value=False`` lets the fused
        pass skip the loss. A non-finite loss shows in the gradient, so the optimizer's
        check of the new parameters finds it."""
        model = self.state.model
        z, saved = forward(model, views)
        loss, g, finite = self._loss_gradient(z, labels, alive, value)
        grads = backward(model, saved, g)
        return loss, [grads[p] for p in self.params], finite

"""The hand-written gradient of MLP encoders (simulate.engine.mlp_step) against float64
autograd through the model's own forward (two calls, one per view) and the loss modules."""

import pytest
import torch

from simulate.config import RunConfig
from simulate.engine.mlp_step import MLPStep, forward
from simulate.engine.objective import base_loss_fn, objective
from simulate.engine.state import build_state, draw_batch
from simulate.losses import BASE_LOSSES

SMALL = dict(model="mlp", k=3, d=5, per_class=8, batch_size=6, hidden=7, depth=3, out_dim=4,
             steps=4, log_every=4, label_fraction=0.5)


def _chunk(loss, clop, batch_norm, projector, dtype=torch.float64, device=torch.device("cpu"), **kw):
    runs = [RunConfig(**{**SMALL, "loss": loss, "clop_weight": c, "batch_norm": batch_norm,
                         "projector_dims": projector, "seed": s, **kw})
            for s, c in ((0, clop), (1, clop), (2, 0.5 * clop))]
    return build_state(runs, device, dtype)


def _autograd(state, loss_fn, batch):
    """(loss, gradients) by autograd through the model's forward, one call per view."""
    _, labels, v1, v2 = batch
    params = list(state.model.parameters())
    z = torch.cat([state.model(None, v1), state.model(None, v2)], 1)
    loss = objective(state, loss_fn, z, labels)
    return loss.detach(), torch.autograd.grad(loss.sum(), params)


@pytest.mark.parametrize("loss", sorted(BASE_LOSSES))
@pytest.mark.parametrize("clop", [0.0, 0.7])
@pytest.mark.parametrize("batch_norm,projector", [(False, ""), (True, ""), (False, "6,3"),
                                                  (True, "6,3")])
def test_gradients_equal_float64_autograd(loss, clop, batch_norm, projector):
    state = _chunk(loss, clop, batch_norm, projector)
    loss_fn = base_loss_fn(state.runs[0])
    batch = draw_batch(state)
    ref_loss, ref = _autograd(state, loss_fn, batch)
    alive = torch.ones(len(state.runs), dtype=torch.bool)
    got_loss, got, finite = MLPStep(state, loss_fn)(torch.cat(batch[2:], 1), batch[1], alive)
    assert bool(finite.all())
    torch.testing.assert_close(got_loss, ref_loss, rtol=1e-12, atol=1e-12)
    assert len(got) == len(ref)
    for g, r in zip(got, ref):
        assert g.shape == r.shape
        torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-12)
        assert r.abs().max() > 0  # every layer's gradient is exercised


def test_forward_equals_the_model_per_view():
    """One pass over [v1; v2] gives each view's output as the model does (batch norm keeps
    the statistics of each view apart)."""
    state = _chunk("ntxent", 0.0, True, "6,3")
    _, _, v1, v2 = draw_batch(state)
    z, _ = forward(state.model, torch.cat([v1, v2], 1))
    b = v1.shape[1]
    torch.testing.assert_close(z[:, :b], state.model(None, v1), rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(z[:, b:], state.model(None, v2), rtol=1e-13, atol=1e-13)


def test_nonfinite_loss_is_reported_per_run():
    state = _chunk("vicreg", 0.0, False, "")
    with torch.no_grad():
        state.model.weights[0][1].fill_(float("nan"))
    batch = draw_batch(state)
    alive = torch.ones(len(state.runs), dtype=torch.bool)
    _, grads, finite = MLPStep(state, base_loss_fn(state.runs[0]))(torch.cat(batch[2:], 1), batch[1], alive)
    assert finite.tolist() == [True, False, True]
    assert torch.isfinite(grads[0][0]).all() and torch.isfinite(grads[0][2]).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")
@pytest.mark.parametrize("loss", ["ntxent", "vicreg"])
def test_cuda_gradients_equal_cpu(loss):
    """The hand-written backward on CUDA (float64) against the CPU's, batch norm and projector on:
    both chunks draw the same batch (each run's generator lives on the CPU)."""
    sides = []
    for device in ("cpu", "cuda"):
        state = _chunk(loss, 0.7, True, "6,3", device=torch.device(device))
        _, labels, v1, v2 = draw_batch(state)
        alive = torch.ones(len(state.runs), dtype=torch.bool, device=device)
        sides.append(MLPStep(state, base_loss_fn(state.runs[0]))(torch.cat([v1, v2], 1), labels, alive))
    (want_loss, want, _), (got_loss, got, _) = sides
    torch.testing.assert_close(got_loss.cpu(), want_loss, rtol=1e-10, atol=1e-12)
    for g, w in zip(got, want):
        torch.testing.assert_close(g.cpu(), w, rtol=1e-9, atol=1e-11)

"""simulate.stability against dense float64 Jacobians of the literal update.

Reference: the update written here (gradient step by torch autograd on losses from
tests/reference.py, one anchor at a time; raw dot products for sphere_raw by replacing the
loops' cosine; VICReg and Barlow Twins from simulate.losses, which test_losses checks
against their loops), its Jacobian from torch.autograd.functional.jacobian.
"""

import math

import numpy as np
import pytest
import torch

import reference as ref
from reference import DT
from simulate import stability as S
from simulate.config import RunConfig
from simulate.losses import barlow_twins, make_prototypes, vicreg
from simulate.stability import spectra

B, D = 3, 3
LABELS = torch.tensor([0, -1, 1])


def run_for(loss, mode, clop=0.0, **kw):
    return RunConfig(loss=loss, model="free", update_mode=mode, d=D, k=2, per_class=4,
                     batch_size=B, clop_weight=clop, lr=kw.pop("lr", 0.7), temperature=0.4, **kw)


def reference_loss(run):
    protos = make_prototypes(run.k, D, run.prototypes).to(DT)
    raw = run.update_mode == "sphere_raw"

    def loss(z):
        z1, z2 = z[:B], z[B:]
        saved = ref.cos
        if raw:
            ref.cos = lambda a, b: a @ b
        try:
            if run.loss == "ntxent":
                val = ref.ntxent_views_loop(z1, z2, run.temperature)
            elif run.loss == "supcon":
                val = ref.supcon_views_loop(z1, z2, LABELS, run.temperature)
            elif run.loss == "dcl":
                val = ref.dcl_views_loop(z1, z2, run.temperature)
            elif run.loss == "vicreg":
                val = vicreg(z1, z2)
            else:
                val = barlow_twins(z1, z2)
            if run.clop_weight > 0:  # CLOP always compares directions, in every mode
                ref.cos = saved
                val = val + ref.clop_loop(z1, z2, LABELS.tolist(), protos, run.clop_weight)
        finally:
            ref.cos = saved
        return val

    return loss


def reference_step(run, lr=None):
    lr = run.lr if lr is None else lr
    loss = reference_loss(run)

    def step(z):
        (g,) = torch.autograd.grad(loss(z), z, create_graph=True)
        new = z - lr * (g + run.weight_decay * z)
        return new if run.update_mode == "free" else new / new.norm(dim=-1, keepdim=True)

    return step


def dense_jacobian(f, z):
    return torch.autograd.functional.jacobian(f, z.clone()).reshape(z.numel(), z.numel())


def state(mode, seed=0, norm=None):
    z = torch.randn(2 * B, D, dtype=DT, generator=torch.Generator().manual_seed(seed))
    if mode != "free":
        return z / z.norm(dim=-1, keepdim=True)
    if norm is not None:
        return norm * z / z.norm(dim=-1, keepdim=True)
    return z


def top_moduli(mat, k=3):
    return np.sort(np.abs(np.linalg.eigvals(mat)))[::-1][:k]


CASES = [(loss, mode, 0.0) for loss in ("ntxent", "supcon", "dcl", "vicreg", "barlow")
         for mode in ("free", "sphere", "sphere_raw")]
CASES += [("ntxent", mode, 1.5) for mode in ("free", "sphere", "sphere_raw")]
CASES += [("supcon", "sphere", 1.5)]


@pytest.mark.parametrize("loss, mode, clop", CASES)
def test_step_and_jacobian_against_dense_reference(loss, mode, clop):
    run = run_for(loss, mode, clop, weight_decay=0.05 if loss == "dcl" else 0.0)
    step = S.make_step(run, labels=LABELS)
    z = state(mode, seed=len(loss) + len(mode))
    f = reference_step(run)
    assert torch.allclose(step(z), f(z.clone().requires_grad_(True)).detach(), atol=1e-12, rtol=1e-10)
    jac = dense_jacobian(f, z)
    v = torch.randn(z.shape, dtype=DT, generator=torch.Generator().manual_seed(5))
    assert torch.allclose(step.jvp(z, v).reshape(-1), jac @ v.reshape(-1), atol=1e-10, rtol=1e-8)
    assert torch.allclose(step.vjp(z, v).reshape(-1), jac.T @ v.reshape(-1), atol=1e-10, rtol=1e-8)
    full = S.spectrum(step, z, tangent=False, k=3)
    np.testing.assert_allclose(np.abs(full["eigenvalues"]), top_moduli(jac.numpy()), rtol=1e-8, atol=1e-10)
    # two steps: J(F(z)) J(z)
    z1 = f(z.clone().requires_grad_(True)).detach()
    jac2 = dense_jacobian(f, z1) @ jac
    two = S.spectrum(step, z, steps=2, tangent=False, k=3)
    np.testing.assert_allclose(np.abs(two["eigenvalues"]), top_moduli(jac2.numpy()), rtol=1e-8, atol=1e-10)
    # tangent space of the rows at z, on both sides
    u = (z / z.norm(dim=-1, keepdim=True)).numpy()
    proj = np.zeros((z.numel(), z.numel()))
    for i in range(2 * B):
        proj[i * D:(i + 1) * D, i * D:(i + 1) * D] = np.eye(D) - np.outer(u[i], u[i])
    tang = S.spectrum(step, z, tangent=True, k=3)
    np.testing.assert_allclose(np.abs(tang["eigenvalues"]), top_moduli(proj @ jac.numpy() @ proj),
                               rtol=1e-8, atol=1e-10)


def test_leading_mode_is_an_eigenvector():
    run = run_for("ntxent", "sphere_raw")
    step = S.make_step(run)
    z = state("sphere_raw", seed=3)
    jac = dense_jacobian(reference_step(run), z).numpy()
    sp = S.spectrum(step, z, tangent=False, k=1)
    lam = sp["eigenvalues"][0]
    if abs(lam.imag) < 1e-12:
        mode = sp["modes"][0].reshape(-1)
        np.testing.assert_allclose(jac @ mode, lam.real * mode, atol=1e-8)


def test_arnoldi_matches_dense(monkeypatch):
    """Above DENSE_LIMIT numbers the spectrum comes from Arnoldi iteration on jvp products
    (the limit lowered here so that the dense reference stays small)."""
    b, d = 4, 6
    monkeypatch.setattr(spectra, "DENSE_LIMIT", 20)
    run = RunConfig(loss="ntxent", model="free", update_mode="sphere", d=d, k=2, per_class=8,
                    batch_size=b, lr=3.0, temperature=0.5)
    z = torch.randn(2 * b, d, dtype=DT, generator=torch.Generator().manual_seed(1))
    z = z / z.norm(dim=-1, keepdim=True)
    step = S.make_step(run)
    sp = S.spectrum(step, z, k=3, tangent=False)
    assert sp["method"] == "arnoldi"
    jac = torch.autograd.functional.jacobian(step, z).reshape(z.numel(), z.numel()).numpy()
    np.testing.assert_allclose(np.abs(sp["eigenvalues"]), top_moduli(jac), rtol=1e-7)


def test_free_mode_directions_take_the_effective_rate():
    """Free mode at row norm rho: the direction map's tangent spectrum is the spectrum of the
    projected sphere step at lr / rho^2 (dense reference), and norms grow by
    |z'|^2 = |z|^2 + lr^2 |grad|^2."""
    rho, lr = 2.5, 4.0
    run = run_for("ntxent", "free", lr=lr)
    z = state("free", seed=2, norm=rho)
    split = S.free_mode_split(S.make_step(run), z, k=3)
    np.testing.assert_allclose(split["effective_rate"], lr / rho**2, rtol=1e-12)
    loss = reference_loss(run)
    zz = z.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(loss(zz), zz)
    expect = torch.sqrt(1 + lr**2 * (g**2).sum(-1) / rho**2).numpy()
    np.testing.assert_allclose(split["radial_growth"], expect, rtol=1e-10)
    u = z / rho
    sphere = reference_step(run_for("ntxent", "sphere"), lr=lr / rho**2)
    jac = dense_jacobian(sphere, u).numpy()
    proj = np.zeros_like(jac)
    for i in range(2 * B):
        proj[i * D:(i + 1) * D, i * D:(i + 1) * D] = np.eye(D) - np.outer(u[i], u[i])
    np.testing.assert_allclose(np.abs(split["tangent"]["eigenvalues"]),
                               top_moduli(proj @ jac @ proj), rtol=1e-8)


def test_rotation_deflation_at_rank1():
    """At +-u* (sphere_raw NT-Xent, sign-flip partners) the global rotations are neutral;
    deflated, the spectrum is the dense one without them."""
    run = run_for("ntxent", "sphere_raw", lr=5.0)
    u = torch.zeros(2 * B, D, dtype=DT)
    u[:B, 0], u[B:, 0] = 1.0, -1.0
    step = S.make_step(run)
    rot = S.rotation_modes(u)
    assert rot.shape[0] == D - 1
    jac = dense_jacobian(reference_step(run), u).numpy()
    full = S.spectrum(step, u, steps=2, k=2 * B * (D - 1))
    defl = S.spectrum(step, u, steps=2, k=2 * B * (D - 1), deflate=rot)
    allv = np.sort(np.abs(full["eigenvalues"]))
    dv = np.sort(np.abs(defl["eigenvalues"]))
    # removing the D - 1 rotations (modulus 1) from the tangent spectrum leaves the rest
    rest = list(allv)
    for _ in range(D - 1):
        rest.pop(int(np.argmin(np.abs(np.array(rest) - 1))))
    np.testing.assert_allclose(dv[-len(rest):], np.sort(rest), atol=1e-9)
    two = jac @ jac  # +-u* flips to itself after two steps
    assert math.isclose(float(np.max(np.abs(np.linalg.eigvals(two)))), max(allv.max(), 1.0), rel_tol=1e-8)


@pytest.mark.parametrize("bad, word", [
    (lambda: S.make_step(RunConfig(model="mlp")), "model"),
    (lambda: S.make_step(run_for("ntxent", "free", momentum=0.5)), "momentum"),
    (lambda: S.make_step(run_for("ntxent", "free"), lr=-1.0), "lr"),
    (lambda: S.spectrum(S.make_step(run_for("ntxent", "free")), state("free"), steps=3), "steps"),
    (lambda: S.spectrum(S.make_step(run_for("ntxent", "free")), state("free"), k=0), "k"),
    (lambda: S.free_mode_split(S.make_step(run_for("ntxent", "sphere")), state("sphere")), "update_mode"),
])
def test_bad_input_names_the_parameter(bad, word):
    with pytest.raises(ValueError, match=rf"\b{word}\b"):
        bad()


@pytest.mark.parametrize("kind", ["all_equal", "rank1", "rank1_together", "axes"])
def test_collapsed_and_symmetric_states_are_stationary(kind):
    """The literal (reference) projected gradient vanishes at these states for NT-Xent."""
    run = RunConfig(loss="ntxent", model="free", update_mode="sphere", d=2, k=2, per_class=8,
                    batch_size=4, temperature=0.5)
    z = S.reference_state(kind, run)
    assert z.shape == (8, 2)
    zz = z.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(ref.ntxent_views_loop(zz[:4], zz[4:], 0.5), zz)
    tangent = g - (g * z).sum(-1, keepdim=True) * z
    assert float(tangent.abs().max()) < 1e-12


def test_prototype_state_is_clops_fixed_point():
    run = RunConfig(loss="ntxent", model="free", update_mode="sphere", d=4, k=3, per_class=8,
                    batch_size=6, clop_weight=2.0)
    z = S.reference_state("prototypes", run)
    protos = make_prototypes(3, 4).to(DT)
    labels = torch.arange(6) % 3
    zz = z.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(ref.clop_loop(zz[:6], zz[6:], labels.tolist(), protos, 2.0), zz)
    assert float(g.abs().max()) < 1e-12
    with pytest.raises(ValueError, match=r"\bkind\b"):
        S.reference_state("cube", run)

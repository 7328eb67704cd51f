"""Plain functions behind the notebooks' widgets (tested without a notebook).

``bound_explorer`` wires sliders for eta, w, tau, n and the update mode to
:func:`explorer_figure`; ``collapse_lab`` builds a small sweep with :func:`lab_spec`, runs it
with :func:`run_lab` and plots it with :func:`lab_figure`.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

import theory

MODES = {"projected (sphere)": "pair", "unprojected (sphere_raw)": "pair_unprojected"}
#: sweep sizes of :func:`lab_spec`
LAB_SIZES = ("small", "full")


def iterate(kind: str, eta: float, w: float, x0: float, steps: int) -> np.ndarray:
    """Orbit ``x0, f(x0), ..., f^steps(x0)`` of a one-step map of :mod:`theory`."""
    f = theory.step_map(kind, eta=eta, w=w)
    out = [float(x0)]
    for _ in range(int(steps)):
        out.append(float(f(out[-1])))
    return np.array(out)


def cobweb_path(orbit: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Vertices of a cobweb: (x_i, x_{i+1}) then (x_{i+1}, x_{i+1}) for each step."""
    a, b = orbit[:-1], orbit[1:]
    xs = np.column_stack([a, b]).ravel()
    ys = np.column_stack([b, b]).ravel()
    return xs, ys


def thresholds(eta: float, w: float, tau: float, n: int) -> dict[str, dict]:
    """Every critical rate at these parameters and whether ``eta`` lies above it. A batch of
    n pairs uses claim ntxent_batch (n pairs at simplex vertices in R^(n-1), every point
    moving; NaN for n = 2), not ntxent_pair, whose negatives are fixed."""
    batch = (theory.critical_lr("ntxent_batch_simplex", tau=tau, n=n - 1) if n >= 3
             else float("nan"))
    rates = {
        "anchor": theory.critical_lr("anchor", w=w),
        "pair": theory.critical_lr("pair", w=w),
        "ntxent_batch": batch,
        "rank1_cycle": theory.critical_lr("rank1_cycle", tau=tau, n=n),
    }
    return {k: {"eta_c": v, "above": bool(eta > v)} for k, v in rates.items()}


def explorer_figure(eta: float = 1.0, w: float = 1.0, tau: float = 0.5, n: int = 8,
                    mode: str = "projected (sphere)", steps: int = 30):
    """Cobweb plots of the anchor map and the pair map (in ``mode``), the pair's trajectory, and
    every threshold with eta marked. Returns the figure."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    th = np.linspace(-math.pi / 2, math.pi / 2, 300)
    f = theory.step_map("anchor", eta=eta, w=w)
    axes[0].plot(th, f(th), color="C0")
    axes[0].plot(th, th, color="0.6", ls="--", lw=0.8)
    orbit = iterate("anchor", eta, w, 1.2, steps)
    axes[0].plot(*cobweb_path(orbit), color="C3", lw=0.8)
    axes[0].set_title(rf"anchor map, $\eta w$ = {eta * w:.3g} (threshold 2)", fontsize=9)
    axes[0].set_xlabel(r"$\theta$"), axes[0].set_ylabel(r"$\theta'$")
    kind = MODES[mode]
    cs = np.linspace(-1, 1, 300)
    g = theory.step_map(kind, eta=eta, w=w)
    axes[1].plot(cs, g(cs), color="C0")
    axes[1].plot(cs, cs, color="0.6", ls="--", lw=0.8)
    pair = iterate(kind, eta, w, 0.3, steps)
    axes[1].plot(*cobweb_path(pair), color="C3", lw=0.8)
    axes[1].set_title(rf"{kind} map, $\beta$ = {eta * w:.3g}", fontsize=9)
    axes[1].set_xlabel(r"$\cos\theta$"), axes[1].set_ylabel(r"$\cos\theta'$")
    axes[2].plot(np.degrees(np.abs(orbit)), label="anchor: angle to prototype")
    axes[2].plot(np.degrees(np.arccos(np.clip(pair, -1, 1))), label=f"{kind}: angle between points")
    axes[2].set_xlabel("step"), axes[2].set_ylabel("degrees")
    lines = [f"{k}: eta_c = {v['eta_c']:.4g} ({'ABOVE' if v['above'] else 'below'})"
             for k, v in thresholds(eta, w, tau, n).items()]
    axes[2].set_title("\n".join(lines), fontsize=7, loc="left")
    axes[2].legend(fontsize=7)
    fig.tight_layout()
    return fig


def lab_spec(losses=("ntxent",), clop_weights=(0.0, 1.0), lrs=(0.1, 10.0, 1000.0), steps: int = 200,
             seeds=(0,), size: str = "full") -> dict:
    """A small sweep spec for the collapse lab (MLP encoder on a 4-class mixture).

    ``size="small"`` shrinks it to a few steps on a few points (a smoke run)."""
    if size not in LAB_SIZES:
        raise ValueError(f"size must be one of {', '.join(LAB_SIZES)}, got {size!r}")
    spec = {"loss": list(losses), "clop_weight": list(clop_weights), "lr": list(lrs), "seed": list(seeds),
            "model": "mlp", "hidden": 32, "out_dim": 8, "k": 4, "d": 8, "per_class": 64, "batch_size": 32,
            "mean_scale": 2.0, "aug_sigma": 0.5, "label_fraction": 0.5, "steps": int(steps),
            "log_every": max(1, int(steps) // 10)}
    if size == "small":
        spec.update(steps=6, log_every=2, per_class=12, batch_size=8, hidden=8)
    return spec


def spec_digest(spec: dict) -> str:
    """sha256 of the spec's canonical JSON (sorted keys, no spaces; tuples as lists): the same
    in every process, unlike ``hash()``, whose string hashes change per process."""
    text = json.dumps(spec, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()


def lab_folder(spec: dict, root) -> Path:
    """The cache folder of ``spec`` under ``root``: named by its digest, so running the same
    sweep again (after a kernel restart too) finds its results."""
    return Path(root) / spec_digest(spec)[:16]


def run_lab(spec: dict, root, device: str = "auto", quiet: bool | None = None):
    """Run (or resume: finished runs are skipped) the lab's sweep into
    :func:`lab_folder` ``(spec, root)`` and return its table."""
    from simulate.sweep import load_results, run_sweep

    out = lab_folder(spec, root)
    run_sweep(spec, out, device=device, quiet=quiet)
    return load_results(out)


def lab_figure(df):
    """Effective rank and mean cosine over training, one line per run; CLOP solid."""
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4))
    runs = df.drop_duplicates("run_id")
    for k, (_, r) in enumerate(runs.iterrows()):
        part = df[df.run_id == r.run_id].sort_values("step")
        style = dict(color=f"C{k % 10}", ls="-" if r.clop_weight > 0 else "--",
                     label=f"{r.loss}{' + CLOP' if r.clop_weight > 0 else ''}, lr {r.lr:g}")
        a1.plot(part.step, part.effective_rank, **style)
        a2.plot(part.step, part.mean_cos, **style)
    a1.set_xlabel("step"), a1.set_ylabel("effective rank")
    a2.set_xlabel("step"), a2.set_ylabel("mean pairwise cosine")
    a2.legend(fontsize=7)
    fig.tight_layout()
    return fig

"""Figures that draw a prediction over what is simulated: trajectories at multiples of the
critical rate and of the predicted onset of collapse, the phase diagrams with the predicted
onsets of complete and dimensional collapse (:mod:`simulate.stability`, where one is
predicted) and the claims' edges, and the free mode's norm identity.

Builders take ``data`` as in :mod:`figures.sweep_figures` (those drawn from theory and direct
simulation alone ignore it) and return the figure and a :class:`Table` of the plotted numbers.
The figures are registered, with their captions, in :mod:`figures.sim_figures`.
"""

from __future__ import annotations

import math

import numpy as np

import theory

from .registry import Table, plt
from .sweep_figures import final_rows

def build_trajectories(data=None, steps: int = 40):
    """Trajectories of the claimed quantity at 0.5, 0.9, 1.1 and 2 x the predicted rate."""
    from simulate.theory_sims import SIMULATIONS

    factors = (0.5, 0.9, 1.1, 2.0)
    fig, axes = plt.subplots(1, 5, figsize=(21, 4))
    rows = []
    _engine_onset_panel(axes[4], factors, rows)
    for ax, (claim, make) in zip(axes, SIMULATIONS.items()):
        sim = make()
        start = 1e-2 if claim != "rank1_cycle" else 1e-3
        for k, f in enumerate(factors):
            eta = f * sim.predicted
            q = sim.trajectory(eta, steps, start)
            ax.semilogy(np.arange(len(q)), np.maximum(q, 1e-300), color=f"C{k}",
                        label=rf"$\eta = {f}\,\eta_c$")
            pred = _predicted_curve(claim, sim, eta, start, len(q))
            if pred is not None:
                pred = np.minimum(pred, math.pi)  # the linear rate holds only near the fixed point
                ax.semilogy(np.arange(len(q)), np.maximum(pred, 1e-300), color=f"C{k}", ls=":", lw=1)
            rows += [(claim, f, eta, t, float(v), float(pred[t]) if pred is not None else math.nan)
                     for t, v in enumerate(q)]
        ax.set_ylim(1e-12, 10)
        ax.set_xlabel("step")
        ax.set_ylabel(sim.quantity)
        ax.set_title(f"{claim}: predicted $\\eta_c$ = {sim.predicted:.4g}", fontsize=9)
        ax.legend(fontsize=7)
    fig.suptitle("Simulation (solid) against the prediction (dotted): below the critical rate the "
                 "fixed point holds, above it the perturbation grows (rank1: the reverse)", fontsize=10)
    fig.tight_layout()
    return fig, Table(("claim", "factor", "eta", "step", "simulated", "predicted"), rows)


#: the training configuration of the engine panel of trajectories_vs_bound
ENGINE_PANEL = dict(model="free", update_mode="sphere_raw", loss="ntxent", temperature=0.2,
                    batch_size=32, k=4, d=16, per_class=32, steps=200, log_every=10)


def _engine_onset_panel(ax, factors, rows):
    """Real engine runs at ``factors`` x the predicted onset: effective rank against step."""
    from simulate.config import RunConfig
    from simulate.engine import train_chunk
    from simulate.stability import COLLAPSED_RANK, predict_onset

    base = RunConfig(**ENGINE_PANEL)
    onset = predict_onset(base)
    runs = [RunConfig(**{**ENGINE_PANEL, "lr": f * onset}) for f in factors]
    result = train_chunk(runs).rows
    for k, (f, run) in enumerate(zip(factors, runs)):
        traj = sorted((r["step"], r["effective_rank"]) for r in result if r["run_id"] == run.run_id)
        steps, ranks = zip(*traj)
        ax.plot(steps, ranks, color=f"C{k}", label=rf"$\eta = {f}\,\eta_{{onset}}$")
        rows += [("engine_onset", f, run.lr, t, float(v), math.nan) for t, v in traj]
    ax.axhline(COLLAPSED_RANK, color="0.4", ls=":", lw=1, label=f"collapsed: rank <= {COLLAPSED_RANK}")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("effective rank (RankMe)")
    ax.set_title(f"engine, NT-Xent sphere_raw, tau {base.temperature}, B {base.batch_size}\n"
                 f"predicted onset {onset:.3g}", fontsize=9)
    ax.legend(fontsize=7)


def _predicted_curve(claim, sim, eta, start, n):
    """Exact map iteration (anchor, pair) or the linear rate of the binding mode."""
    if claim == "anchor_map":
        f = theory.step_map("anchor", eta=eta, w=sim.params["w"])
        out = [start]
        for _ in range(n - 1):
            out.append(float(f(out[-1])))
        return np.abs(np.array(out))
    if claim == "pair_map":
        f = theory.step_map("pair", eta=eta, w=sim.params["w"])
        c = [math.cos(start)]
        for _ in range(n - 1):
            c.append(float(f(c[-1])))
        return np.arccos(np.clip(c, -1, 1))
    if claim == "ntxent_pair":
        p = sim.params
        rate = abs(1 - eta * (1 - p["p_pos"]) * (4 - p["neg_cos"] + p["neg_spread"] / p["tau"]) / p["tau"])
        return start * rate ** np.arange(n)
    return None


def build_phase_diagram(data):
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 5.6))
    rows: list = []
    _phase_tau_panel(fig, a1, final_rows(data["phase_tau"]), rows)
    _phase_clop_panel(fig, a2, final_rows(data["phase_clop"]), rows)
    fig.tight_layout()
    return fig, Table(("axis", "value", "lr", "effective_rank"), rows)


def _phase_tau_panel(fig, a1, tau_df, rows):
    """Final effective rank over (eta, tau) with the predicted onsets (complete and
    dimensional collapse) and claim rank1_cycle's edge."""
    piv = tau_df.pivot_table(index="temperature", columns="lr", values="effective_rank", aggfunc="mean")
    im = a1.pcolormesh(_edges(piv.columns), _edges(piv.index), piv.to_numpy(), cmap="viridis", shading="flat")
    fig.colorbar(im, ax=a1, label="final effective rank")
    a1.set_xscale("log"), a1.set_yscale("log")
    b = int(tau_df["batch_size"].iloc[0])
    taus = np.geomspace(piv.index.min(), piv.index.max(), 60)
    r0 = tau_df.iloc[0]
    runs = [_phase_run(r0, temperature=float(t)) for t in taus]
    for key, onset in _draw_onsets(a1, runs, taus).items():
        rows += [(key, float(t), float(v), math.nan) for t, v in zip(taus, onset)]
    if r0["loss"] == "ntxent" and r0["update_mode"] == "sphere_raw" and float(r0["clop_weight"]) == 0:
        # claim rank1_cycle holds here (NT-Xent, raw-gradient steps, no CLOP): +-u* with n = B
        # per side attracts above it (mean over 2B anchors: 2B times the claim's rate), where
        # it attracts at all; a necessary condition, not the onset
        pred = np.array([2 * b * theory.critical_lr("rank1_cycle", tau=t, n=b) for t in taus])
        a1.plot(np.where(np.isfinite(pred), pred, np.nan), taus, "w--", lw=1.5,
                label=r"$\eta_c(\tau)$, claim rank1_cycle (n = B)")
    a1.set_xlim(piv.columns.min() / 1.8, piv.columns.max() * 1.8)
    a1.set_xlabel(r"learning rate $\eta$"), a1.set_ylabel(r"temperature $\tau$")
    a1.set_title("NT-Xent, free embeddings, unprojected updates", fontsize=9)
    _legend_below(a1)
    rows += [("tau", t, lr, float(piv.loc[t, lr])) for t in piv.index for lr in piv.columns]


#: how the predicted onsets are drawn: table key, level, style, legend label
ONSET_STYLES = (
    ("predicted_onset", "complete", dict(color="r", ls="-", lw=1.8),
     "predicted onset, complete collapse (rank <= 1.5)"),
    ("predicted_dimensional_onset", "dimensional", dict(color="orange", ls="--", lw=1.8),
     "predicted onset, dimensional collapse (rank <= half the reference)"),
)


def _draw_onsets(ax, runs, ys, marker=None) -> dict:
    """The predicted onset of each level of :data:`ONSET_STYLES` for ``runs``, drawn at
    heights ``ys`` where it is finite (none, infinite, or not predicted, NaN: not drawn; a
    level with no finite value gets no line and no legend entry). Returns key -> onsets."""
    from simulate.stability import predict_level_onset

    out = {}
    for key, level, style, label in ONSET_STYLES:
        onset = np.array([predict_level_onset(r, level) for r in runs], dtype=float)
        out[key] = onset
        if np.isfinite(onset).any():
            ax.plot(np.where(np.isfinite(onset), onset, np.nan), ys, marker=marker, ms=5,
                    label=label, **style)
    return out


def _legend_below(ax):
    """The legend under the axes, on grey (the claims' edges are drawn in white)."""
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), facecolor="0.75")


def _phase_clop_panel(fig, a2, lam_df, rows):
    """Final effective rank over (eta, lambda) with claim anchor_map's edge and the predicted
    onsets (CLOP: no complete collapse, +-u* is not a fixed point; dimensional not predicted)."""
    piv2 = lam_df.pivot_table(index="clop_weight", columns="lr", values="effective_rank", aggfunc="mean")
    rank_of = np.arange(len(piv2.index) + 1) - 0.5  # lambda as equally spaced categories
    im2 = a2.pcolormesh(_edges(piv2.columns), rank_of, piv2.to_numpy(), cmap="viridis", shading="flat")
    fig.colorbar(im2, ax=a2, label="final effective rank")
    a2.set_xscale("log")
    a2.set_yticks(np.arange(len(piv2.index)), [f"{v:g}" for v in piv2.index])
    # claim anchor_map: the prototype pull, weight lambda / (2 m) per row (m labelled points of
    # a batch), is stable iff eta * lambda / (2 m) < 2
    c0 = lam_df.iloc[0]
    m = max(1, round(float(c0["label_fraction"]) * int(c0["batch_size"])))
    lams = [v for v in piv2.index if v > 0]
    anchor = [2 * m * theory.critical_lr("anchor", w=float(v)) for v in lams]
    pos = [list(piv2.index).index(v) for v in lams]
    a2.plot(anchor, pos, "w--", marker="o", ms=3, lw=1.2,
            label=r"prototype pull unstable above (claim anchor_map, $\eta\lambda/2m = 2$)")
    runs = [_phase_run(c0, clop_weight=float(v)) for v in piv2.index]
    onsets = _draw_onsets(a2, runs, np.arange(len(runs)), marker="o")
    rows += [("anchor_edge", float(v), float(e), math.nan) for v, e in zip(lams, anchor)]
    for key, onset in onsets.items():
        rows += [(f"{key}_lambda", float(v), float(e), math.nan) for v, e in zip(piv2.index, onset)]
    if lams:  # what the predictor says with CLOP, where nothing is drawn
        a2.plot([], [], " ", label=("with CLOP: no complete collapse (+-u* is not a fixed "
                                    "point);\ndimensional collapse not predicted (the pair map "
                                    "leaves out CLOP)"))
    _legend_below(a2)
    a2.set_xlabel(r"learning rate $\eta$"), a2.set_ylabel(r"CLOP weight $\lambda$")
    a2.set_title(r"NT-Xent + CLOP, $\tau$ = %.2g" % lam_df["temperature"].iloc[0], fontsize=9)
    rows += [("lambda", lam, lr, float(piv2.loc[lam, lr])) for lam in piv2.index for lr in piv2.columns]


#: the RunConfig fields of a phase-diagram row that the onset predictions read, and their types
#: (the model is always free embeddings: the predictions cover nothing else)
_PHASE_FIELDS = dict(update_mode=str, loss=str, temperature=float, batch_size=int,
                     k=int, d=int, per_class=int, steps=int, clop_weight=float,
                     label_fraction=float, mean_scale=float, sigma=float, aug_sigma=float,
                     noise_rank=int, sign_flip=bool, holdout_fraction=float, weight_decay=float,
                     init_norm=float, data=str, means=str)


def _phase_run(row, **changes):
    """The RunConfig of a phase-diagram row: every field the onset predictions read that the
    row has (the data model's too: the initial pair angle comes from ``aug_sigma``,
    ``mean_scale`` and ``sigma``); missing or NaN ones keep RunConfig's defaults."""
    from simulate.config import RunConfig

    fields = {"model": "free"}
    for name, kind in _PHASE_FIELDS.items():
        v = row.get(name) if hasattr(row, "get") else None
        if v is None or (isinstance(v, float) and math.isnan(v)):
            continue
        fields[name] = kind(v)
    return RunConfig(**{**fields, **changes})


def _edges(values):
    """Cell edges on a log axis around sorted positive centres."""
    v = np.asarray(list(values), dtype=float)
    if len(v) == 1:
        return np.array([v[0] * 0.8, v[0] * 1.25])
    lv = np.log(v)
    mid = (lv[1:] + lv[:-1]) / 2
    return np.exp(np.concatenate([[lv[0] - (mid[0] - lv[0])], mid, [lv[-1] + (lv[-1] - mid[-1])]]))


def build_norm_growth(data=None, steps: int = 30):
    """Free mode: sum of squared norms against |z_0|^2 + eta^2 sum_t |grad_t|^2 (claim norm_growth)."""
    import torch

    from simulate.losses import nt_xent

    g = torch.Generator().manual_seed(0)
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    rows = []
    for k, eta in enumerate((0.3, 3.0, 30.0)):
        z = torch.randn(2, 16, 8, dtype=torch.float64, generator=g)
        sim, pred = [float((z**2).sum())], [float((z**2).sum())]
        for _ in range(steps):
            z = z.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(nt_xent(z[0], z[1], 0.5), [z])
            pred.append(pred[-1] + eta**2 * float((grad**2).sum()))
            z = z.detach() - eta * grad
            sim.append(float((z**2).sum()))
        ax.plot(sim, color=f"C{k}", label=rf"simulated, $\eta$ = {eta}")
        ax.plot(pred, color=f"C{k}", ls=":", lw=2, label=r"$\|z_0\|^2 + \eta^2 \sum_t \|\nabla L_t\|^2$")
        rows += [(eta, t, s, p) for t, (s, p) in enumerate(zip(sim, pred))]
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel(r"$\sum_i \|z_i\|^2$")
    ax.set_title("Free mode (plain SGD on NT-Xent): norms only grow, exactly as the identity says",
                 fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig, Table(("eta", "step", "simulated", "predicted"), rows)

"""The paper's figures, drawn from sweep results (and theory curves).

Every builder takes ``data``: a mapping from sweep name (see ``simulate/presets/*.yaml``) to
the sweep's results table (``simulate.sweep.load_results``), plus ``embeddings`` tables where
a sweep saves them. Builders return the figure and a :class:`Table` of the plotted numbers.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

import theory

from .registry import Figure, Table, plt, register

LOSS_ORDER = ["ntxent", "supcon", "dcl", "vicreg", "barlow"]
LOSS_LABEL = {"ntxent": "NT-Xent", "supcon": "SupCon", "dcl": "DCL", "vicreg": "VICReg",
              "barlow": "Barlow Twins"}


def final_rows(df: pd.DataFrame) -> pd.DataFrame:
    """The last logged row of every run."""
    last = df.groupby("run_id")["step"].transform("max")
    return df[df["step"] == last]


def summarise(df: pd.DataFrame, by: list[str], value: str) -> pd.DataFrame:
    """Mean, std and count of ``value`` over seeds, and the fraction of diverged runs."""
    g = df.groupby(by, dropna=False)
    out = g[value].agg(["mean", "std", "count"]).reset_index()
    out["diverged_frac"] = g["diverged"].mean().to_numpy()
    return out


def _clop_label(loss: str, clop: float) -> str:
    return f"{LOSS_LABEL.get(loss, loss)}{' + CLOP' if clop > 0 else ''}"


def _lr_curves(ax, fin: pd.DataFrame, value: str, rows: list, ylabel: str):
    s = summarise(fin, ["loss", "clop_weight", "lr"], value)
    for i, loss in enumerate([x for x in LOSS_ORDER if x in set(s["loss"])]):
        for clop in sorted(set(s["clop_weight"])):
            part = s[(s["loss"] == loss) & (s["clop_weight"] == clop)].sort_values("lr")
            ls = "-" if clop > 0 else "--"
            ax.errorbar(part["lr"], part["mean"], yerr=part["std"].fillna(0), color=f"C{i}", ls=ls,
                        marker="o", ms=3, capsize=2, label=_clop_label(loss, clop))
            dv = part[part["diverged_frac"] > 0]
            if len(dv):
                ax.plot(dv["lr"], np.full(len(dv), ax.get_ylim()[0] if value.endswith("acc") else 0),
                        "x", color=f"C{i}", ms=6)
            rows += [(value, loss, clop, r.lr, r["mean"], r["std"], r["count"], r.diverged_frac)
                     for _, r in part.iterrows()]
    ax.set_xscale("log")
    ax.set_xlabel(r"learning rate $\eta$")
    ax.set_ylabel(ylabel)


def build_lr_regimes(data):
    fin = final_rows(data["lr"])
    rows: list = []
    fig, axes = plt.subplots(1, 2, figsize=(14, 5))
    k = int(fin["k"].iloc[0])
    for ax, (value, label) in zip(axes, [("probe_acc", "linear-probe accuracy (held out)"),
                                         ("knn_acc", "kNN accuracy (held out, cosine, k = 5)")]):
        _lr_curves(ax, fin, value, rows, label)
        ax.axhline(1 / k, color="0.5", lw=0.8, ls=":", label="chance")
    axes[1].legend(fontsize=7, ncol=2)
    fig.suptitle("Three regimes: not learning, learning, collapse (solid: with CLOP; x: some runs diverged)",
                 fontsize=10)
    fig.tight_layout()
    return fig, Table(("metric", "loss", "clop_weight", "lr", "mean", "std", "runs", "diverged_frac"), rows)


def build_variance_vs_lr(data):
    fin = final_rows(data["lr"])
    rows: list = []
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4.6))
    _lr_curves(a1, fin, "variance", rows, "embedding variance (normalised embeddings)")
    _lr_curves(a2, fin, "effective_rank", rows, "effective rank (RankMe)")
    a2.legend(fontsize=7, ncol=2)
    fig.suptitle("Collapse at large learning rates: variance and effective rank (solid: with CLOP)",
                 fontsize=10)
    fig.tight_layout()
    return fig, Table(("metric", "loss", "clop_weight", "lr", "mean", "std", "runs", "diverged_frac"), rows)


def build_toy_3d(data):
    emb = data["toy:embeddings"]
    runs = final_rows(data["toy"])[["run_id", "loss", "clop_weight", "state"]]
    emb = emb.merge(runs, on="run_id")
    losses = [x for x in LOSS_ORDER if x in set(emb["loss"])]
    clops = sorted(set(emb["clop_weight"]))
    fig = plt.figure(figsize=(3.0 * len(losses), 3.0 * len(clops)))
    rows = []
    u, v = np.mgrid[0:2 * np.pi:24j, 0:np.pi:12j]
    for ci, clop in enumerate(clops):
        for li, loss in enumerate(losses):
            ax = fig.add_subplot(len(clops), len(losses), ci * len(losses) + li + 1, projection="3d")
            part = emb[(emb["loss"] == loss) & (emb["clop_weight"] == clop)]
            x = part[["e0", "e1", "e2"]].to_numpy()
            x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
            ax.plot_wireframe(np.cos(u) * np.sin(v), np.sin(u) * np.sin(v), np.cos(v), color="0.85", lw=0.3)
            ax.scatter(x[:, 0], x[:, 1], x[:, 2], c=part["label"], cmap="tab10", vmin=0, vmax=9, s=6)
            state = part["state"].iloc[0] if len(part) else "?"
            ax.set_title(f"{_clop_label(loss, clop)}\n({state})", fontsize=8)
            ax.set_xticks([]), ax.set_yticks([]), ax.set_zticks([])
            rows += [(loss, clop, int(p), int(lab), *xi) for p, lab, xi in zip(part["point"], part["label"], x)]
    fig.suptitle("Three rank-1 clusters in 3-D (sign-flip + noise views): learned embeddings on the sphere",
                 fontsize=10)
    return fig, Table(("loss", "clop_weight", "point", "label", "x", "y", "z"), rows)


def _on_off_curve(data_key, x, xlabel, title, log=True, baseline_x=None):
    def build(data):
        fin = final_rows(data[data_key])
        s = summarise(fin, ["clop_weight", x], "probe_acc")
        fig, ax = plt.subplots(figsize=(6.5, 4.2))
        rows = []
        for clop in sorted(set(s["clop_weight"])):
            part = s[s["clop_weight"] == clop].sort_values(x)
            xs = part[x].to_numpy(float)
            if baseline_x is not None and clop == 0:
                m = float(part["mean"].mean())
                ax.axhline(m, color="C0", ls="--", label="NT-Xent (no CLOP, labels unused)")
            else:
                ax.errorbar(xs, part["mean"], yerr=part["std"].fillna(0), marker="o", ms=3, capsize=2,
                            color=f"C{1 if clop > 0 else 0}", ls="-" if clop > 0 else "--",
                            label=_clop_label("ntxent", clop))
            rows += [(clop, r[x], r["mean"], r["std"], r["count"]) for _, r in part.iterrows()]
        if log:
            ax.set_xscale("symlog" if (s[x] == 0).any() else "log", **({"linthresh": 0.01} if (s[x] == 0).any() else {}))
        ax.set_xlabel(xlabel)
        ax.set_ylabel("linear-probe accuracy (held out)")
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=8)
        fig.tight_layout()
        return fig, Table(("clop_weight", x, "mean", "std", "runs"), rows)

    return build


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
    from simulate.stability import predict_onset

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4.6))
    rows = []
    tau_df = final_rows(data["phase_tau"])
    piv = tau_df.pivot_table(index="temperature", columns="lr", values="effective_rank", aggfunc="mean")
    im = a1.pcolormesh(_edges(piv.columns), _edges(piv.index), piv.to_numpy(), cmap="viridis", shading="flat")
    fig.colorbar(im, ax=a1, label="final effective rank")
    a1.set_xscale("log"), a1.set_yscale("log")
    b = int(tau_df["batch_size"].iloc[0])
    taus = np.geomspace(piv.index.min(), piv.index.max(), 60)
    r0 = tau_df.iloc[0]
    runs = [_phase_run(r0, temperature=float(t)) for t in taus]
    onset = np.array([predict_onset(r) for r in runs])
    a1.plot(np.where(np.isfinite(onset), onset, np.nan), taus, "r-", lw=1.8,
            label="predicted onset of collapse (simulate.stability)")
    rows += [("predicted_onset", float(t), float(v), math.nan) for t, v in zip(taus, onset)]
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
    a1.legend(fontsize=7, loc="lower left")
    rows += [("tau", t, lr, float(piv.loc[t, lr])) for t in piv.index for lr in piv.columns]
    lam_df = final_rows(data["phase_clop"])
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
    onset2 = [predict_onset(_phase_run(c0, clop_weight=float(v))) for v in piv2.index]
    rows += [("anchor_edge", float(v), float(e), math.nan) for v, e in zip(lams, anchor)]
    rows += [("predicted_onset_lambda", float(v), float(e), math.nan) for v, e in zip(piv2.index, onset2)]
    if any(np.isfinite(onset2)):
        a2.plot(np.where(np.isfinite(onset2), onset2, np.nan), np.arange(len(onset2)), "r-", lw=1.8,
                marker="o", ms=5, label="predicted onset of collapse (none predicted with CLOP)")
    a2.legend(fontsize=7, loc="lower left")
    a2.set_xlabel(r"learning rate $\eta$"), a2.set_ylabel(r"CLOP weight $\lambda$")
    a2.set_title(r"NT-Xent + CLOP, $\tau$ = %.2g" % lam_df["temperature"].iloc[0], fontsize=9)
    rows += [("lambda", lam, lr, float(piv2.loc[lam, lr])) for lam in piv2.index for lr in piv2.columns]
    fig.tight_layout()
    return fig, Table(("axis", "value", "lr", "effective_rank"), rows)


def _phase_run(row, **changes):
    """The RunConfig of a phase-diagram row (the fields the onset prediction reads)."""
    from simulate.config import RunConfig

    fields = dict(model="free", update_mode=str(row["update_mode"]), loss=str(row["loss"]),
                  temperature=float(row["temperature"]), batch_size=int(row["batch_size"]),
                  k=int(row["k"]), d=int(row["d"]), per_class=int(row["per_class"]),
                  steps=int(row["steps"]), clop_weight=float(row["clop_weight"]),
                  label_fraction=float(row["label_fraction"]))
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


def build_etf_vs_orthonormal(data):
    fin = final_rows(data["etf"])
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    rows = []
    for ax, (value, label) in zip(axes, [("probe_acc", "linear-probe accuracy"),
                                         ("effective_rank", "effective rank (RankMe)"),
                                         ("min_class_angle", "smallest between-class angle (deg)")]):
        s = summarise(fin, ["prototypes", "lr"], value)
        for k, proto in enumerate(["orthonormal", "simplex"]):
            part = s[s["prototypes"] == proto].sort_values("lr")
            scale = 180 / math.pi if value == "min_class_angle" else 1.0
            ax.errorbar(part["lr"], part["mean"] * scale, yerr=part["std"].fillna(0) * scale, marker="o",
                        ms=3, capsize=2, color=f"C{k}", label=f"CLOP, {proto} prototypes")
            rows += [(value, proto, r.lr, r["mean"] * scale, r["std"] * scale, r["count"])
                     for _, r in part.iterrows()]
        ax.set_xscale("log")
        ax.set_xlabel(r"learning rate $\eta$")
        ax.set_ylabel(label)
        ax.legend(fontsize=7)
    fig.suptitle("Orthonormal against simplex-ETF prototypes (NT-Xent + CLOP)", fontsize=10)
    fig.tight_layout()
    return fig, Table(("metric", "prototypes", "lr", "mean", "std", "runs"), rows)


def build_paper_lr_regimes(data):
    """LARS learning-rate sweep in the paper's recipe, on the mixture and on digits."""
    panels = [("repr_probe_acc", "linear-probe accuracy\n(representation, held out)"),
              ("variance", "variance of the normalised\nprojections"),
              ("repr_effective_rank", "effective rank of the\nrepresentation (RankMe)")]
    sweeps = [("paper_mixture", "Gaussian mixture"), ("paper_digits", "digits (8x8)")]
    fig, axes = plt.subplots(len(sweeps), len(panels), figsize=(15, 8), squeeze=False)
    rows: list = []
    for (key, name), line in zip(sweeps, axes):
        fin = final_rows(data[key])
        k = int(fin["k"].iloc[0])
        for ax, (value, label) in zip(line, panels):
            start = len(rows)
            _lr_curves(ax, fin, value, rows, label)
            rows[start:] = [(key, *r) for r in rows[start:]]
            if value.endswith("acc"):
                ax.axhline(1 / k, color="0.5", lw=0.8, ls=":", label="chance")
            ax.set_title(name, fontsize=9)
        line[0].legend(fontsize=7)
    r0 = final_rows(data[sweeps[0][0]]).iloc[0]
    fig.suptitle(f"LARS (trust {r0.lars_trust:g}, momentum {r0.momentum:g}, weight decay "
                 f"{r0.weight_decay:g}), {int(r0.warmup_steps)} warmup steps then cosine decay, "
                 f"tau = {r0.temperature:g}, projector {r0.projector_dims}: NT-Xent (dashed) and "
                 f"NT-Xent + CLOP (solid); x: some runs diverged", fontsize=10)
    fig.tight_layout()
    return fig, Table(("sweep", "metric", "loss", "clop_weight", "lr", "mean", "std", "runs",
                       "diverged_frac"), rows)


register(Figure(
    id="lr_regimes", title="Accuracy against learning rate, with and without CLOP",
    caption=("Held-out linear-probe (left) and kNN (right) accuracy, mean and std over seeds, against "
             "the learning rate for NT-Xent, SupCon, DCL, VICReg and Barlow Twins on an MLP encoder, "
             "with (solid) and without (dashed) CLOP; x marks learning rates at which some runs diverged."),
    preset_sweeps=("lr",), build=build_lr_regimes))
register(Figure(
    id="variance_vs_lr", title="Embedding variance and effective rank against learning rate",
    caption="Variance of the normalised embeddings and RankMe effective rank at the end of training, same runs as lr_regimes.",
    preset_sweeps=("lr",), build=build_variance_vs_lr))
register(Figure(
    id="toy_3d", title="Rank-1 clusters in 3-D: learned embeddings on the sphere",
    caption=("Three classes, each a rank-1 Gaussian in R^3, views by sign flip plus noise; the final "
             "normalised embeddings (colour: class) for each loss, without (top) and with (bottom) "
             "CLOP; the panel title gives the collapse state."),
    preset_sweeps=("toy",), build=build_toy_3d))
register(Figure(
    id="batch_size", title="Accuracy against batch size",
    caption=("Held-out linear-probe accuracy of NT-Xent with and without CLOP against the batch size. "
             "These curves do not separate: rerun with 5 seeds at the quick settings (300 steps, "
             "lr 1), every batch size from 8 to 256, with and without CLOP, gave a mean accuracy "
             "between 0.78 and 0.82 with a seed std of 0.016 to 0.031 (128 held-out points), so "
             "the differences between curves stay within about one standard deviation."),
    preset_sweeps=("batch",),
    build=_on_off_curve("batch", "batch_size", "batch size", "Accuracy against batch size")))
register(Figure(
    id="label_fraction", title="Accuracy against the labelled fraction",
    caption=("Held-out linear-probe accuracy of NT-Xent + CLOP against the fraction of labelled points "
             "used by CLOP; dashed: NT-Xent without CLOP."),
    preset_sweeps=("labels",),
    build=_on_off_curve("labels", "label_fraction", "labelled fraction",
                        "Accuracy against the fraction of labels used by CLOP", baseline_x=True)))
register(Figure(
    id="trajectories_vs_bound", title="Trajectories at 0.5, 0.9, 1.1 and 2 times the predicted rate",
    caption=("For each threshold claim, the claimed quantity in the matching simulation "
             "(simulate.theory_sims) at eta = 0.5, 0.9, 1.1 and 2 x eta_c, with the prediction dotted "
             "(exact map for anchor and pair, linear rate for ntxent_pair). Right: real engine runs "
             "(free embeddings, NT-Xent, sphere_raw, tau = 0.2, batch 32) at 0.5, 0.9, 1.1 and 2 x "
             "the predicted onset of collapse (simulate.stability.predict_onset): effective rank "
             "against step, with the collapse threshold dotted."),
    preset_sweeps=(), build=build_trajectories))
register(Figure(
    id="phase_diagram", title="Final effective rank over (eta, tau) and (eta, lambda)",
    caption=("Left: NT-Xent on free embeddings with unprojected updates (sphere_raw), final effective "
             "rank over learning rate and temperature, with the predicted onset of collapse "
             "(simulate.stability.predict_onset, red) and the rate above which +-u* attracts (claim "
             "rank1_cycle, n = batch size, mean-over-anchors units; dashed, drawn only for NT-Xent "
             "with raw-gradient steps and no CLOP, where its assumptions hold). Right: the same with "
             "CLOP over (eta, lambda), with the rate above which the prototype pull is unstable "
             "(claim anchor_map, dashed); no collapse is predicted with CLOP."),
    preset_sweeps=("phase_tau", "phase_clop"), build=build_phase_diagram))
register(Figure(
    id="norm_growth", title="Norm growth in the free mode",
    caption="Sum of squared embedding norms under plain SGD on NT-Xent against the norm_growth identity.",
    preset_sweeps=(), build=build_norm_growth))
register(Figure(
    id="etf_vs_orthonormal", title="Orthonormal against simplex-ETF prototypes",
    caption=("Accuracy, effective rank and the smallest angle between class means against the learning "
             "rate for CLOP with orthonormal and with simplex-ETF prototypes."),
    preset_sweeps=("etf",), build=build_etf_vs_orthonormal))
register(Figure(
    id="paper_lr_regimes", title="LARS learning-rate sweep in the paper's recipe, mixture and digits",
    caption=("The paper's training recipe (LARS with trust coefficient 0.001, momentum 0.9, weight "
             "decay 1e-6; linear warmup then cosine decay; tau = 0.5; an MLP encoder with a projector "
             "head) over learning rates 1e-6 to 10, on the Gaussian mixture (top) and on the shipped "
             "8x8 digits (bottom), NT-Xent with (solid) and without (dashed) CLOP: held-out "
             "linear-probe accuracy of the representation, variance of the normalised projections "
             "and the representation's effective rank at the end of training, mean and std over "
             "seeds. The paper reports three regimes on CIFAR-10 (not learning at 1e-7 to 1e-5, "
             "mild at 1e-4 to 1e-3, collapse at 1e-2 to 1); the figure shows what these small "
             "settings give, without tuning."),
    preset_sweeps=("paper_mixture", "paper_digits"), build=build_paper_lr_regimes))

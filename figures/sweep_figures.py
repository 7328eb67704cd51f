"""Figures drawn from sweep results alone: accuracy, variance, rank and embeddings against the
learning rate, batch size, labelled fraction and prototypes.

Every builder takes ``data``: a mapping from sweep name (see ``simulate/presets/*.yaml``) to
the sweep's results table (``simulate.sweep.load_results``), plus ``embeddings`` tables where
a sweep saves them. Builders return the figure and a :class:`Table` of the plotted numbers.
The figures are registered, with their captions, in :mod:`figures.sim_figures`.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from .registry import Table, plt

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
    _draw_recovery_onsets(a2, fin, rows)
    a2.legend(fontsize=7, ncol=2)
    fig.suptitle("Collapse at large learning rates: variance and effective rank (solid: with CLOP)",
                 fontsize=10)
    fig.tight_layout()
    return fig, Table(("metric", "loss", "clop_weight", "lr", "mean", "std", "runs", "diverged_frac"), rows)


#: the loss whose onsets :func:`_draw_recovery_onsets` draws, and the levels' colours (apart
#: from the losses' C0-C4)
RECOVERY_LOSS = "ntxent"
LEVEL_COLOURS = {"complete": "black", "dimensional": "0.55"}


def _draw_recovery_onsets(ax, fin: pd.DataFrame, rows: list):
    """Vertical lines at the onsets of complete and dimensional collapse that the recovery law
    predicts (:mod:`simulate.stability.recovery`) for :data:`RECOVERY_LOSS`, with (solid) and
    without (dashed) CLOP: the median over the sweep's seeds, each seed's dimensional threshold
    read from its run at the sweep's smallest rate (the reference). A note lists onsets right of
    the swept rates or not predicted; nothing is drawn where the law does not apply."""
    from simulate.stability.recovery import law_applies, recovery_onsets

    part = fin[fin["loss"] == RECOVERY_LOSS]
    if part.empty:
        return
    lo, hi = float(fin["lr"].min()), float(fin["lr"].max())
    notes = []
    for clop in sorted(set(part["clop_weight"])):
        ref_rows = part[(part["clop_weight"] == clop) & (part["lr"] == part["lr"].min())]
        ref_rows = ref_rows.drop_duplicates("seed").sort_values("seed")
        runs = [run_of_row(r) for _, r in ref_rows.iterrows()]
        if not runs or law_applies(runs[0]):
            continue
        refs = [{"effective_rank": float(r["effective_rank"])} for _, r in ref_rows.iterrows()]
        law = recovery_onsets(runs, refs, tuple(LEVEL_COLOURS))
        for level in tuple(LEVEL_COLOURS):
            per_seed = np.array([o["onsets"][(level, "effective_rank")] for o in law], dtype=float)
            onset = math.nan if np.isnan(per_seed).any() else float(np.median(per_seed))
            rows.append(("predicted_onset", f"{RECOVERY_LOSS}:{level}", clop, onset, math.nan,
                         math.nan, len(per_seed), 0.0))
            what = f"NT-Xent{' + CLOP' if clop > 0 else ''}: {level} onset (recovery law)"
            if math.isfinite(onset) and lo <= onset <= hi:
                ax.axvline(onset, color=LEVEL_COLOURS[level], ls="-" if clop > 0 else "--", lw=1.2,
                           label=what)
            else:
                notes.append(f"{what}: " + ("not predicted (below the law's range)" if math.isnan(onset)
                                            else "none" if onset == math.inf else f"{onset:.3g}"))
    if notes:
        ax.text(0.02, 0.02, "not drawn:\n" + "\n".join(notes), transform=ax.transAxes,
                fontsize=6, va="bottom")


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


def on_off_curve(data_key, x, xlabel, title, log=True, baseline_x=None):
    """A builder of probe accuracy against ``x`` from sweep ``data_key``, with and without CLOP
    (``baseline_x``: the run without CLOP drawn as one dashed level)."""
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


def run_of_row(row):
    """The :class:`simulate.config.RunConfig` of a results row (every run field is a column)."""
    from dataclasses import fields

    from simulate.config import RunConfig

    return RunConfig(**{f.name: (row[f.name].item() if hasattr(row[f.name], "item") else row[f.name])
                        for f in fields(RunConfig)})


def _edges_of_stability(fin: pd.DataFrame) -> list[tuple[float, float]]:
    """``(clop_weight, edge of stability at initialisation)`` of a sweep's configuration per
    CLOP weight, the median over its seeds
    (:func:`simulate.stability.encoder_onset.encoder_edges`: the curvature at initialisation
    seen through the sweep's optimizer; NaN where not derived)."""
    from simulate.stability.encoder_onset import encoder_edges

    out = []
    for clop in sorted(set(fin["clop_weight"])):
        part = fin[fin["clop_weight"] == clop].drop_duplicates("seed")
        edges = [encoder_edges(run_of_row(r)) for _, r in part.iterrows()]
        out.append((float(clop), float(np.median([e["eos_edge"] for e in edges]))))
    return out


def _draw_edges_of_stability(ax, fin: pd.DataFrame, rows: list, key: str):
    """Vertical lines at the edge of stability at initialisation on a rank panel; a note
    where it falls right of the swept rates. The edge is reported, not a prediction: no onset
    of dimensional collapse is derived under LARS (:mod:`simulate.stability.encoder_onset`,
    docs/onset.md)."""
    lo, hi = float(fin["lr"].min()), float(fin["lr"].max())
    notes = []
    for clop, eos in _edges_of_stability(fin):
        rows.append((key, "edge_of_stability", "ntxent", clop, eos, math.nan, math.nan, 0, math.nan))
        what = f"edge of stability at init{' (CLOP)' if clop > 0 else ''}"
        if math.isfinite(eos) and lo <= eos <= hi:
            ax.axvline(eos, color="0.55", ls="-" if clop > 0 else "--", lw=1.2, label=what)
        elif math.isfinite(eos):
            notes.append(f"{what}: {eos:.3g}")
    if notes:
        ax.text(0.02, 0.02, "right of the swept rates:\n" + "\n".join(notes), transform=ax.transAxes,
                fontsize=6, va="bottom")
    ax.legend(fontsize=6)


def _draw_decay_edge(ax, fin: pd.DataFrame, rows: list, key: str):
    """Vertical black lines at the predicted onset of complete collapse of the projections,
    LARS's weight-decay edge (:mod:`simulate.stability.lars_decay`), dashed without and solid
    with CLOP, and the complete level's rank; a note where the edge falls right of the swept
    rates or is not derived."""
    from simulate.stability.lars_decay import decay_edge_applies, lars_decay_edge
    from simulate.stability.levels import COLLAPSED_RANK

    lo, hi = float(fin["lr"].min()), float(fin["lr"].max())
    ax.axhline(COLLAPSED_RANK, color="black", lw=0.8, ls=":", label=f"complete collapse (rank {COLLAPSED_RANK:g})")
    notes = []
    for clop in sorted(set(fin["clop_weight"])):
        run = run_of_row(fin[fin["clop_weight"] == clop].iloc[0])
        edge = lars_decay_edge(run)
        rows.append((key, "predicted_complete_onset", run.loss, clop, edge, math.nan, math.nan, 0, math.nan))
        what = f"complete onset, weight-decay edge{' (CLOP)' if clop > 0 else ''}"
        if math.isfinite(edge) and lo <= edge <= hi:
            ax.axvline(edge, color="black", ls="-" if clop > 0 else "--", lw=1.2, label=what)
        else:
            notes.append(f"{what}: " + (f"{edge:.3g}" if math.isfinite(edge)
                                        else f"not predicted ({decay_edge_applies(run)})"))
    if notes:
        ax.text(0.02, 0.02, "not drawn:\n" + "\n".join(notes), transform=ax.transAxes,
                fontsize=6, va="bottom")
    ax.legend(fontsize=6)


def build_paper_lr_regimes(data):
    """LARS learning-rate sweep in the paper's recipe, on the mixture and on digits."""
    panels = [("repr_probe_acc", "linear-probe accuracy\n(representation, held out)"),
              ("variance", "variance of the normalised\nprojections"),
              ("repr_effective_rank", "effective rank of the\nrepresentation (RankMe)"),
              ("effective_rank", "effective rank of the\nprojections (what the loss sees)")]
    sweeps = [("paper_mixture", "Gaussian mixture"), ("paper_digits", "digits (8x8)")]
    fig, axes = plt.subplots(len(sweeps), len(panels), figsize=(20, 8), squeeze=False)
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
            if value == "repr_effective_rank":
                _draw_edges_of_stability(ax, fin, rows, key)
            if value == "effective_rank":
                _draw_decay_edge(ax, fin, rows, key)
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

"""Figures drawn from `theory` alone: cobweb plots of the one-step maps and critical rates."""

from __future__ import annotations

import numpy as np

import theory

from .explorer import cobweb_path, iterate
from .registry import Figure, Table, plt, register


def _cobweb(ax, kind, eta, w, x0, steps, lo, hi, title):
    f = theory.step_map(kind, eta=eta, w=w)
    xs = np.linspace(lo, hi, 400)
    ax.plot(xs, f(xs), color="C0", lw=1.6)
    ax.plot(xs, xs, color="0.6", lw=0.8, ls="--")
    orbit = iterate(kind, eta, w, x0, steps)
    ax.plot(*cobweb_path(orbit), color="C3", lw=0.9)
    ax.set_xlim(lo, hi)
    ax.set_ylim(min(lo, float(np.min(f(xs)))), hi)
    ax.set_title(title, fontsize=9)
    return orbit


def build_maps(data=None):
    rows = []
    fig, axes = plt.subplots(2, 3, figsize=(11, 7))
    w = 1.0
    eta_anchor = theory.critical_lr("anchor", w=w)
    for ax, factor in zip(axes[0], (0.5, 0.9, 1.25)):
        eta = factor * eta_anchor
        pts = _cobweb(ax, "anchor", eta, w, 1.2, 25, -np.pi / 2, np.pi / 2,
                      f"anchor map, $\\eta w$ = {eta * w:.2f} ($\\eta_c w$ = 2)")
        ax.set_xlabel(r"$\theta$")
        ax.set_ylabel(r"$\theta'$")
        if eta * w > 2:
            ts = theory.anchor_cycle_angle(eta * w)
            ax.axhline(ts, color="C2", lw=0.8, ls=":")
            ax.axhline(-ts, color="C2", lw=0.8, ls=":", label=r"period-2 orbit $\pm\theta^*$")
            ax.legend(fontsize=7, loc="lower right")
        rows += [("anchor", eta * w, k, p) for k, p in enumerate(pts)]
    eta_pair = theory.critical_lr("pair", w=w)
    for ax, factor in zip(axes[1], (0.5, 0.9, 1.5)):
        eta = factor * eta_pair
        pts = _cobweb(ax, "pair", eta, w, 0.2, 25, -1.0, 1.0,
                      f"pair map (attraction), $\\beta$ = {eta * w:.2f} ($\\beta_c$ = 1)")
        ax.set_xlabel(r"$\cos\theta$")
        ax.set_ylabel(r"$\cos\theta'$")
        rows += [("pair", eta * w, k, p) for k, p in enumerate(pts)]
    fig.suptitle("One-step maps below and above their critical learning rates")
    fig.tight_layout()
    return fig, Table(("map", "eta_w", "step", "value"), rows)


def lambdify_batch_rate():
    """The splitting-mode rate of claim ntxent_batch (simplex arrangement), lambdified."""
    import sympy as sp

    from theory.symbols import n, tau, w

    expr = theory.critical_lr_expr("ntxent_batch_simplex").subs(w, 0)
    return sp.lambdify((tau, n), expr, "numpy")


def build_ntxent_critical(data=None):
    taus = np.geomspace(0.1, 2.0, 80)
    rows = []
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    rate = lambdify_batch_rate()
    for k, batch in enumerate((8, 64, 512)):
        # N pairs at the vertices of a regular simplex in R^(N-1), every point moving (claim
        # ntxent_batch, splitting modes); dashed: claim ntxent_pair with its fixed antipodal
        # negatives, which does not hold when the negatives are anchors too
        exact = [rate(t, batch - 1) for t in taus]
        fixed = []
        for t in taus:
            p = theory.ntxent_p_pos(t, 2 * batch - 2, -1.0)
            fixed.append(theory.critical_lr("ntxent_pair", tau=t, p_pos=p))
        ax1.loglog(taus, exact, color=f"C{k}", label=f"N = {batch} pairs")
        ax1.loglog(taus, fixed, color=f"C{k}", ls="--", lw=0.9)
        rows += [("ntxent_batch_simplex", batch, t, e, c) for t, e, c in zip(taus, exact, fixed)]
    ax1.set_xlabel(r"temperature $\tau$")
    ax1.set_ylabel(r"critical learning rate $\eta_c$ (sum over anchors)")
    ax1.set_title("N aligned pairs at simplex vertices, every point moving (solid: ntxent_batch)\n"
                  "dashed: ntxent_pair, 2N - 2 fixed antipodal negatives", fontsize=9)
    ax1.legend(fontsize=8)
    import sympy as sp

    from theory.symbols import n as n_sym
    from theory.symbols import tau as tau_sym

    candidate = sp.lambdify((tau_sym, n_sym), theory.ntxent.RANK1_CANDIDATE, "numpy")
    for k, n in enumerate((3, 8, 64)):
        exact, cand = [], []
        for t in taus:
            exact.append(theory.critical_lr("rank1_cycle", tau=t, n=n))
            cand.append(float(candidate(t, n)))
        exact = np.array(exact)
        ax2.loglog(taus, np.where(np.isfinite(exact), exact, np.nan), color=f"C{k}",
                   label=f"n = {n} per side")
        ax2.loglog(taus, cand, color=f"C{k}", ls="--", lw=0.9)
        rows += [("rank1_cycle", n, t, e, c) for t, e, c in zip(taus, exact, cand)]
    ax2.set_xlabel(r"temperature $\tau$")
    ax2.set_ylabel(r"$\eta$ above which $\pm u^*$ attracts")
    ax2.set_title("rank-1 two-cycle, unprojected update\n(solid: derived; dashed: candidate "
                  r"$\tau/(\tanh(1/\tau) - 1/n)$)", fontsize=9)
    ax2.legend(fontsize=8)
    fig.tight_layout()
    return fig, Table(("claim", "size", "tau", "eta_c", "comparison"), rows)


register(Figure(
    id="maps",
    title="Cobweb plots of the anchor and pair maps",
    caption=(
        "Top: angle to a fixed prototype under the anchor map at eta*w = 1, 1.8 and 2.5 "
        "(threshold 2; above it an attracting period-2 orbit appears). Bottom: cosine of an "
        "attracting pair at beta = 0.5, 0.9 and 1.5 (threshold 1)."
    ),
    preset_sweeps=(),
    build=build_maps,
))

register(Figure(
    id="ntxent_critical_lr",
    title="Critical learning rate of NT-Xent against temperature",
    caption=(
        "Left: eta_c of a full batch of N aligned pairs at the vertices of a regular simplex, "
        "every point moving (claim ntxent_batch, splitting modes) against tau; dashed: claim "
        "ntxent_pair, whose 2N - 2 negatives are fixed and antipodal (not a SimCLR batch). Right: the "
        "rate above which the rank-1 two-cycle attracts (claim rank1_cycle); missing values: "
        "never attracting. NT-Xent summed over anchors (SimCLR's mean over 2N anchors "
        "multiplies every rate by 2N)."
    ),
    preset_sweeps=(),
    build=build_ntxent_critical,
))

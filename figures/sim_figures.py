"""The simulation figures of the paper: one registry entry each (id, title, caption, the preset
sweeps it reads, its builder), in the order ``python -m figures`` lists, draws and indexes them.

The builders live by job: :mod:`figures.sweep_figures` (drawn from sweep results alone) and
:mod:`figures.prediction_figures` (drawing a prediction over what is simulated).
"""

from __future__ import annotations

from .prediction_figures import build_norm_growth, build_phase_diagram, build_trajectories
from .registry import Figure, register
from .sweep_figures import (
    build_etf_vs_orthonormal, build_lr_regimes, build_paper_lr_regimes, build_toy_3d,
    build_variance_vs_lr, on_off_curve,
)


register(Figure(
    id="lr_regimes", title="Accuracy against learning rate, with and without CLOP",
    caption=("Held-out linear-probe (left) and kNN (right) accuracy, mean and std over seeds, against "
             "the learning rate for NT-Xent, SupCon, DCL, VICReg and Barlow Twins on an MLP encoder, "
             "with (solid) and without (dashed) CLOP; x marks learning rates at which some runs diverged."),
    preset_sweeps=("lr",), build=build_lr_regimes))
register(Figure(
    id="variance_vs_lr", title="Embedding variance and effective rank against learning rate",
    caption=("Variance of the normalised embeddings and RankMe effective rank at the end of training, same "
             "runs as lr_regimes. Vertical lines: the onsets of complete (black) and dimensional (grey) "
             "collapse of NT-Xent that the recovery law predicts (simulate.stability.recovery; dashed "
             "without, solid with CLOP)."),
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
    build=on_off_curve("batch", "batch_size", "batch size", "Accuracy against batch size")))
register(Figure(
    id="label_fraction", title="Accuracy against the labelled fraction",
    caption=("Held-out linear-probe accuracy of NT-Xent + CLOP against the fraction of labelled points "
             "used by CLOP; dashed: NT-Xent without CLOP."),
    preset_sweeps=("labels",),
    build=on_off_curve("labels", "label_fraction", "labelled fraction",
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
             "head) over learning rates 1e-6 to 1e4, on the Gaussian mixture (top) and on the shipped "
             "8x8 digits (bottom), NT-Xent with (solid) and without (dashed) CLOP: held-out "
             "linear-probe accuracy of the representation, variance of the normalised projections, "
             "the representation's and the projections' effective rank at the end of training, mean "
             "and std over seeds. On the representation's rank panels, grey vertical lines mark the "
             "edge of stability at initialisation (simulate.stability.encoder_onset, the trust "
             "ratios frozen), dashed without and solid with CLOP. On the projections' rank panels, "
             "black vertical lines mark the predicted onset of complete collapse: LARS's "
             "weight-decay edge, peak lr x trust = 2 (1 + momentum) (Nesterov: 2 (1 + momentum) / "
             "(1 + 2 momentum); simulate.stability.lars_decay), above which the weight-decay term of "
             "the trust ratio is unstable, the weights blow up and the network stops learning; the dotted line is the complete level's rank, 1.5. Values "
             "beyond the swept rates are written in the panel. No onset of dimensional collapse is "
             "drawn: none is derived under LARS. In these 300-step runs the ranks' dip at lr "
             "0.03-0.1 is a transient of the biases (stepped by plain SGD, they outgrow "
             "the outputs' spread and every embedding points one way; with the weights frozen "
             "it stays), which the weights undo within 1000-3000 steps; in 3000-step runs rank "
             "is lost for good from lr x trust 0.013-0.032 (docs/onset.md, python -m figures "
             "onset --grid paper --steps 3000). The paper reports three regimes on CIFAR-10 (not learning at 1e-7 to 1e-5, "
             "mild at 1e-4 to 1e-3, collapse at 1e-2 to 1); the figure shows what these small "
             "settings give, without tuning."),
    preset_sweeps=("paper_mixture", "paper_digits"), build=build_paper_lr_regimes))

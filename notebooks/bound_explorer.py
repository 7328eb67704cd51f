# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Bound explorer
#
# Move the sliders: the learning rate $\eta$, the weight $w$ of a cosine term, the temperature
# $\tau$, the number of points per side $n$ and the update mode. The cobweb plots show the
# one-step maps of `theory` (anchor pull toward a prototype; a pair of points), the right panel
# their trajectories and every critical learning rate, marked ABOVE or below the current $\eta$.
# Everything is computed from the SymPy expressions of `theory`.

# %%
import matplotlib.pyplot as plt
import ipywidgets as widgets
from IPython.display import display

import theory
from figures.explorer import MODES, explorer_figure, notebook_size, thresholds

# %%
for name in ("anchor", "pair", "ntxent_pair", "rank1_cycle"):
    print(f"{name:12s} eta_c expression: {theory.critical_lr_expr(name)}")

# %%
out = widgets.Output()


def redraw(eta=1.5, w=1.0, tau=0.5, n=8, mode="projected (sphere)"):
    with out:
        out.clear_output(wait=True)
        fig = explorer_figure(eta=eta, w=w, tau=tau, n=n, mode=mode)
        plt.show(fig)


controls = widgets.interactive(
    redraw,
    eta=widgets.FloatLogSlider(value=1.5, base=10, min=-2, max=2, step=0.02, description="eta"),
    w=widgets.FloatLogSlider(value=1.0, base=10, min=-1, max=1, step=0.02, description="w"),
    tau=widgets.FloatLogSlider(value=0.5, base=10, min=-1.3, max=0.3, step=0.02, description="tau"),
    n=widgets.IntSlider(value=8, min=2, max=128, description="n"),
    mode=widgets.Dropdown(options=list(MODES), description="update"),
)
display(controls, out)

# %% [markdown]
# The same numbers without widgets (this cell also runs headless):

# %%
for eta in ([0.5, 2.5] if notebook_size() == "small" else [0.5, 1.0, 1.9, 2.1, 4.0]):
    print(eta, {k: ("ABOVE" if v["above"] else "below") for k, v in thresholds(eta, 1.0, 0.5, 8).items()})

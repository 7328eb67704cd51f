# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     notebook_metadata_filter: -jupytext.text_representation.jupytext_version
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#   kernelspec:
#     display_name: Python 3 (ipykernel)
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

# %% tags=["parameters"]
# Parameters. CLOP_LAB_NOTEBOOK_SIZE=small prints a shorter table (a smoke run).
import os

SIZE = os.environ.get("CLOP_LAB_NOTEBOOK_SIZE", "full")
if SIZE not in ("small", "full"):
    raise ValueError(f"CLOP_LAB_NOTEBOOK_SIZE must be small or full, got {SIZE!r}")

# %%
# %matplotlib inline
import ipywidgets as widgets
import matplotlib.pyplot as plt
from IPython.display import display

import theory
from figures.explorer import MODES, explorer_figure, thresholds

# %%
for name in ("anchor", "pair", "ntxent_pair", "rank1_cycle"):
    print(f"{name:12s} eta_c expression: {theory.critical_lr_expr(name)}")

# %%
controls = {
    "eta": widgets.FloatLogSlider(value=1.5, base=10, min=-2, max=2, step=0.02, description="eta",
                                  continuous_update=False),
    "w": widgets.FloatLogSlider(value=1.0, base=10, min=-1, max=1, step=0.02, description="w",
                                continuous_update=False),
    "tau": widgets.FloatLogSlider(value=0.5, base=10, min=-1.3, max=0.3, step=0.02, description="tau",
                                  continuous_update=False),
    "n": widgets.IntSlider(value=8, min=2, max=128, description="n", continuous_update=False),
    "mode": widgets.Dropdown(options=list(MODES), description="update"),
}
plot = widgets.Output()


def redraw(change=None):
    """Draw the figure for the current control values into ``plot`` (replacing the last one)."""
    with plot:
        plot.clear_output(wait=True)
        fig = explorer_figure(**{k: c.value for k, c in controls.items()})
        display(fig)
        plt.close(fig)


for c in controls.values():
    c.observe(redraw, names="value")
display(widgets.VBox([widgets.HBox(list(controls.values())[:3]),
                      widgets.HBox(list(controls.values())[3:]), plot]))
redraw()

# %% [markdown]
# The same numbers without widgets:

# %%
for eta in ([0.5, 2.5] if SIZE == "small" else [0.5, 1.0, 1.9, 2.1, 4.0]):
    print(eta, {k: ("ABOVE" if v["above"] else "below") for k, v in thresholds(eta, 1.0, 0.5, 8).items()})

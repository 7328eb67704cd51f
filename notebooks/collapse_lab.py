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
# # Collapse lab
#
# Build a small sweep with the widgets (losses, CLOP on/off, learning rates), run it on the CPU
# or a GPU (`device auto`) with a progress bar, and compare the trajectories of the effective
# rank and the mean cosine: CLOP (solid) against no CLOP (dashed). Results are cached in
# `results/lab/`: running the same sweep again only redraws.

# %%
import tempfile
from pathlib import Path

import ipywidgets as widgets
import matplotlib.pyplot as plt
from IPython.display import display

from figures.explorer import lab_figure, lab_spec, notebook_size, run_lab

SMALL = notebook_size() == "small"
RESULTS = Path(tempfile.mkdtemp()) if SMALL else Path("../results/lab")

# %%
losses = widgets.SelectMultiple(options=["ntxent", "supcon", "dcl", "vicreg", "barlow"], value=["ntxent"],
                                description="losses")
clop = widgets.SelectMultiple(options=[0.0, 0.3, 1.0, 3.0], value=[0.0, 1.0], description="CLOP lambda")
lrs = widgets.SelectMultiple(options=[0.01, 0.1, 1.0, 10.0, 100.0, 1000.0], value=[0.1, 10.0, 1000.0],
                             description="lr")
steps = widgets.IntSlider(value=200, min=20, max=2000, step=20, description="steps")
button = widgets.Button(description="run")
out = widgets.Output()


def on_run(_=None):
    spec = lab_spec(losses.value, clop.value, lrs.value, steps.value)
    name = "-".join(f"{k}={v}" for k, v in sorted(spec.items()) if isinstance(v, list))
    with out:
        out.clear_output(wait=True)
        df = run_lab(spec, RESULTS / str(abs(hash(name))))
        plt.show(lab_figure(df))


button.on_click(on_run)
display(widgets.VBox([widgets.HBox([losses, clop, lrs]), steps, button, out]))

# %% [markdown]
# Run once with the default selection (this cell also runs headless):

# %%
on_run()

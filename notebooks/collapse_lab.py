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
# # Collapse lab
#
# Build a small sweep with the widgets (losses, CLOP on/off, learning rates), run it on the CPU
# or a GPU (`device auto`) with a progress bar, and compare the trajectories of the effective
# rank and the mean cosine: CLOP (solid) against no CLOP (dashed). Results are cached in
# `results/lab/`, one folder per sweep named by a digest of its spec: running the same sweep
# again (after a kernel restart too) only redraws.

# %% tags=["parameters"]
# Parameters. CLOP_LAB_NOTEBOOK_SIZE=small trains a few steps on a few points (a smoke run)
# and keeps its results in a temporary folder.
import os

SIZE = os.environ.get("CLOP_LAB_NOTEBOOK_SIZE", "full")
if SIZE not in ("small", "full"):
    raise ValueError(f"CLOP_LAB_NOTEBOOK_SIZE must be small or full, got {SIZE!r}")

# %%
# %matplotlib inline
import tempfile
from pathlib import Path

import ipywidgets as widgets
import matplotlib.pyplot as plt
from IPython.display import display

from figures.explorer import lab_figure, lab_folder, lab_spec, run_lab

RESULTS = Path(tempfile.mkdtemp()) if SIZE == "small" else Path("../results/lab").resolve()

# %%
losses = widgets.SelectMultiple(options=["ntxent", "supcon", "dcl", "vicreg", "barlow"], value=["ntxent"],
                                description="losses")
clop = widgets.SelectMultiple(options=[0.0, 0.3, 1.0, 3.0], value=[0.0, 1.0], description="CLOP lambda")
lrs = widgets.SelectMultiple(options=[0.01, 0.1, 1.0, 10.0, 100.0, 1000.0], value=[0.1, 10.0, 1000.0],
                             description="lr")
steps = widgets.IntSlider(value=200, min=20, max=2000, step=20, description="steps")
button = widgets.Button(description="run")
plot = widgets.Output()


def on_run(_=None):
    """Run (or load from the cache) the selected sweep and draw it into ``plot``."""
    spec = lab_spec(losses.value, clop.value, lrs.value, steps.value, size=SIZE)
    with plot:
        plot.clear_output(wait=True)
        print(f"results: {lab_folder(spec, RESULTS)}")
        df = run_lab(spec, RESULTS, quiet=False)
        fig = lab_figure(df)
        display(fig)
        plt.close(fig)


button.on_click(on_run)
display(widgets.VBox([widgets.HBox([losses, clop, lrs]), steps, button, plot]))

# %% [markdown]
# Run once with the default selection:

# %%
on_run()

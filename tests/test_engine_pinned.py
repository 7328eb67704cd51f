"""The engine's output for a small pinned spec equals a stored table, column by column: a
change that makes a configuration train along another trajectory must show here (and bump
``TRAJECTORY_VERSION``, then regenerate the table with ``python tests/test_engine_pinned.py``).

Floats are compared to rtol 1e-5 (another CPU's BLAS may round the last bits differently over
these few steps); everything else exactly. Columns added to the table later (new run fields
and metrics) are not in a stored table of an earlier version: the stored columns must all
be there and equal; the new ones are checked by the tests of what they hold."""

from pathlib import Path

import numpy as np
import pandas as pd

from simulate.engine import TRAJECTORY_VERSION

#: the stored table of this trajectory version
EXPECTED = Path(__file__).resolve().parent / "data" / f"pinned_small_v{TRAJECTORY_VERSION}.parquet"
SPECS = [
    {"model": "free", "loss": "ntxent", "k": 3, "d": 5, "per_class": 8, "batch_size": 4, "steps": 8,
     "log_every": 4, "label_fraction": 0.5, "lr": [0.3, 30.0], "clop_weight": [0.0, 1.0],
     "momentum": [0.0, 0.5], "update_mode": ["free", "sphere", "sphere_raw"], "seed": [0, 1]},
    {"model": "mlp", "loss": ["ntxent", "supcon", "dcl"], "k": 3, "d": 6,
     "per_class": 12, "batch_size": 6, "steps": 8, "log_every": 4, "hidden": 8, "out_dim": 4,
     "label_fraction": 0.5, "lr": [0.05], "clop_weight": [0.0, 0.5], "distance": ["cosine", "euclidean"],
     "weight_decay": [0.0, 0.01], "seed": [3]},
    # VICReg and Barlow Twins are unbounded: at lr 0.05 their objective reaches 1e31 in 8 steps and
    # a CPU's rounding moves the table by 1e-3, so they train at a rate where float32 tracks float64
    {"model": "mlp", "loss": ["vicreg", "barlow"], "k": 3, "d": 6,
     "per_class": 12, "batch_size": 6, "steps": 8, "log_every": 4, "hidden": 8, "out_dim": 4,
     "label_fraction": 0.5, "lr": [0.002], "clop_weight": [0.0, 0.5], "distance": ["cosine", "euclidean"],
     "weight_decay": [0.0, 0.01], "seed": [3]},
]
#: float columns are compared to this relative tolerance (another CPU's BLAS rounds differently)
RTOL = 1e-5


def pinned_table(out: Path) -> pd.DataFrame:
    from simulate.store import load_results
    from simulate.sweep import run_sweep

    frames = []
    for i, spec in enumerate(SPECS):
        run_sweep(spec, out / str(i), device="cpu", quiet=True)
        frames.append(load_results(out / str(i)))
    return pd.concat(frames, ignore_index=True)


def test_pinned_spec_gives_the_stored_table(tmp_path):
    assert EXPECTED.exists(), f"no stored table for trajectory version {TRAJECTORY_VERSION}: regenerate it"
    got = pinned_table(tmp_path)
    want = pd.read_parquet(EXPECTED)
    assert set(want.columns) <= set(got.columns), sorted(set(want.columns) - set(got.columns))
    got = got[list(want.columns)]
    floats = [c for c in want.columns if want[c].dtype.kind == "f"]
    # spectra: a list of floats per row (None where not logged), compared as floats
    lists = [c for c in want.columns if want[c].map(lambda v: v is not None and not isinstance(v, str)
                                                    and hasattr(v, "__len__")).any()]
    tolerant = floats + lists
    pd.testing.assert_frame_equal(got.drop(columns=tolerant), want.drop(columns=tolerant), check_exact=True)
    pd.testing.assert_frame_equal(got[floats], want[floats], rtol=RTOL, atol=1e-7)
    for c in lists:
        for i, (g, w) in enumerate(zip(got[c], want[c])):
            assert (g is None) == (w is None), (c, i)
            if w is not None:
                np.testing.assert_allclose(np.asarray(g, float), np.asarray(w, float), rtol=RTOL, atol=1e-7,
                                           err_msg=f"{c}, row {i}")


def test_pinned_runs_are_well_conditioned():
    """The tolerance above holds only for runs that do not amplify rounding: every pinned run
    trained in float32 must agree with itself trained in float64 to half of it. A run that
    diverges or grows without bound amplifies a BLAS's last bits past any fixed tolerance and
    makes the stored table depend on the CPU that wrote it."""
    import torch

    from simulate.config import expand
    from simulate.engine.train import train_chunk
    from simulate.plan import plan_chunks

    cols = ["objective", "mean_norm", "variance", "effective_rank", "mean_cos", "proto_cos"]
    for spec in SPECS:
        for chunk in plan_chunks(expand(spec), 1 << 34):
            single = pd.DataFrame(train_chunk(chunk, "cpu", torch.float32).rows)
            double = pd.DataFrame(train_chunk(chunk, "cpu", torch.float64).rows)
            for c in cols:
                x, y = single[c].to_numpy(float), double[c].to_numpy(float)
                both_nan = np.isnan(x) & np.isnan(y)
                err = np.where(both_nan, 0.0, np.abs(x - y) / np.maximum(np.abs(y), 1e-2))
                worst = int(np.argmax(err))
                assert err[worst] <= RTOL / 2, (c, single.run_id[worst], err[worst])


if __name__ == "__main__":  # regenerate the stored table
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        pinned_table(Path(tmp)).to_parquet(EXPECTED, index=False)
    print(f"wrote {EXPECTED}")

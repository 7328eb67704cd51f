"""The bench command's grid and report: every optimizer's engine run agrees with its
per-configuration torch.optim loop (timings are reported, never asserted)."""

import subprocess
import sys
from pathlib import Path

import pytest

from simulate.bench import OPTIMIZER_SETTINGS, bench_grid, parse_optimizers, run_bench
from simulate.config import SpecError


def test_bench_engine_equals_the_loop_for_every_optimizer():
    names = list(OPTIMIZER_SETTINGS)
    out = run_bench("cpu", steps=4, repeats=1, loop=True, verbose=False, optimizers=names)
    assert list(out["optimizers"]) == names and set(out["time_vs_sgd"]) == set(names)
    for name, rec in out["optimizers"].items():
        assert rec["runs_compared"] == 64, name
        # float32, 4 steps at learning rates up to 10. The engine's gradient (the fused pass)
        # and the loop's (autograd) round differently; Adam divides each coordinate by its own
        # gradient scale, so a coordinate whose NT-Xent and CLOP parts nearly cancel moves by
        # up to lr (1 - beta1) / sqrt(1 - beta2) whatever its size, and rounding shows there
        # (float64 agreement to 1e-6 is tests/test_optim.py's)
        tol = 5e-2 if name in ("adam", "adamw") else 1e-4
        assert rec["max_abs_diff"] < tol, (name, rec["max_abs_diff"])
        assert rec["loop_s"] > 0 and rec["batched_s"] > 0 and rec["speedup"] > 0
    grid = bench_grid(4, "sgd-momentum")
    assert {r.optimizer for r in grid} == {"sgd"} and {r.momentum for r in grid} == {0.9}
    assert {r.clop_weight for r in grid} == {0.0, 1.0} and len({r.chunk_key() for r in grid}) == 1


def test_bench_refuses_unknown_optimizers_by_name():
    with pytest.raises(SpecError, match="--optimizer"):
        parse_optimizers("sgd,rmsprop")
    env_root = Path(__file__).resolve().parents[1]
    bad = subprocess.run([sys.executable, "-m", "simulate", "bench", "--optimizer", "rmsprop"],
                         capture_output=True, text=True, cwd=env_root, timeout=120)
    assert bad.returncode == 2 and "--optimizer" in bad.stderr and "Traceback" not in bad.stderr


def test_mlp_bench_engine_equals_the_sequential_loop_at_small_lr():
    import math

    from simulate.bench_mlp import mlp_grid, run_mlp_bench

    runs = mlp_grid(5, lrs=[1e-2], seeds=[0])  # CLOP weight 0 and 1: 2 configurations
    assert len(runs) == 2 and {r.model for r in runs} == {"mlp"}
    out = run_mlp_bench("cpu", 5, 1, verbose=False, runs=runs)
    for key in ("speedup", "vmap_speedup", "floor_fraction", "max_abs_diff", "engine_s", "loop_s", "vmap_s",
                "f64_err_engine", "f64_err_loop", "max_abs_diff_conditioned"):
        assert math.isfinite(out[key]), (key, out[key])
    assert out["runs_compared"] == 2 and out["runs_conditioned"] == 2
    # the engine against independent references: nn.Sequential + torch.optim.SGD per run, a
    # torch.func ensemble, and the engine itself in float64
    assert out["max_abs_diff"] < 1e-4 and out["vmap_max_abs_diff"] < 1e-4
    assert out["f64_err_engine"] < 1e-5 and out["f64_err_loop"] < 1e-5


@pytest.mark.parametrize("optimizer", ["sgd-momentum", "lars", "adam"])
def test_mlp_bench_other_optimizers_and_projector_equal_their_loop(optimizer):
    """Every optimizer, with a projector head: the engine against nn.Sequential + its
    torch.optim optimizer (the per-configuration LARS for lars); no vmap ensemble there."""
    from simulate.bench_mlp import mlp_grid, run_mlp_bench

    from dataclasses import replace

    runs = mlp_grid(5, lrs=[0.1], seeds=[0], optimizer=optimizer, projector="8,4")
    if optimizer == "adam":
        # Adam moves a coordinate whose gradient is near eps by about lr whatever its size, and
        # at lr 0.1 its steps cross ReLU boundaries: float32 rounding then decides, by the CPU's
        # summation order, how far either side lands from float64 (lr 0.1, eps 1e-8: engine
        # 1e-3 and loop 1.7e-4 on one CPU, 4.5e-4 and 4.7e-4 on another). At lr 0.01 and eps
        # 1e-6 both stay at 1e-5 of float64 while the parameters move by about 0.05
        runs = [replace(r, lr=0.01, eps=1e-6) for r in runs]
    assert {r.projector_dims for r in runs} == {"8,4"}
    out = run_mlp_bench("cpu", 5, 1, verbose=False, runs=runs, optimizer=optimizer)
    assert out["runs_compared"] == 2 and out["vmap_s"] is None and out["vmap_speedup"] is None
    assert out["max_abs_diff"] < 1e-4, out["max_abs_diff"]
    assert out["f64_err_engine"] < 1e-4 and out["f64_err_loop"] < 1e-4


def test_mlp_bench_json_is_strict_and_a_closed_pipe_is_quiet(capsys):
    """The JSON line parses without NaN or Infinity (NaN is null); ``| head -1`` ends the
    command without a traceback."""
    import json

    from simulate.bench_mlp import main_bench_mlp

    assert main_bench_mlp("cpu", 1, 1, ["lars"]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    out = json.loads(line, parse_constant=lambda name: pytest.fail(f"non-standard JSON constant {name}"))
    assert out["vmap_max_abs_diff"] is None and out["optimizers"]["lars"]["vmap_speedup"] is None
    env_root = Path(__file__).resolve().parents[1]
    cmd = (f"{sys.executable} -m simulate bench --model mlp --optimizer lars --steps 1 --repeats 1 "
           f"--device cpu | head -1")
    pipe = subprocess.run(cmd, shell=True, capture_output=True, text=True, cwd=env_root, timeout=300)
    assert "Traceback" not in pipe.stderr and pipe.stdout.strip(), pipe.stderr


def test_mlp_bench_refuses_bad_options_in_one_line():
    env_root = Path(__file__).resolve().parents[1]
    cases = [(["--model", "mlp", "--optimizer", "rmsprop"], "--optimizer"),
             (["--model", "mlp", "--projector", "64,x"], "--projector"),
             (["--model", "mlp", "--projector", "1000000000", "--steps", "1"], "--projector must be layer widths whose runs fit"),
             (["--projector", "64,16"], "--projector needs --model mlp")]
    for args, needle in cases:
        bad = subprocess.run([sys.executable, "-m", "simulate", "bench", *args],
                             capture_output=True, text=True, cwd=env_root, timeout=120)
        assert bad.returncode == 2 and needle in bad.stderr and "Traceback" not in bad.stderr, (args, bad.stderr)
        assert len(bad.stderr.strip().splitlines()) == 1

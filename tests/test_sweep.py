"""Sweeps: spec validation, chunking, atomic resumable output, the CLI."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from simulate.config import SpecError, expand, load_spec
from simulate.plan import parse_memory, plan_chunks, run_bytes
from simulate.sweep import load_results, run_sweep

TINY = {"model": "mlp", "loss": "ntxent", "lr": [0.05, 0.5], "seed": [0, 1], "clop_weight": [0.0, 1.0],
        "k": 3, "d": 6, "per_class": 16, "batch_size": 8, "steps": 10, "log_every": 5,
        "hidden": 16, "out_dim": 8, "label_fraction": 0.5}


def _table(out):
    return load_results(out)


def test_sweep_writes_table_spec_and_provenance(tmp_path):
    res = run_sweep(TINY, tmp_path / "a", device="cpu", quiet=True)
    assert res.total_runs == 8 and res.chunks_run >= 1
    df = load_results(tmp_path / "a")
    assert len(df) == 8 * 3  # runs x logged steps (0, 5, 10)
    assert {"run_id", "step", "objective", "loss", "effective_rank", "lr", "clop_weight", "seed", "state"} <= set(df.columns)
    assert json.loads((tmp_path / "a" / "spec.json").read_text())["lr"] == [0.05, 0.5]
    prov = json.loads((tmp_path / "a" / "provenance.json").read_text())
    assert prov["versions"]["torch"] and prov["device"] == "cpu" and prov["seeds"] == [0, 1]
    assert prov["wall_s"] > 0 and prov["chunks"]


def test_rerun_skips_finished_runs(tmp_path):
    run_sweep(TINY, tmp_path, device="cpu", quiet=True)
    again = run_sweep(TINY, tmp_path, device="cpu", quiet=True)
    assert again.skipped_runs == 8 and again.chunks_run == 0
    assert len(load_results(tmp_path)) == 24


def test_different_spec_in_same_folder_is_refused(tmp_path):
    run_sweep(TINY, tmp_path, device="cpu", quiet=True)
    with pytest.raises(SpecError, match="different sweep"):
        run_sweep({**TINY, "lr": [0.1]}, tmp_path, device="cpu", quiet=True)


def test_resume_after_kill_mid_chunk_gives_the_uninterrupted_table(tmp_path):
    spec = {**TINY, "steps": 400, "log_every": 100, "seed": [0, 1, 2]}
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps(spec))
    per_chunk = str(run_bytes(expand(spec)[0]) * 2)
    cmd = [sys.executable, "-m", "simulate", "sweep", str(spec_file), "--out", str(tmp_path / "killed"),
           "--device", "cpu", "--max-memory", per_chunk, "--quiet"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    chunks = tmp_path / "killed" / "chunks"
    deadline = time.time() + 240
    while time.time() < deadline and len(list(chunks.glob("*.parquet"))) < 2:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)  # mid-chunk: later chunks are still training
    proc.wait()
    done = len(list(chunks.glob("*.parquet")))
    assert 2 <= done < 6, "the kill should land while chunks remain"
    finish = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert finish.returncode == 0, finish.stderr
    assert f"{done * 2} already done" in finish.stdout
    run_sweep(spec, tmp_path / "clean", device="cpu", quiet=True, max_memory=int(per_chunk))
    resumed, clean = _table(tmp_path / "killed"), _table(tmp_path / "clean")
    assert not resumed.duplicated(["run_id", "step"]).any()
    pd.testing.assert_frame_equal(resumed, clean)


@pytest.mark.parametrize(
    "change, word",
    [
        ({"loss": "simclr"}, "loss"),
        ({"lr": [0.1, -0.5]}, "lr"),
        ({"batch_size": 1000}, "batch_size"),
        ({"clop_weight": 1.0, "k": 9, "out_dim": 8}, "k"),
        ({"momentum": 1.0}, "momentum"),
        ({"update_mode": "sphere"}, "update_mode"),
        ({"learning_rate": 0.1}, "learning_rate"),
        ({"lr": []}, "lr"),
        ({"optimizer": "lars", "lars_biases": "adapt"}, "lars_biases"),
    ],
)
def test_invalid_spec_fails_before_training(tmp_path, change, word):
    with pytest.raises(SpecError, match=word):
        run_sweep({**TINY, **change}, tmp_path / "out", device="cpu", quiet=True)
    assert not (tmp_path / "out").exists()


def test_spec_files_yaml_json_and_presets(tmp_path):
    (tmp_path / "s.yaml").write_text("loss: ntxent\nlr: [0.1, 1.0]\nseeds: 3\n")
    spec = load_spec(tmp_path / "s.yaml")
    assert spec["seed"] == [0, 1, 2] and len(expand(spec)) == 6
    (tmp_path / "s.json").write_text(json.dumps({"lr": 0.1}))
    assert load_spec(tmp_path / "s.json") == {"lr": 0.1}
    from simulate.config import resolve_specs

    for preset in ("quick", "paper"):
        specs = resolve_specs(preset)
        assert {"lr", "toy", "batch", "labels", "phase_tau", "phase_clop", "etf"} <= set(specs)
        assert all(len(expand(s)) >= 2 for s in specs.values())
    with pytest.raises(SpecError, match="preset"):
        resolve_specs("nope")


def test_plan_chunks_groups_by_shape_and_budget():
    runs = expand({**TINY, "batch_size": [8, 16]})
    chunks = plan_chunks(runs, 10**12)
    # one chunk per batch size: NT-Xent with cosine CLOP takes the fused pass, where a zero CLOP
    # weight adds exact zeros, so CLOP on and off share a program
    assert len(chunks) == 2 and all(len({r.batch_size for r in c}) == 1 for c in chunks)
    assert all({r.clop_weight > 0 for r in c} == {False, True} for c in chunks)
    # a loss without the fused pass: a CLOP term is another program
    supcon = plan_chunks(expand({**TINY, "loss": "supcon", "batch_size": [8, 16]}), 10**12)
    assert len(supcon) == 4 and all(len({(r.batch_size, r.clop_weight > 0) for r in c}) == 1 for c in supcon)
    one_each = plan_chunks(runs, max(run_bytes(r) for r in runs))
    assert sum(len(c) for c in one_each) == len(runs)
    with pytest.raises(ValueError, match=r"max_memory .* less than one run of this sweep needs"):
        plan_chunks(runs, run_bytes(runs[0]) - 1)


def test_parse_memory():
    assert parse_memory("4GB") == 4 * 1024**3 and parse_memory("512MB") == 512 * 1024**2
    assert parse_memory("1000") == 1000
    with pytest.raises(ValueError, match="max_memory"):
        parse_memory("lots")


def test_cli_help_and_tiny_sweep(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    for sub in ([], ["run"], ["sweep"], ["bench"]):
        out = subprocess.run([sys.executable, "-m", "simulate", *sub, "--help"], capture_output=True,
                             text=True, env=env, timeout=120)
        assert out.returncode == 0 and "usage" in out.stdout
    spec = tmp_path / "tiny.yaml"
    spec.write_text("model: free\nk: 2\nd: 4\nper_class: 8\nbatch_size: 4\nsteps: 4\nlog_every: 2\nlr: [0.1, 1.0]\n")
    done = subprocess.run([sys.executable, "-m", "simulate", "sweep", str(spec), "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert len(load_results(tmp_path / "o")) == 2 * 3
    bad = subprocess.run([sys.executable, "-m", "simulate", "run", "--lr", "-1"], capture_output=True,
                         text=True, env=env, timeout=120)
    assert bad.returncode == 2 and "lr" in bad.stderr


def test_cli_run_prints_trajectory():
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    out = subprocess.run([sys.executable, "-m", "simulate", "run", "--model", "free", "--k", "2", "--d", "4",
                          "--per-class", "8", "--batch-size", "4", "--steps", "4", "--log-every", "2"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert lines[0].split()[:3] == ["step", "objective", "effective_rank"] and len(lines) == 4


def test_half_written_chunk_is_ignored_and_removed(tmp_path):
    chunks = tmp_path / "chunks"
    chunks.mkdir(parents=True)
    (chunks / ".tmp-abc.partial").write_bytes(b"PAR1 cut short")
    res = run_sweep(TINY, tmp_path, device="cpu", quiet=True)
    assert res.skipped_runs == 0 and not list(chunks.glob(".tmp-*"))
    assert len(load_results(tmp_path)) == 24


def test_results_of_another_trajectory_version_are_set_aside_not_resumed(tmp_path):
    from simulate.engine import TRAJECTORY_VERSION

    out = tmp_path / "v"
    run_sweep(TINY, out, device="cpu", quiet=True)
    fresh = _table(out)
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["trajectory_version"] == TRAJECTORY_VERSION
    # a folder from an engine that trained differently (no version recorded: version 1)
    del prov["trajectory_version"]
    (out / "provenance.json").write_text(json.dumps(prov))
    old_files = sorted(p.name for p in (out / "chunks").glob("*.parquet"))
    for f in (out / "chunks").glob("*.parquet"):
        pd.read_parquet(f).assign(objective=-1.0).to_parquet(f)  # mark them
    res = run_sweep(TINY, out, device="cpu", quiet=True)
    assert res.skipped_runs == 0 and res.chunks_run >= 1
    moved = sorted(p.name for p in (out / "superseded" / "v1" / "chunks").glob("*.parquet"))
    assert moved == old_files
    pd.testing.assert_frame_equal(_table(out), fresh)  # recomputed, none of the marked rows
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["trajectory_version"] == TRAJECTORY_VERSION and prov["superseded"][0]["version"] == 1


def test_dry_run_plans_without_writing(tmp_path):
    from simulate.sweep import dry_run

    out = tmp_path / "dry"
    lines = dry_run(TINY, out, device="cpu", max_memory=run_bytes(expand(TINY)[0]) * 3)
    # one chunk key (CLOP on and off share the fused pass), at most 3 runs a chunk: 3 + 3 + 2
    assert lines[0].startswith("sweep (one)") and "8 runs, 0 already done, 3 chunk(s)" in lines[0]
    chunk_lines = [ln for ln in lines if ln.strip().startswith("chunk")]
    assert len(chunk_lines) == 3 and all(" MB" in ln or " kB" in ln for ln in chunk_lines)
    assert sum(int(ln.split(":")[1].split()[0]) for ln in chunk_lines) == 8
    assert "estimated wall time on cpu" in lines[-1] and not out.exists()
    run_sweep(TINY, out, device="cpu", quiet=True)
    again = dry_run(TINY, out, device="cpu")
    assert "8 already done, 0 chunk(s)" in again[0] and len(again) == 1


def test_memory_model_counts_the_projector_and_adam_buffers():
    base = {"model": "mlp", "k": 3, "d": 6, "per_class": 16, "hidden": 16, "out_dim": 8, "batch_size": 8}
    plain, proj = run_bytes(expand(base)[0]), run_bytes(expand({**base, "projector_dims": "32,8"})[0])
    adam = run_bytes(expand({**base, "optimizer": "adam"})[0])
    head = 8 * 32 + 32 + 32 * 8 + 8  # the projector's weights and biases
    assert proj - plain >= 4 * 4 * head  # at least its parameter copies, in float32
    params = 6 * 16 + 16 + 16 * 16 + 16 + 16 * 8 + 8
    assert adam - plain == 4 * 2 * params  # two moment buffers

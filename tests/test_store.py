"""The sweep store: one writer per folder, verified chunks, quarantine, provenance rebuilt,
results independent of the chunking, and the frozen-run flag."""

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pandas as pd
import pytest

from simulate.config import expand
from simulate.plan import parse_memory, run_bytes
from simulate.store import FolderLocked, OutputError, SweepStore, load_results, parquet_bytes
from simulate.sweep import run_sweep
from simulate.engine import TRAJECTORY_VERSION, train_chunk

ROOT = Path(__file__).resolve().parents[1]
TINY = {"model": "mlp", "loss": "ntxent", "lr": [0.05, 0.5], "seed": [0, 1], "clop_weight": [0.0, 1.0],
        "k": 3, "d": 6, "per_class": 16, "batch_size": 8, "steps": 10, "log_every": 5,
        "hidden": 16, "out_dim": 8, "label_fraction": 0.5}


def _budget(spec, runs_per_chunk):
    return run_bytes(expand(spec)[0]) * runs_per_chunk


def _chunks(out):
    return sorted((Path(out) / "chunks").glob("*.parquet"))


def _prov(out):
    return json.loads((Path(out) / "provenance.json").read_text())


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    """The uninterrupted table of TINY, for comparisons."""
    out = tmp_path_factory.mktemp("clean")
    run_sweep(TINY, out, device="cpu", quiet=True, max_memory=_budget(TINY, 3))
    return load_results(out)


# ---------------------------------------------------------------------- one writer per folder
def test_locked_folder_is_refused_and_nothing_is_touched(tmp_path):
    holder = SweepStore(tmp_path, TRAJECTORY_VERSION)
    holder.acquire()
    (tmp_path / "chunks").mkdir()
    partial = tmp_path / "chunks" / ".tmp-inflight.partial"  # another sweep's write in flight
    partial.write_bytes(b"PAR1 being written")
    try:
        with pytest.raises(FolderLocked, match=r"being written by another sweep \(pid \d+"):
            run_sweep(TINY, tmp_path, device="cpu", quiet=True)
    finally:
        holder.release()
    assert partial.exists() and not (tmp_path / "spec.json").exists() and not _chunks(tmp_path)


def test_cli_into_a_locked_folder_exits_2_with_one_line(tmp_path):
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps(TINY))
    out = tmp_path / "out"
    holder = SweepStore(out, TRAJECTORY_VERSION)
    holder.acquire()
    try:
        done = subprocess.run([sys.executable, "-m", "simulate", "sweep", str(spec), "--out", str(out)],
                              capture_output=True, text=True, cwd=ROOT, timeout=300,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
    finally:
        holder.release()
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "another sweep" in lines[0], lines
    assert "Traceback" not in done.stderr


def test_a_waiting_sweep_starts_when_the_folder_is_released(tmp_path, clean):
    holder = SweepStore(tmp_path, TRAJECTORY_VERSION)
    holder.acquire()
    result = {}

    def second():
        try:
            result["res"] = run_sweep(TINY, tmp_path, device="cpu", quiet=True, wait=600)
        except Exception as exc:  # noqa: BLE001  (reported below)
            result["error"] = exc

    t = threading.Thread(target=second)
    t.start()
    assert not _chunks(tmp_path)  # it waits: the lock is held
    holder.release()
    t.join(timeout=600)
    assert "error" not in result, result.get("error")
    assert result["res"].total_runs == 8
    pd.testing.assert_frame_equal(load_results(tmp_path), clean, check_exact=True)


def test_two_specs_never_mix_in_one_folder(tmp_path):
    run_sweep(TINY, tmp_path, device="cpu", quiet=True)
    from simulate.config import SpecError

    with pytest.raises(SpecError, match="different sweep"):
        run_sweep({**TINY, "lr": [0.1]}, tmp_path, device="cpu", quiet=True)
    assert set(load_results(tmp_path).lr) == {0.05, 0.5}


def test_second_budget_into_a_finished_folder_adds_no_rows(tmp_path):
    run_sweep(TINY, tmp_path, device="cpu", quiet=True, max_memory=_budget(TINY, 8))
    again = run_sweep(TINY, tmp_path, device="cpu", quiet=True, max_memory=_budget(TINY, 1))
    assert again.skipped_runs == 8 and again.chunks_run == 0
    df = load_results(tmp_path)
    assert len(df) == 8 * 3 and not df.duplicated(["run_id", "step"]).any()


@pytest.mark.parametrize("where", ["file", "under_file"])
def test_out_that_is_or_sits_under_a_file_is_refused(tmp_path, where):
    f = tmp_path / "f"
    f.write_text("x")
    out = f if where == "file" else f / "sub"
    with pytest.raises(OutputError, match="output folder .*(existing file|under the file)"):
        run_sweep(TINY, out, device="cpu", quiet=True)


def test_unwritable_out_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "access", lambda *a, **k: False)  # (root may write anywhere)
    with pytest.raises(OutputError, match="cannot be written"):
        run_sweep(TINY, tmp_path / "ro", device="cpu", quiet=True)


# ---------------------------------------------------------------------- verified chunks
@pytest.mark.parametrize("damage", ["truncate", "garbage", "drop_steps"])
def test_damaged_chunk_is_quarantined_and_recomputed(tmp_path, clean, damage, capsys):
    run_sweep(TINY, tmp_path, device="cpu", quiet=True, max_memory=_budget(TINY, 3))
    bad = _chunks(tmp_path)[0]
    n_bad = pd.read_parquet(bad).run_id.nunique()
    if damage == "truncate":
        bad.write_bytes(bad.read_bytes()[:200])
    elif damage == "garbage":
        bad.write_bytes(os.urandom(4096))
    else:  # valid Parquet without the later steps
        pd.read_parquet(bad).query("step < 10").to_parquet(bad)
    capsys.readouterr()
    partial = load_results(tmp_path)  # readers leave the bad chunk out, with a warning
    assert bad.name in capsys.readouterr().err and len(partial) < len(clean)
    res = run_sweep(TINY, tmp_path, device="cpu", quiet=True, max_memory=_budget(TINY, 3))
    err = capsys.readouterr().err
    assert "damaged" in err and bad.name in err and "quarantine" in err
    assert (tmp_path / "quarantine" / bad.name).exists()
    assert res.skipped_runs == 8 - n_bad and res.chunks_run == 1  # only the bad chunk's runs
    pd.testing.assert_frame_equal(load_results(tmp_path), clean, check_exact=True)
    prov = _prov(tmp_path)
    assert sorted(c["file"] for c in prov["chunks"]) == [f.name for f in _chunks(tmp_path)]


def test_chunk_without_later_steps_is_caught_without_a_recorded_digest(tmp_path, clean):
    run_sweep(TINY, tmp_path, device="cpu", quiet=True, max_memory=_budget(TINY, 3))
    (tmp_path / "provenance.json").unlink()
    bad = _chunks(tmp_path)[0]  # rewritten as this version's chunk, without its last step
    bad.write_bytes(parquet_bytes(pd.read_parquet(bad).query("step < 10"), TRAJECTORY_VERSION))
    run_sweep(TINY, tmp_path, device="cpu", quiet=True, max_memory=_budget(TINY, 3))
    assert (tmp_path / "quarantine" / bad.name).exists()
    pd.testing.assert_frame_equal(load_results(tmp_path), clean, check_exact=True)


def test_missing_provenance_is_rebuilt_not_treated_as_an_old_version(tmp_path, capsys):
    run_sweep(TINY, tmp_path, device="cpu", quiet=True, max_memory=_budget(TINY, 3))
    files = [f.name for f in _chunks(tmp_path)]
    (tmp_path / "provenance.json").unlink()
    res = run_sweep(TINY, tmp_path, device="cpu", quiet=True, max_memory=_budget(TINY, 3))
    assert res.skipped_runs == 8 and res.chunks_run == 0
    assert not (tmp_path / "superseded").exists() and "rebuilt" in capsys.readouterr().err
    prov = _prov(tmp_path)
    assert prov["trajectory_version"] == TRAJECTORY_VERSION
    assert sorted(c["file"] for c in prov["chunks"]) == files and all(c["sha256"] for c in prov["chunks"])


@pytest.mark.parametrize("content", ["[]", "{not json", '{"chunks": 3}', '{"chunks": [1, 2]}',
                                     '{"chunks": [{"file": "x.parquet", "wall_s": "slow"}]}'])
def test_unreadable_provenance_is_set_aside_and_rebuilt(tmp_path, content, capsys):
    run_sweep(TINY, tmp_path, device="cpu", quiet=True, max_memory=_budget(TINY, 3))
    n = len(_chunks(tmp_path))
    (tmp_path / "provenance.json").write_text(content)
    res = run_sweep(TINY, tmp_path, device="cpu", quiet=True, max_memory=_budget(TINY, 3))
    assert res.skipped_runs == 8 and "provenance.json" in capsys.readouterr().err
    assert (tmp_path / "quarantine" / "provenance.json").read_text() == content
    assert len(_prov(tmp_path)["chunks"]) == n == len(_chunks(tmp_path))


def test_chunk_written_without_its_provenance_record_is_kept(tmp_path):
    """A sweep killed between a chunk's rename and the provenance update loses nothing."""
    run_sweep(TINY, tmp_path, device="cpu", quiet=True, max_memory=_budget(TINY, 3))
    prov = _prov(tmp_path)
    dropped = prov["chunks"].pop()
    (tmp_path / "provenance.json").write_text(json.dumps(prov))
    res = run_sweep(TINY, tmp_path, device="cpu", quiet=True, max_memory=_budget(TINY, 3))
    assert res.skipped_runs == 8 and res.chunks_run == 0
    assert dropped["file"] in {c["file"] for c in _prov(tmp_path)["chunks"]}


def test_runs_of_another_spec_never_join_the_table(tmp_path, clean, capsys):
    """With spec.json gone, a second spec's sweep sets the first one's chunks aside."""
    run_sweep(TINY, tmp_path, device="cpu", quiet=True, max_memory=_budget(TINY, 3))
    n = len(_chunks(tmp_path))
    (tmp_path / "spec.json").unlink()
    other = {**TINY, "temperature": 0.2}
    run_sweep(other, tmp_path, device="cpu", quiet=True, max_memory=_budget(TINY, 3))
    assert "not in this folder's spec" in capsys.readouterr().err
    df = load_results(tmp_path)
    assert set(df.temperature) == {0.2} and df.run_id.nunique() == 8
    assert len(list((tmp_path / "quarantine").glob("*.parquet"))) == n


def test_a_copied_chunk_adds_no_duplicate_rows(tmp_path, clean, capsys):
    run_sweep(TINY, tmp_path, device="cpu", quiet=True, max_memory=_budget(TINY, 3))
    first = _chunks(tmp_path)[0]
    (tmp_path / "chunks" / "0copy.parquet").write_bytes(first.read_bytes())
    df = load_results(tmp_path)  # the recorded chunk is read, the copy left out
    assert "already held by another chunk" in capsys.readouterr().err
    pd.testing.assert_frame_equal(df, clean, check_exact=True)
    res = run_sweep(TINY, tmp_path, device="cpu", quiet=True, max_memory=_budget(TINY, 3))
    assert res.chunks_run == 0 and (tmp_path / "quarantine" / "0copy.parquet").exists()


@pytest.mark.parametrize("content", ["{", "[]"])
def test_damaged_spec_json_is_set_aside(tmp_path, clean, content):
    run_sweep(TINY, tmp_path, device="cpu", quiet=True, max_memory=_budget(TINY, 3))
    (tmp_path / "spec.json").write_text(content)
    res = run_sweep(TINY, tmp_path, device="cpu", quiet=True, max_memory=_budget(TINY, 3))
    assert res.skipped_runs == 8 and (tmp_path / "quarantine" / "spec.json").read_text() == content
    pd.testing.assert_frame_equal(load_results(tmp_path), clean, check_exact=True)


def test_the_same_runs_written_another_way_are_the_same_sweep(tmp_path):
    run_sweep(TINY, tmp_path, device="cpu", quiet=True)
    swapped = {**TINY, "lr": [0.5, 0.05], "temperature": 0.5}  # order, and a default stated
    assert run_sweep(swapped, tmp_path, device="cpu", quiet=True).skipped_runs == 8
    from simulate.config import SpecError

    with pytest.raises(SpecError, match="differs in lr"):
        run_sweep({**TINY, "lr": [0.1]}, tmp_path, device="cpu", quiet=True)


def test_stored_files_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        run_sweep(TINY, tmp_path, device="cpu", quiet=True)
    finally:
        os.umask(old)
    for f in [*_chunks(tmp_path), tmp_path / "provenance.json", tmp_path / "spec.json"]:
        assert f.stat().st_mode & 0o777 == 0o644, f


# ---------------------------------------------------------------------- chunking
CHUNKING = {"model": "free", "loss": "ntxent", "k": 3, "d": 6, "per_class": 12, "batch_size": 6,
            "steps": 12, "log_every": 4, "label_fraction": 0.5, "lr": [0.1, 5.0],
            "clop_weight": [0.0, 1.0], "momentum": [0.0, 0.9], "seed": [0, 1]}


@pytest.mark.parametrize("spec", [CHUNKING, {**TINY, "momentum": [0.0, 0.5]}], ids=["free", "mlp"])
def test_every_column_is_the_same_whatever_the_budget(tmp_path, spec):
    tables = []
    for per_chunk in (1, 3, 64):
        out = tmp_path / str(per_chunk)
        run_sweep(spec, out, device="cpu", quiet=True, max_memory=_budget(spec, per_chunk))
        tables.append(load_results(out))
    assert len(_chunks(tmp_path / "1")) == len(expand(spec))
    for t in tables[1:]:
        pd.testing.assert_frame_equal(tables[0], t, check_exact=True)
    no_clop = tables[0][tables[0].clop_weight == 0]
    assert no_clop.proto_cos.isna().all()
    assert tables[0][tables[0].clop_weight > 0].proto_cos.notna().all()


# ---------------------------------------------------------------------- frozen runs, sizes
def test_frozen_run_is_flagged():
    """At temperature 1e-4 the float32 NT-Xent of free embeddings saturates and its gradient
    vanishes: the run stops moving, and the rows say so."""
    base = dict(model="free", loss="ntxent", k=2, d=4, per_class=8, batch_size=4, steps=20, log_every=10)
    cold = expand({**base, "temperature": 1e-4, "lr": 0.1})
    warm = expand({**base, "temperature": 0.5, "lr": 0.1})
    cold_rows = pd.DataFrame(train_chunk(cold).rows)
    warm_rows = pd.DataFrame(train_chunk(warm).rows)
    assert cold_rows.param_change.iloc[0] != cold_rows.param_change.iloc[0]  # NaN at step 0
    assert (cold_rows.step > 0).sum() == 2
    assert cold_rows[cold_rows.step > 0].frozen.all()
    assert not warm_rows[warm_rows.step > 0].frozen.any()
    assert (warm_rows[warm_rows.step > 0].param_change > 0).all()


@pytest.mark.parametrize("text", ["infGB", "nanGB", "-1GB", "0", "lots", "1e400MB"])
def test_max_memory_must_be_a_finite_positive_size(text):
    with pytest.raises(ValueError, match="max_memory"):
        parse_memory(text)


def test_cli_dry_run_prints_the_plan_and_writes_nothing(tmp_path):
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps(TINY))
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "simulate", "sweep", str(spec), "--out", str(out), "--dry-run",
                           "--device", "cpu", "--max-memory", str(_budget(TINY, 4))],
                          capture_output=True, text=True, cwd=ROOT, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert "8 runs, 0 already done, 2 chunk(s)" in lines[0]
    assert [ln.split(":")[0].strip() for ln in lines[1:3]] == ["chunk 1", "chunk 2"]
    assert lines[-1].strip().startswith("estimated wall time on cpu: about") and not out.exists()


def test_spec_keys_given_twice_are_refused(tmp_path):
    from simulate.config import SpecError, load_spec

    (tmp_path / "a.yaml").write_text("model: free\nlr: 0.1\nlr: 1.0\n")
    (tmp_path / "a.json").write_text('{"lr": 0.1, "lr": 5.0}')
    for name in ("a.yaml", "a.json"):
        with pytest.raises(SpecError, match="lr given twice"):
            load_spec(tmp_path / name)


def test_cli_refuses_ray_flags_with_the_local_executor_and_dry_run_into_another_sweep(tmp_path):
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps(TINY))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    base = [sys.executable, "-m", "simulate", "sweep", str(spec), "--out", str(tmp_path / "o")]
    for extra, flag in ((["--gpus-per-chunk", "1"], "--gpus-per-chunk"), (["--address", "h:1"], "--address")):
        done = subprocess.run(base + extra, capture_output=True, text=True, cwd=ROOT, timeout=300, env=env)
        assert done.returncode == 2 and flag in done.stderr and "--executor ray" in done.stderr
    run_sweep({**TINY, "lr": [0.1]}, tmp_path / "o", device="cpu", quiet=True)
    dry = subprocess.run(base + ["--dry-run"], capture_output=True, text=True, cwd=ROOT, timeout=300, env=env)
    assert dry.returncode == 2 and "holds a different sweep" in dry.stderr and "differs in lr" in dry.stderr

"""The sweep engine on Ray (real Ray, bound to 127.0.0.1): equality with the local executor,
a simulated two-node cluster, a worker killed mid-chunk, failures, and resume across executors."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

ray = pytest.importorskip("ray")

from simulate.config import expand  # noqa: E402
from simulate.executors import run_ray  # noqa: E402
from simulate.plan import run_bytes  # noqa: E402
from simulate.sweep import SweepFailed, load_results, run_sweep  # noqa: E402

pytestmark = [pytest.mark.xdist_group("ray"),  # one Ray instance at a time on a small machine
              pytest.mark.timeout(300)]
ROOT = Path(__file__).resolve().parents[1]
TINY = {"model": "mlp", "loss": "ntxent", "lr": [0.05, 0.5], "seed": [0, 1], "clop_weight": [0.0, 1.0],
        "k": 3, "d": 6, "per_class": 16, "batch_size": 8, "steps": 10, "log_every": 5,
        "hidden": 16, "out_dim": 8, "label_fraction": 0.5}


def _table(out):
    return load_results(out)


def _per_chunk(spec, runs_per_chunk):
    return run_bytes(expand(spec)[0]) * runs_per_chunk


@pytest.fixture
def fresh_ray():
    yield
    if ray.is_initialized():
        ray.shutdown()


def test_local_ray_instance_gives_the_local_table(tmp_path, fresh_ray):
    budget = _per_chunk(TINY, 2)
    run_sweep(TINY, tmp_path / "local", device="cpu", quiet=True, max_memory=budget)
    res = run_sweep(TINY, tmp_path / "ray", quiet=True, max_memory=budget, executor="ray")
    assert res.chunks_run == 4
    assert {n["NodeManagerAddress"] for n in ray.nodes()} == {"127.0.0.1"}
    pd.testing.assert_frame_equal(_table(tmp_path / "local"), _table(tmp_path / "ray"))
    prov = json.loads((tmp_path / "ray" / "provenance.json").read_text())
    assert prov["executor"] == "ray" and all("/" in c["host"] for c in prov["chunks"])


def test_two_node_cluster_runs_chunks_on_both_nodes(tmp_path, fresh_ray):
    from ray.cluster_utils import Cluster

    args = {"num_cpus": 1, "object_store_memory": 80 * 1024**2}
    cluster = Cluster(initialize_head=True, head_node_args={**args, "num_cpus": 0, "include_dashboard": False})
    try:
        cluster.add_node(**args)
        cluster.add_node(**args)
        assert cluster.address.startswith("127.0.0.1:"), cluster.address
        spec = {**TINY, "steps": 60}
        run_sweep(spec, tmp_path / "cluster", quiet=True, executor="ray", address=cluster.address,
                  max_memory=_per_chunk(spec, 1))
        prov = json.loads((tmp_path / "cluster" / "provenance.json").read_text())
        nodes = {c["host"] for c in prov["chunks"]}
        assert len(prov["chunks"]) == 8 and len(nodes) == 2, nodes
        run_sweep(spec, tmp_path / "local", device="cpu", quiet=True, max_memory=_per_chunk(spec, 1))
        pd.testing.assert_frame_equal(_table(tmp_path / "local"), _table(tmp_path / "cluster"))
    finally:
        ray.shutdown()
        cluster.shutdown()


def _kill_one_task_worker(stop: threading.Event, killed: list):
    """Kill (SIGKILL) the first Ray worker process found running a chunk task."""
    while not stop.is_set() and not killed:
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="ignore")
            except OSError:
                continue
            if cmd.startswith("ray::_train"):
                os.kill(int(pid), signal.SIGKILL)
                killed.append(int(pid))
                return
        time.sleep(0.05)


def test_worker_killed_mid_chunk_is_retried_and_rows_appear_once(tmp_path, fresh_ray):
    spec = {**TINY, "steps": 300, "log_every": 100}
    budget = _per_chunk(spec, 4)
    from simulate.executors import ray_init

    ray_init(num_cpus=2)
    stop, killed = threading.Event(), []
    killer = threading.Thread(target=_kill_one_task_worker, args=(stop, killed))
    killer.start()
    try:
        run_sweep(spec, tmp_path / "ray", quiet=True, executor="ray", max_memory=budget, max_retries=3)
    finally:
        stop.set()
        killer.join()
    assert killed, "no chunk worker was seen running"
    table = _table(tmp_path / "ray")
    assert not table.duplicated(["run_id", "step"]).any() and table.run_id.nunique() == 8
    run_sweep(spec, tmp_path / "local", device="cpu", quiet=True, max_memory=budget)
    pd.testing.assert_frame_equal(_table(tmp_path / "local"), table)


def test_failing_chunk_is_reported_and_the_others_finish(fresh_ray):
    good = [r.to_dict() for r in expand({**TINY, "lr": 0.1, "seed": 0, "clop_weight": 0.0})]
    bad = [{**good[0], "lr": -1.0}]  # fails inside the task, on every retry
    outcomes = {o.index: o for o in run_ray([good, bad], max_retries=1)}
    assert outcomes[0].error is None and len(outcomes[0].rows) == 3
    assert outcomes[1].rows is None and "lr must be > 0" in outcomes[1].error


def test_sweep_records_failed_chunks_and_exits_nonzero(tmp_path, monkeypatch):
    import simulate.sweep as sw
    from simulate.executors import ChunkOutcome

    def fake_ray(chunks, **kwargs):  # the first chunk fails, the others train for real
        for i, c in enumerate(chunks):
            if i == 0:
                yield ChunkOutcome(0, None, None, "RuntimeError: worker lost", "node-a", 0.1)
                continue
            outcome = next(sw.run_local([[sw.RunConfig(**d) for d in c]], "cpu"))
            outcome.index = i
            yield outcome

    monkeypatch.setattr(sw, "run_ray", fake_ray)
    with pytest.raises(SweepFailed, match="worker lost") as info:
        run_sweep(TINY, tmp_path, quiet=True, executor="ray", max_memory=_per_chunk(TINY, 4))
    assert len(info.value.result.failed) == 1 and info.value.result.chunks_run == 1
    prov = json.loads((tmp_path / "provenance.json").read_text())
    assert prov["failed_chunks"][0]["error"] == "RuntimeError: worker lost"
    assert load_results(tmp_path).run_id.nunique() == 4


def test_stop_ray_sweep_then_finish_locally(tmp_path):
    spec = {**TINY, "steps": 200, "log_every": 100, "seed": [0, 1, 2]}
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps(spec))
    budget = str(_per_chunk(spec, 2))
    base = [sys.executable, "-m", "simulate", "sweep", str(spec_file), "--out", str(tmp_path / "mixed"),
            "--max-memory", budget, "--quiet"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(base + ["--executor", "ray"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    chunks = tmp_path / "mixed" / "chunks"
    deadline = time.time() + 240
    while time.time() < deadline and not list(chunks.glob("*.parquet")) and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
    proc.send_signal(signal.SIGINT)  # stop the driver; Ray shuts down with it
    proc.wait(timeout=120)
    done = len(list(chunks.glob("*.parquet")))
    assert 1 <= done < 6
    finish = subprocess.run(base + ["--executor", "local", "--device", "cpu"], env=env, capture_output=True,
                            text=True, timeout=600)
    assert finish.returncode == 0, finish.stderr
    run_sweep(spec, tmp_path / "clean", device="cpu", quiet=True, max_memory=int(budget))
    mixed = _table(tmp_path / "mixed")
    assert not mixed.duplicated(["run_id", "step"]).any()
    pd.testing.assert_frame_equal(mixed, _table(tmp_path / "clean"))

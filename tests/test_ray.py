"""The sweep engine on Ray (real Ray, every process bound to 127.0.0.1): equality with the local
executor on a two-node cluster, a worker killed mid-chunk, failing chunks, bounded waits (connect
timeout, resources the cluster lacks), a stopped sweep finished locally, and a private instance
that does not outlive its killed driver.

Most tests share one two-node cluster (module fixture). No test depends on how fast anything
runs: where a chunk must still be running at some moment it blocks on a file (the tests swap
``simulate.executors._train`` for a closure, which Ray ships by value), and every wait is a
polling loop with a generous deadline.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pandas as pd
import pytest

ray = pytest.importorskip("ray")

from simulate import executors  # noqa: E402
from simulate.__main__ import main  # noqa: E402
from simulate.config import expand  # noqa: E402
from simulate.executors import (RayConnectTimeout, RayResourceError, check_resources,  # noqa: E402
                                ray_init, run_ray, wait_for_cluster)
from simulate.plan import run_bytes  # noqa: E402
from simulate.sweep import SweepFailed, load_results, run_sweep  # noqa: E402

pytestmark = [pytest.mark.xdist_group("ray"),  # one Ray cluster at a time on a small machine
              pytest.mark.timeout(300)]
ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
TINY = {"model": "mlp", "loss": "ntxent", "lr": [0.05, 0.5], "seed": [0, 1], "clop_weight": [0.0, 1.0],
        "k": 3, "d": 6, "per_class": 16, "batch_size": 8, "steps": 10, "log_every": 5,
        "hidden": 16, "out_dim": 8, "label_fraction": 0.5}
#: the longest any one wait below may take; never reached when things work, however slowly
DEADLINE = 180.0
LINUX_PROC = pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="reads /proc (Linux)")


def _table(out):
    return load_results(out)


def _per_chunk(spec, runs_per_chunk):
    return run_bytes(expand(spec)[0]) * runs_per_chunk


def _wait_for(condition, what: str, deadline: float = DEADLINE):
    end = time.monotonic() + deadline
    while not condition():
        if time.monotonic() > end:
            pytest.fail(f"waited {deadline:g} s for {what}")
        time.sleep(0.05)


def _spec_file(tmp_path, spec) -> Path:
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec))
    return path


# -- processes, read from /proc ------------------------------------------------------------------

def _stat(pid: int) -> tuple[int, str, int] | None:
    """(parent pid, state, start time) of a process, or None when there is none."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return int(fields[1]), fields[0], int(fields[19])


def _descendants(root: int) -> dict[int, int]:
    """Every live descendant of ``root``: pid -> start time."""
    parents = {}
    for name in os.listdir("/proc"):
        if name.isdigit() and (st := _stat(int(name))) is not None:
            parents[int(name)] = st
    found, frontier = {}, [root]
    while frontier:
        parent = frontier.pop()
        for pid, (ppid, _, start) in parents.items():
            if ppid == parent and pid not in found:
                found[pid] = start
                frontier.append(pid)
    return found


def _alive(family: dict[int, int]) -> list[int]:
    """The processes of ``family`` still running (a zombie has ended; a reused pid is another)."""
    return [pid for pid, start in family.items()
            if (st := _stat(pid)) is not None and st[2] == start and st[1] != "Z"]


def _name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
    except OSError:
        return "?"


def _environ(pid: int) -> list[bytes]:
    try:
        return Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return []


def _listening_addresses(pids) -> set[str]:
    """The local addresses of the TCP sockets the processes ``pids`` listen on."""
    inodes = set()
    for pid in pids:
        try:
            links = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
        except OSError:
            continue
        inodes |= {link[8:-1] for link in links if link.startswith("socket:[")}
    found = set()
    for table, width in (("/proc/net/tcp", 4), ("/proc/net/tcp6", 16)):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if f[3] == "0A" and f[9] in inodes:  # 0A: LISTEN
                raw = bytes.fromhex(f[1].split(":")[0])
                # the kernel prints each 32-bit word in host (little-endian) order
                words = b"".join(raw[i:i + 4][::-1] for i in range(0, width, 4))
                address = socket.inet_ntop(socket.AF_INET if width == 4 else socket.AF_INET6, words)
                found.add(address.removeprefix("::ffff:"))  # an IPv4 address on a dual-stack socket
    return found


# -- a private instance, in a driver that is then killed --------------------------------------------

DRIVER = """
import json, sys, time
from pathlib import Path
from simulate.__main__ import main

status = main(sys.argv[2:])
import ray  # imported by the sweep already, after the executor chose the loopback mode
nodes = sorted({n["NodeManagerAddress"] for n in ray.nodes()})
Path(sys.argv[1] + ".tmp").write_text(json.dumps({"status": status, "nodes": nodes}))
Path(sys.argv[1] + ".tmp").rename(sys.argv[1])
time.sleep(3600)  # until killed
"""


@LINUX_PROC
def test_private_instance_gives_the_local_table_and_dies_with_its_killed_driver(tmp_path):
    script, report = tmp_path / "driver.py", tmp_path / "report.json"
    script.write_text(DRIVER)
    budget = str(_per_chunk(TINY, 4))
    args = ["sweep", str(_spec_file(tmp_path, TINY)), "--out", str(tmp_path / "ray"),
            "--executor", "ray", "--max-memory", budget, "--quiet"]
    env = {k: v for k, v in ENV.items() if k != executors.LOOPBACK_ENV}  # the executor sets it
    with open(tmp_path / "driver.err", "wb") as err:
        proc = subprocess.Popen([sys.executable, str(script), str(report), *args], env=env,
                                stdout=subprocess.DEVNULL, stderr=err)
    family: dict[int, int] = {}
    try:
        _wait_for(lambda: report.exists() or proc.poll() is not None, "the driver's sweep")
        assert report.exists(), (tmp_path / "driver.err").read_text()[-3000:]
        assert json.loads(report.read_text()) == {"status": 0, "nodes": ["127.0.0.1"]}
        family = _descendants(proc.pid)
        names = {_name(pid) for pid in family}
        assert {"ray::DashboardAgent", "ray::RuntimeEnvAgent"} <= names, names
        assert any(n.endswith("/raylet") for n in names) and any(n.endswith("/gcs_server") for n in names)
        listening = _listening_addresses(family)
        assert listening and listening <= {"127.0.0.1", "::1"}, listening
        markers = {e for pid in family for e in _environ(pid)
                   if e.startswith(executors.INSTANCE_ENV.encode() + b"=")}
        assert len(markers) == 1, markers

        proc.kill()  # SIGKILL: nothing in the driver runs any more
        proc.wait(timeout=DEADLINE)

        def marked():
            return [int(p) for p in os.listdir("/proc") if p.isdigit() and markers & set(_environ(int(p)))]

        _wait_for(lambda: not _alive(family) and not marked(),
                  "the private instance to end after its driver was killed")
    finally:
        if proc.poll() is None:
            proc.kill()
        for pid in _alive(family):  # leave nothing behind when the test fails
            os.kill(pid, signal.SIGKILL)
    run_sweep(TINY, tmp_path / "local", device="cpu", quiet=True, max_memory=int(budget))
    pd.testing.assert_frame_equal(_table(tmp_path / "local"), _table(tmp_path / "ray"))


# -- the shared two-node cluster ----------------------------------------------------------------

@pytest.fixture(scope="module")
def cluster():
    """Two nodes of one CPU each, bound to 127.0.0.1; the second says it has one GPU (a
    resource count only, nothing asks it for CUDA). This process is connected to it."""
    from ray.cluster_utils import Cluster

    args = {"num_cpus": 1, "object_store_memory": 80 * 1024**2}
    c = Cluster(initialize_head=True, head_node_args={**args, "include_dashboard": False})
    try:
        c.add_node(**args, num_gpus=1)
        c.wait_for_nodes()
        ray_init(c.address)
        yield c
    finally:
        ray.shutdown()
        c.shutdown()


def _two_at_once(gate: Path):
    """``_train`` whose first two chunks each wait until both have started: on nodes of one
    CPU each, two chunks running at the same time run on two nodes."""
    original = executors._train

    def _train(run_dicts, device, threads):
        (gate / f"started-{uuid.uuid4().hex}").touch()
        end = time.monotonic() + DEADLINE
        while len(list(gate.glob("started-*"))) < 2 and time.monotonic() < end:
            time.sleep(0.05)
        return original(run_dicts, device, threads)

    return _train


def test_two_node_cluster_gives_the_local_table(cluster, tmp_path, monkeypatch):
    gate = tmp_path / "gate"
    gate.mkdir()
    monkeypatch.setattr(executors, "_train", _two_at_once(gate))
    budget = _per_chunk(TINY, 2)
    res = run_sweep(TINY, tmp_path / "ray", quiet=True, executor="ray", address=cluster.address,
                    max_memory=budget)
    assert res.chunks_run == 4
    assert {n["NodeManagerAddress"] for n in ray.nodes()} == {"127.0.0.1"}
    prov = json.loads((tmp_path / "ray" / "provenance.json").read_text())
    hosts = {c["host"] for c in prov["chunks"]}
    assert prov["executor"] == "ray" and len(hosts) == 2 and all("/" in h for h in hosts), hosts
    run_sweep(TINY, tmp_path / "local", device="cpu", quiet=True, max_memory=budget)
    pd.testing.assert_frame_equal(_table(tmp_path / "local"), _table(tmp_path / "ray"))


def _first_chunk_waits_to_be_killed(gate: Path):
    """``_train`` whose first chunk writes its worker's pid and waits to be killed; every other
    chunk, and the first one's retry, trains."""
    original = executors._train

    def _train(run_dicts, device, threads):
        try:
            os.close(os.open(gate / "victim", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return original(run_dicts, device, threads)
        (gate / "pid.tmp").write_text(str(os.getpid()))
        (gate / "pid.tmp").rename(gate / "pid")
        time.sleep(DEADLINE)
        raise RuntimeError("the worker of the first chunk was not killed")

    return _train


def test_worker_killed_mid_chunk_is_retried_and_rows_appear_once(cluster, tmp_path, monkeypatch):
    gate = tmp_path / "gate"
    gate.mkdir()
    monkeypatch.setattr(executors, "_train", _first_chunk_waits_to_be_killed(gate))
    killed = []

    def kill_the_first_chunk():
        end = time.monotonic() + DEADLINE
        while not (gate / "pid").exists() and time.monotonic() < end:
            time.sleep(0.05)
        if (gate / "pid").exists():
            pid = int((gate / "pid").read_text())
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    killer = threading.Thread(target=kill_the_first_chunk)
    killer.start()
    budget = _per_chunk(TINY, 2)
    try:
        run_sweep(TINY, tmp_path / "ray", quiet=True, executor="ray", address=cluster.address,
                  max_memory=budget, max_retries=2)
    finally:
        killer.join()
    assert killed, "the first chunk never started"
    table = _table(tmp_path / "ray")
    assert not table.duplicated(["run_id", "step"]).any() and table.run_id.nunique() == 8
    run_sweep(TINY, tmp_path / "local", device="cpu", quiet=True, max_memory=budget)
    pd.testing.assert_frame_equal(_table(tmp_path / "local"), table)


def test_failing_chunk_is_reported_and_the_others_finish(cluster):
    good = [r.to_dict() for r in expand({**TINY, "lr": 0.1, "seed": 0, "clop_weight": 0.0})]
    bad = [{**good[0], "lr": -1.0}]  # fails inside the task, on every retry
    outcomes = {o.index: o for o in run_ray([good, bad], address=cluster.address, max_retries=1)}
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


# -- bounded waits: connecting, resources --------------------------------------------------------

class _Listener:
    """A loopback port that accepts connections and then says nothing, or answers ``reply``."""

    def __init__(self, reply: bytes | None = None):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.reply, self.conns = reply, []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)
            if self.reply is not None:
                conn.sendall(self.reply)

    def close(self):
        self.sock.close()
        for conn in self.conns:
            conn.close()


def test_connecting_gives_up_after_the_connect_timeout(tmp_path):
    with pytest.raises(RayConnectTimeout, match=r"^no Ray cluster answered at 127\.0\.0\.1:1 within "
                                                r"0\.5 s \(.+\); .* --connect-timeout SECONDS$"):
        wait_for_cluster("127.0.0.1:1", 0.5)
    for reply, why in ((None, "no answer"), (b"HTTP/1.1 400 Bad Request\r\n\r\n", "gRPC handshake")):
        listener = _Listener(reply)
        try:
            with pytest.raises(RayConnectTimeout, match=why):
                wait_for_cluster(f"127.0.0.1:{listener.port}", 0.5)
        finally:
            listener.close()
    # the command line, in a fresh process: nothing listens on port 1
    done = subprocess.run([sys.executable, "-m", "simulate", "sweep", str(_spec_file(tmp_path, TINY)),
                           "--out", str(tmp_path / "out"), "--executor", "ray", "--address",
                           "127.0.0.1:1", "--connect-timeout", "1", "--quiet"],
                          env=ENV, capture_output=True, text=True, timeout=DEADLINE, check=False)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith("error: no Ray cluster answered at 127.0.0.1:1 within 1 s")
    assert "--connect-timeout" in done.stderr


def test_connect_timeout_must_be_positive(tmp_path, capsys):
    with pytest.raises(ValueError, match="--connect-timeout must be a number of seconds > 0"):
        ray_init("127.0.0.1:1", connect_timeout=0)
    status = main(["sweep", str(_spec_file(tmp_path, TINY)), "--out", str(tmp_path / "out"),
                   "--executor", "ray", "--address", "127.0.0.1:1", "--connect-timeout", "nan"])
    assert status == 2 and capsys.readouterr().err.startswith("error: --connect-timeout must be")


def test_a_connected_process_refuses_another_cluster(cluster):
    with pytest.raises(RuntimeError, match=f"connected to the Ray cluster at {cluster.address} already"):
        ray_init("127.0.0.1:1")


def test_gpus_the_cluster_lacks_fail_before_any_task(cluster, tmp_path, capsys):
    chunk = [r.to_dict() for r in expand({**TINY, "lr": 0.1, "seed": 0, "clop_weight": 0.0})]
    message = (f"--gpus-per-chunk 2: no node of the Ray cluster at {cluster.address} has 2 GPU(s) "
               f"and a CPU for a chunk; it has 2 live node(s), 2 CPU(s), 1 GPU(s) (at most 1 on one node)")
    with pytest.raises(RayResourceError) as info:
        run_ray([chunk], address=cluster.address, gpus_per_chunk=2)
    assert str(info.value) == message
    with pytest.raises(RayResourceError, match="--gpus-per-chunk above 1 must be a whole number"):
        run_ray([chunk], address=cluster.address, gpus_per_chunk=1.5)
    status = main(["sweep", str(_spec_file(tmp_path, TINY)), "--out", str(tmp_path / "out"),
                   "--executor", "ray", "--address", cluster.address, "--gpus-per-chunk", "2", "--quiet"])
    assert status == 2 and capsys.readouterr().err == f"error: {message}\n"
    assert not list((tmp_path / "out").glob("chunks/*.parquet"))


def test_gpus_this_machine_lacks_fail_before_a_private_instance_starts(monkeypatch):
    import torch

    monkeypatch.setattr(ray, "is_initialized", lambda: False)  # as in a fresh driver
    monkeypatch.setattr(executors, "ray_init", None)  # nothing may start
    gpus = torch.cuda.device_count() + 1
    with pytest.raises(RayResourceError, match=f"^--gpus-per-chunk {gpus}: the private Ray instance "
                                               f"runs on this machine, which has {gpus - 1} GPU"):
        run_ray([[{"steps": 5}]], gpus_per_chunk=gpus)


class _Nodes:
    """Stands in for the ray module where only ``nodes()`` is read."""

    def __init__(self, *live: dict):
        dead = {"Alive": False, "Resources": {"CPU": 8.0, "GPU": 8.0}}  # a node that left
        self._nodes = [{"Alive": True, "Resources": r} for r in live] + [dead]

    def nodes(self):
        return self._nodes


def test_resource_check_names_the_option_and_what_the_cluster_has():
    with pytest.raises(RayResourceError) as info:
        check_resources(_Nodes({"CPU": 4.0}, {"CPU": 2.0}), 1, "head:6379")
    assert str(info.value) == ("--gpus-per-chunk 1: no node of the Ray cluster at head:6379 has 1 "
                               "GPU(s) and a CPU for a chunk; it has 2 live node(s), 6 CPU(s), 0 GPU(s)")
    with pytest.raises(RayResourceError, match="has a CPU for a chunk; it has 1 live node"):
        check_resources(_Nodes({"GPU": 2.0}), 0, "head:6379")
    check_resources(_Nodes({"CPU": 1.0}, {"CPU": 1.0, "GPU": 1.0}), 0.5, "head:6379")


class _Task:
    def options(self, **kwargs):
        return self

    def remote(self, *args):
        return object()


class _ClusterLosingItsGpus:
    """Stands in for the ray module: tasks never finish, and no node has a GPU any more."""

    def __init__(self):
        self.cancelled = []

    def remote(self, fn):
        return _Task()

    def wait(self, refs, num_returns, timeout):
        return [], refs

    def nodes(self):
        return [{"Alive": True, "Resources": {"CPU": 2.0}}]

    def cancel(self, ref):
        self.cancelled.append(ref)


def test_chunks_waiting_for_gpus_the_cluster_lost_fail(monkeypatch):
    monkeypatch.setattr(executors, "RECHECK_S", 0.0)
    fake = _ClusterLosingItsGpus()
    outcomes = list(executors._ray_outcomes(fake, [[{"steps": 5}], [{"steps": 5}]], 1, 0, "h:1", None))
    assert [o.index for o in outcomes] == [0, 1] and len(fake.cancelled) == 2
    assert all(o.rows is None and "--gpus-per-chunk 1: no node" in o.error for o in outcomes)


# -- stop a Ray sweep, finish it locally ------------------------------------------------------------

STOPPER = """
import faulthandler, os, signal, sys, time
from pathlib import Path

# SIGUSR1 dumps every thread's stack to stack.txt (the test asks for it if the driver hangs)
_stack = open(Path(sys.argv[1]).parent / "stack.txt", "w")
_stack.write("SIGINT disposition at start: %r\\n" % (signal.getsignal(signal.SIGINT),))
_stack.flush()
faulthandler.register(signal.SIGUSR1, file=_stack, all_threads=True)
# Ctrl-C in a terminal reaches a process that handles SIGINT. A process started in the
# background by a shell without job control (``make test &`` in a script, as some CI runners
# do) inherits SIGINT ignored, and Python keeps an inherited SIG_IGN: the driver would never
# see the test's SIGINT.
signal.signal(signal.SIGINT, signal.default_int_handler)

import simulate.executors as executors
from simulate.__main__ import main

gate = Path(sys.argv[1])
original = executors._train


def _train(run_dicts, device, threads):
    # the first chunk trains; the others wait until released, then fail
    try:
        os.close(os.open(gate / "first", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        while not (gate / "release").exists():
            time.sleep(0.05)
        raise RuntimeError("released")
    return original(run_dicts, device, threads)


executors._train = _train
sys.exit(main(sys.argv[2:]))
"""


def test_stop_ray_sweep_then_finish_locally(cluster, tmp_path):
    script, gate, out = tmp_path / "stopper.py", tmp_path / "gate", tmp_path / "mixed"
    script.write_text(STOPPER)
    gate.mkdir()
    budget = _per_chunk(TINY, 2)  # four chunks
    base = ["sweep", str(_spec_file(tmp_path, TINY)), "--out", str(out), "--max-memory", str(budget),
            "--quiet"]
    with open(tmp_path / "driver.err", "wb") as err:
        proc = subprocess.Popen([sys.executable, str(script), str(gate), *base, "--executor", "ray",
                                 "--address", cluster.address], env=ENV, stdout=subprocess.DEVNULL,
                                stderr=err)
    try:
        _wait_for(lambda: list(out.glob("chunks/*.parquet")) or proc.poll() is not None,
                  "the first chunk to be written")
        assert proc.poll() is None, (tmp_path / "driver.err").read_text()[-3000:]
        proc.send_signal(signal.SIGINT)  # the other chunks are waiting: none can finish now
        try:
            proc.wait(timeout=DEADLINE)
        except subprocess.TimeoutExpired:  # show where the driver hangs
            proc.send_signal(signal.SIGUSR1)
            time.sleep(2)
            pytest.fail("the driver did not stop after SIGINT; its threads:\n"
                        + (tmp_path / "stack.txt").read_text()[-8000:])
    finally:
        (gate / "release").touch()
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0
    assert len(list(out.glob("chunks/*.parquet"))) == 1
    assert main([*base, "--executor", "local", "--device", "cpu"]) == 0
    run_sweep(TINY, tmp_path / "clean", device="cpu", quiet=True, max_memory=budget)
    mixed = _table(out)
    assert not mixed.duplicated(["run_id", "step"]).any()
    pd.testing.assert_frame_equal(mixed, _table(tmp_path / "clean"))

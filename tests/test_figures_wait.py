"""``python -m figures`` and another process's lock on a sweep folder under ``--results``: without
``--wait`` it exits at once with one line; with ``--wait`` it waits and then proceeds; Ctrl-C
ends with one line and leaves no figure file half-written."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from simulate.engine import TRAJECTORY_VERSION
from simulate.store import SweepStore

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
#: one tiny sweep, the one figure batch_size reads
BATCH = {"model": "mlp", "hidden": 8, "out_dim": 4, "k": 2, "d": 4, "per_class": 12,
         "label_fraction": 0.5, "batch_size": [4, 8], "steps": 4, "log_every": 2, "loss": "ntxent",
         "clop_weight": [0.0, 1.0], "lr": 1.0, "seed": 0}


def _setup(tmp_path: Path) -> tuple[list[str], Path, Path]:
    """The command drawing batch_size from the tiny preset, its sweep folder and figure folder."""
    spec = tmp_path / "tiny.json"
    spec.write_text(json.dumps({"sweeps": {"batch": BATCH}}))
    results, figs = tmp_path / "results", tmp_path / "figs"
    cmd = [sys.executable, "-m", "figures", "--preset", str(spec), "--only", "batch_size",
           "--device", "cpu", "--results", str(results), "--out", str(figs)]
    return cmd, results / "tiny" / "batch", figs


def _hold(folder: Path) -> SweepStore:
    """Take the sweep folder's lock in this process, as another sweep writing it would."""
    holder = SweepStore(folder, TRAJECTORY_VERSION)
    holder.acquire()
    return holder


def _start_waiting(cmd: list[str], seconds: str) -> subprocess.Popen:
    """``figures`` started with ``--wait seconds``, its output read as text."""
    return subprocess.Popen(cmd + ["--wait", seconds], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=ENV, cwd=ROOT)


def _until_waiting(proc: subprocess.Popen) -> str:
    """Read the command's stderr up to its ``waiting`` line (what came before, if it ended)."""
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if line.startswith("waiting up to "):
            return line
    return "".join(seen)


def _figure_files(figs: Path) -> list[Path]:
    return sorted(figs.iterdir()) if figs.exists() else []


def test_locked_results_folder_without_wait_exits_at_once_with_one_line(tmp_path):
    cmd, folder, figs = _setup(tmp_path)
    holder = _hold(folder)
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=300)
    finally:
        holder.release()
    assert done.returncode == 2, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    assert "another sweep" in lines[0] and str(folder) in lines[0] and "figures --wait SECONDS" in lines[0]
    assert not (folder / "spec.json").exists() and not _figure_files(figs)


def test_wait_proceeds_once_the_lock_is_released(tmp_path):
    cmd, folder, figs = _setup(tmp_path)
    holder = _hold(folder)
    proc = _start_waiting(cmd, "30")
    try:
        line = _until_waiting(proc)
        assert line.startswith(f"waiting up to 30 s for the process writing {str(folder)!r}"), line
        time.sleep(1)
        assert proc.poll() is None and not (folder / "spec.json").exists()  # it waits
    finally:
        holder.release()
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert "Traceback" not in err and (folder / "spec.json").exists()
    assert {p.name for p in _figure_files(figs)} >= {"batch_size.png", "batch_size.pdf", "batch_size.csv"}
    assert f"wrote {figs / 'batch_size'}.png/.pdf/.csv" in out


def test_ctrl_c_while_waiting_ends_with_one_line_and_writes_nothing(tmp_path):
    cmd, folder, figs = _setup(tmp_path)
    holder = _hold(folder)
    proc = _start_waiting(cmd, "600")
    try:
        assert _until_waiting(proc).startswith("waiting up to 600 s")
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
        holder.release()
    assert proc.returncode == 130, err
    assert err.count("\n") == 1 and err.startswith("error: interrupted; the finished sweep chunks "
                                                   f"are kept in {str(tmp_path / 'results')!r}"), err
    assert not (folder / "spec.json").exists() and not _figure_files(figs)


def test_interrupt_while_drawing_leaves_no_figure_file(tmp_path, monkeypatch, capsys):
    import matplotlib.figure

    from figures.__main__ import main

    savefig = matplotlib.figure.Figure.savefig

    def interrupted_at_the_pdf(self, fname, *args, **kwargs):
        if kwargs.get("format") == "pdf" or str(fname).endswith(".pdf"):
            raise KeyboardInterrupt
        return savefig(self, fname, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", interrupted_at_the_pdf)
    assert main(["--only", "maps", "--out", str(tmp_path / "figs")]) == 130
    err = capsys.readouterr().err
    assert err == ("error: interrupted; every figure file written is complete: run the same "
                   "command again to resume\n")
    assert not _figure_files(tmp_path / "figs")  # not even the PNG drawn before the PDF


def test_index_writers_into_one_folder_keep_each_others_records(tmp_path, monkeypatch):
    """Two runs merging into one folder's index at once (say ``--only maps`` and ``--only
    ntxent_critical_lr``): the lock on ``.index.lock`` makes the second wait for the first
    one's read-merge-write, so both records end in index.json and INDEX.md. The first writer
    pauses between its read and its write until the second has started; without the lock the
    second would read the index before the first writes it, and one record would be lost."""
    import threading

    import simulate.store
    from figures.registry import write_index

    figs = tmp_path / "figs"
    second_started = threading.Event()
    write = simulate.store.atomic_write_bytes

    def slow_first_write(path, data):
        if path.name == "index.json" and threading.current_thread().name == "first":
            second_started.wait(timeout=30)
            time.sleep(0.3)  # the merge window, widened (only the lock-free code needs it)
        write(path, data)

    monkeypatch.setattr(simulate.store, "atomic_write_bytes", slow_first_write)

    def record(fid):
        return {"id": fid, "title": f"title {fid}", "caption": f"caption {fid}", "data_sha256": "d",
                "csv_sha256": "c", "sweeps": "none"}

    errors = []

    def writer(fid):
        try:
            if threading.current_thread().name == "second":
                second_started.set()
            write_index([record(fid)], figs, f"python -m figures --only {fid}")
        except BaseException as exc:  # noqa: BLE001  (reported below)
            errors.append(exc)

    first = threading.Thread(target=writer, args=("maps",), name="first")
    second = threading.Thread(target=writer, args=("ntxent_critical_lr",), name="second")
    first.start()
    time.sleep(0.1)  # the first usually reads first; either order must keep both
    second.start()
    first.join(timeout=60)
    second.join(timeout=60)
    assert not errors, errors
    assert {r["id"] for r in json.loads((figs / "index.json").read_text())} == {"maps", "ntxent_critical_lr"}
    index_md = (figs / "INDEX.md").read_text()
    assert "## maps: title maps" in index_md and "## ntxent_critical_lr: title ntxent_critical_lr" in index_md

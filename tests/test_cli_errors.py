"""Bad input on the command line: exit status 2 and one line ``error: ...`` naming the field or
flag, never a traceback; and the spec values that must be read as the user meant them."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from simulate.cli import parse_device
from simulate.config import SpecError, expand, load_spec

ROOT = Path(__file__).resolve().parents[1]
TINY_YAML = "model: free\nk: 2\nd: 4\nper_class: 8\nbatch_size: 4\nsteps: 4\nlog_every: 2\n"


def cli(module: str, *args, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout, check=False)


def refused(done: subprocess.CompletedProcess, *words: str) -> str:
    """The one error line of a refused command; it must contain every word."""
    assert "Traceback" not in done.stderr + done.stdout, done.stderr
    assert done.returncode == 2, (done.returncode, done.stderr)
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


def spec_file(tmp_path: Path, text: str, name: str = "spec.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def sweep(spec: Path, out: Path, *flags) -> subprocess.CompletedProcess:
    return cli("simulate", "sweep", spec, "--out", out, *flags)


# ---------------------------------------------------------------------- malformed spec files
@pytest.mark.parametrize("name,text,words", [
    ("indent.yaml", TINY_YAML + "lr: 0.1\n  momentum: 0.5\n", ["indent.yaml", "YAML", "line 9"]),
    ("bracket.yaml", TINY_YAML + "lr: [0.1, 1.0\n", ["bracket.yaml", "YAML"]),
    ("bad.json", '{"model": "free", "lr": 0.1,}', ["bad.json", "JSON", "line 1"]),
])
def test_malformed_spec_file(tmp_path, name, text, words):
    done = sweep(spec_file(tmp_path, text, name), tmp_path / "out")
    refused(done, *words)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("field,value", [
    ("label_fraction", '"0.5"'), ("mean_scale", "big"), ("holdout_fraction", '"0.2"'),
])
def test_string_for_a_data_number(tmp_path, field, value):
    line = refused(sweep(spec_file(tmp_path, TINY_YAML + f"{field}: {value}\n"), tmp_path / "out"),
                   field, "number")
    assert line.startswith(f"error: {field} must be")


@pytest.mark.parametrize("sweeps,shown", [("\n  - lr: 0.1\n  - lr: 1.0", "a list"), (" 3", "3")])
def test_sweeps_must_map_names_to_mappings(tmp_path, sweeps, shown):
    done = sweep(spec_file(tmp_path, TINY_YAML + f"sweeps:{sweeps}\n"), tmp_path / "out")
    refused(done, "sweeps must map sweep names to mappings", f"got {shown}")


def test_spec_is_a_directory(tmp_path):
    (tmp_path / "specs").mkdir()
    refused(sweep(tmp_path / "specs", tmp_path / "out"), "specs", "is a directory", "preset")


# ---------------------------------------------------------------------- silent misconfigurations
@pytest.mark.parametrize("field,value", [("sign_flip", "false"), ("batch_norm", "no")])
def test_json_string_for_a_bool_is_refused(tmp_path, field, value):
    spec = {"model": "mlp", "k": 2, "d": 4, "per_class": 8, "batch_size": 4, "steps": 4, field: value}
    done = sweep(spec_file(tmp_path, json.dumps(spec), "spec.json"), tmp_path / "out")
    refused(done, f"{field} must be true or false", repr(value))
    assert not (tmp_path / "out").exists()


def test_yaml_yes_no_are_not_booleans(tmp_path):
    done = sweep(spec_file(tmp_path, TINY_YAML + "sign_flip: no\n"), tmp_path / "out")
    refused(done, "sign_flip must be true or false", "'no'")


def test_seed_and_seeds_together(tmp_path):
    done = sweep(spec_file(tmp_path, TINY_YAML + "seed: [7, 8]\nseeds: 2\n"), tmp_path / "out")
    refused(done, "seed [7, 8]", "seeds 2", "not both")


def test_seed_and_seeds_in_code():
    with pytest.raises(SpecError, match="not both"):
        load_spec({"seed": 3, "seeds": 2})
    assert load_spec({"seeds": 2})["seed"] == [0, 1]
    for seeds in (0, True, 2.5, []):
        with pytest.raises(SpecError, match="seeds must be"):
            load_spec({"seeds": seeds})


def test_yaml_exponent_numbers_are_floats(tmp_path):
    text = TINY_YAML + "lr: 1e6\ntemperature: 1e-4\nmomentum: 5E-1\nweight_decay: 1.5e+2\nname: 1e\n"
    spec = load_spec(spec_file(tmp_path, text))
    assert spec["lr"] == 1e6 and spec["temperature"] == 1e-4 and spec["momentum"] == 0.5
    assert spec["weight_decay"] == 150.0 and spec["name"] == "1e"
    assert isinstance(spec["steps"], int) and spec["steps"] == 4
    run, = expand(spec)
    assert run.lr == 1e6 and run.temperature == 1e-4
    flags = load_spec(spec_file(tmp_path, "sign_flip: TRUE\nbatch_norm: false\n", "b.yaml"))
    assert flags == {"sign_flip": True, "batch_norm": False}
    with pytest.raises(SpecError, match="temperature must be a finite number, got '1e-4'"):
        expand(load_spec({"temperature": "1e-4"}))  # strings are not coerced


def test_sweep_preset_with_shared_seeds_and_own_seed(tmp_path):
    from simulate.config import resolve_specs

    specs = resolve_specs(spec_file(tmp_path, "seeds: 2\nsweeps:\n  a: {lr: 0.1}\n  b: {seed: [5]}\n"))
    assert specs["a"]["seed"] == [0, 1] and specs["b"]["seed"] == [5]


# ---------------------------------------------------------------------- flags
def test_run_bool_flag_accepts_only_true_or_false():
    refused(cli("simulate", "run", "--batch-norm", "maybe"), "--batch-norm", "true or false", "'maybe'")
    refused(cli("simulate", "run", "--sign-flip", "yes"), "--sign-flip", "true or false")
    refused(cli("simulate", "run", "--lr", "fast"), "--lr", "a number")
    ok = cli("simulate", "run", "--model", "mlp", "--batch-norm", "TRUE", "--k", "2", "--d", "4",
             "--per-class", "8", "--batch-size", "4", "--steps", "2", "--log-every", "2")
    assert ok.returncode == 0, ok.stderr


@pytest.mark.parametrize("command", [
    ["simulate", "run"], ["simulate", "bench"], ["figures", "--only", "maps"],
    ["simulate", "sweep", "SPEC", "--out", "OUT"],
    ["simulate", "sweep", "SPEC", "--out", "OUT", "--executor", "ray"],
])
def test_device_nonsense(tmp_path, command):
    spec = spec_file(tmp_path, TINY_YAML)
    args = [str(spec) if a == "SPEC" else str(tmp_path / "out") if a == "OUT" else a for a in command]
    refused(cli(*args, "--device", "nonsense"), "--device", "auto, cpu, cuda or cuda:N", "'nonsense'")
    assert not (tmp_path / "out").exists()


def test_parse_device():
    assert [parse_device(t) for t in ("auto", "CPU", " cuda ", "cuda:1")] == ["auto", "cpu", "cuda", "cuda:1"]
    for text in ("nonsense", "cuda:", "cuda:-1", "gpu", ""):
        with pytest.raises(SpecError, match="device must be auto, cpu, cuda or cuda:N"):
            parse_device(text)


@pytest.mark.parametrize("budget", ["infGB", "nanGB", "-1GB", "lots"])
def test_max_memory(tmp_path, budget):
    done = sweep(spec_file(tmp_path, TINY_YAML), tmp_path / "out", f"--max-memory={budget}")
    refused(done, "--max-memory", "4GB", repr(budget))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("where", ["file", "under_file", "read_only"])
def test_sweep_out_folder(tmp_path, where):
    if where == "read_only" and os.geteuid() == 0:
        pytest.skip("permissions do not bind root")
    spec = spec_file(tmp_path, TINY_YAML)
    (tmp_path / "taken").write_text("not a folder")
    locked = tmp_path / "locked"
    locked.mkdir()
    out = {"file": tmp_path / "taken", "under_file": tmp_path / "taken" / "out",
           "read_only": locked / "out"}[where]
    locked.chmod(0o500)
    try:
        line = refused(sweep(spec, out), "--out", str(out))
    finally:
        locked.chmod(0o700)
    assert {"file": "existing file", "under_file": "under the file",
            "read_only": "permission denied"}[where] in line


def test_figures_preset_nope():
    refused(cli("figures", "--preset", "nope"), "--preset", "'nope'", "quick")


def test_figures_out_is_a_file(tmp_path):
    (tmp_path / "figs").write_text("not a folder")
    refused(cli("figures", "--only", "maps", "--out", tmp_path / "figs"), "--out", "existing file")


@pytest.mark.parametrize("steps", ["0", "-5"])
def test_figures_agreement_steps(steps):
    done = cli("figures", "agreement", "--small", "--steps", steps)
    refused(done, "--steps must be an integer >= 1", steps)
    assert done.stdout == ""


@pytest.mark.parametrize("wait", ["-1", "abc", "nan", "", "inf"])
def test_wait_must_be_seconds(tmp_path, wait):
    done = cli("figures", "--only", "maps", "--out", tmp_path / "figs", f"--wait={wait}")
    refused(done, "--wait must be a finite number of seconds >= 0", repr(wait))
    assert done.stdout == "" and not (tmp_path / "figs").exists()
    done = sweep(spec_file(tmp_path, TINY_YAML), tmp_path / "out", f"--wait={wait}")
    refused(done, "--wait must be a finite number of seconds >= 0", repr(wait))
    assert not (tmp_path / "out").exists()


def test_theory_seed_negative():
    done = cli("theory", "--seed", "-1")
    refused(done, "--seed must be an integer >= 0", "-1")
    assert done.stdout == ""


def test_theory_latex_target_checked_before_the_claims():
    done = cli("theory", "--latex", "/nonexistent/x.tex")
    refused(done, "--latex", "/nonexistent/x.tex", "does not exist")
    assert done.stdout == ""  # refused before the table, not after


def test_usage_errors_are_one_line():
    refused(cli("simulate", "sweep", "quick"), "--out")
    refused(cli("simulate", "run", "--no-such-flag"), "--no-such-flag")
    refused(cli("figures", "--only", "nope"), "--only", "nope")
    refused(cli("theory", "--only", "nope"), "--only", "nope")


# ---------------------------------------------------------------------- errors from the sweep
def _sweep_main(monkeypatch, tmp_path, capsys, exc, *flags):
    """``python -m simulate sweep`` in this process, with run_specs raising ``exc``."""
    import simulate.sweep
    from simulate.__main__ import main

    def raising(*args, **kwargs):
        raise exc

    monkeypatch.setattr(simulate.sweep, "run_specs", raising)
    status = main(["sweep", str(spec_file(tmp_path, TINY_YAML)), "--out", str(tmp_path / "out"), *flags])
    return status, capsys.readouterr().err


@pytest.mark.parametrize("error,word", [
    (PermissionError, "permission denied"), (FileExistsError, "existing file"),
    (NotADirectoryError, "under a file"),
])
def test_os_error_on_out_names_the_flag(monkeypatch, tmp_path, capsys, error, word):
    status, err = _sweep_main(monkeypatch, tmp_path, capsys,
                              error(13, "os message", str(tmp_path / "out" / "chunks")))
    assert status == 2 and err.count("\n") == 1 and err.startswith("error: --out ") and word in err


def test_other_errors_before_training(monkeypatch, tmp_path, capsys):
    status, err = _sweep_main(monkeypatch, tmp_path, capsys, OSError(28, "No space left on device"))
    assert status == 2 and err == "error: [Errno 28] No space left on device\n"
    status, err = _sweep_main(monkeypatch, tmp_path, capsys, ValueError("out 'x' is locked\nby y"))
    assert status == 2 and err == "error: out 'x' is locked by y\n"


def test_only_the_ray_connect_error_becomes_one_line(monkeypatch, tmp_path, capsys):
    import simulate.executors

    class RayConnectTimeout(RuntimeError):
        pass

    monkeypatch.setattr(simulate.executors, "RayConnectTimeout", RayConnectTimeout, raising=False)
    status, err = _sweep_main(monkeypatch, tmp_path, capsys,
                              RayConnectTimeout("no Ray cluster at 10.0.0.1:6379 within 30 s"),
                              "--executor", "ray")
    assert status == 2 and err == "error: no Ray cluster at 10.0.0.1:6379 within 30 s\n"
    with pytest.raises(RuntimeError, match="a bug"):
        _sweep_main(monkeypatch, tmp_path, capsys, RuntimeError("a bug"), "--executor", "ray")


# ---------------------------------------------------------------------- input edges
MLP_YAML = "model: mlp\nk: 2\nd: 4\nper_class: 8\nbatch_size: 4\nsteps: 4\nlog_every: 2\n"


@pytest.mark.parametrize("value,runs,dims", [
    ("[6, 3]", 1, {"6,3"}),                            # a list of widths: one projector
    ('[[6, 3], [5], "4,2"]', 3, {"6,3", "5", "4,2"}),  # a list of lists (or texts): a grid axis
])
def test_projector_dims_list_of_widths_is_one_value(tmp_path, value, runs, dims):
    spec = spec_file(tmp_path, MLP_YAML + f"projector_dims: {value}\n")
    done = sweep(spec, tmp_path / "out", "--dry-run")
    assert done.returncode == 0, done.stderr
    assert f": {runs} runs," in done.stdout, done.stdout
    got = expand(load_spec(spec))
    assert {r.projector_dims for r in got} == dims
    text = expand({**load_spec(spec_file(tmp_path, MLP_YAML, "b.yaml")), "projector_dims": "6,3"})
    assert [r.run_id for r in got if r.projector_dims == "6,3"] == [text[0].run_id]


@pytest.mark.parametrize("value,words", [
    ("[6, [3]]", ["projector_dims must be a list of layer widths such as [64, 16]", "a grid axis",
                  "got [6, [3]]"]),
    ("[6, 0]", ["projector_dims must be comma-separated layer widths >= 1", "got '6,0'"]),
    # digits that are not ASCII (str.isdigit accepts them, int() does not, or reads them as others)
    ('"\u00b2"', ["projector_dims must be comma-separated layer widths >= 1", "got '\u00b2'"]),
    ('"\u0666\u0664,16"', ["projector_dims must be comma-separated layer widths >= 1"]),
])
def test_projector_dims_bad_list(tmp_path, value, words):
    done = sweep(spec_file(tmp_path, MLP_YAML + f"projector_dims: {value}\n"), tmp_path / "out")
    refused(done, *words)
    assert not (tmp_path / "out").exists()


DIGITS_YAML = "data: digits\nk: 3\nper_class: 20\nbatch_size: 8\nsteps: 2\nlog_every: 2\n"


def test_digits_refuses_another_d(tmp_path):
    """data: digits has 64 dimensions: d left out is 64, d: 64 is the same run, any other d is
    refused (it used to become 64 without a word)."""
    line = refused(sweep(spec_file(tmp_path, DIGITS_YAML + "d: 16\n"), tmp_path / "out"),
                   "digits has 64 dimensions", "got 16")
    assert line.startswith("error: d must be 64 or left out with data digits")
    assert not (tmp_path / "out").exists()
    left_out, = expand(load_spec(spec_file(tmp_path, DIGITS_YAML, "a.yaml")))
    given, = expand(load_spec(spec_file(tmp_path, DIGITS_YAML + "d: 64\n", "b.yaml")))
    assert left_out.d == 64 and left_out.run_id == given.run_id
    mixture, = expand({"k": 2, "per_class": 8, "batch_size": 4})
    assert mixture.d == 16  # the mixture's own default
    with pytest.raises(SpecError, match="d must be 64 or left out with data digits"):
        expand({"data": "digits", "d": [16, 64]})


def test_all_zero_mixture_is_refused(tmp_path):
    """mean_scale 0 with sigma 0 puts every point of every class at the origin: refused, naming
    both fields, before anything is written (a run could only end collapsed; free embeddings,
    all zero, were reported healthy)."""
    spec = spec_file(tmp_path, TINY_YAML + "mean_scale: 0\nsigma: 0.0\n")
    line = refused(sweep(spec, tmp_path / "out"), "mean_scale", "zero vector", "got 0.0")
    assert line.startswith("error: sigma must be > 0 when mean_scale is 0")
    assert not (tmp_path / "out").exists()
    tiny = load_spec(spec_file(tmp_path, TINY_YAML, "tiny.yaml"))
    for ok in ({"mean_scale": 0.0, "sigma": 0.5}, {"mean_scale": 2.0, "sigma": 0.0},
               {"mean_scale": 0.0, "sigma": 0.0, "data": "digits", "model": "mlp", "d": 64,
                "k": 3, "per_class": 20}):  # digits ignores the mixture's fields
        assert len(expand({**tiny, **ok})) == 1
    with pytest.raises(SpecError, match="sigma must be > 0 when mean_scale is 0"):
        expand({**tiny, "mean_scale": [0.0, 1.0], "sigma": 0.0})  # one such run refuses the grid
    for tiny_values in ({"mean_scale": 1e-300, "sigma": 0.0}, {"mean_scale": 0.0, "sigma": 1e-50}):
        with pytest.raises(SpecError, match="sigma must be > 0 when mean_scale is 0"):
            expand({**tiny, **tiny_values})  # 0 in float32, as the data is stored


def test_projector_widths_have_one_form():
    """A width written with leading zeros is the same projector, with the same run id."""
    base = {"model": "mlp", "k": 2, "d": 4, "per_class": 8, "batch_size": 4}
    one = expand({**base, "projector_dims": [64, 16]})[0]
    for text in ("064,16", " 64, 016 ", "64,16"):
        assert expand({**base, "projector_dims": text})[0].run_id == one.run_id
    assert len(expand({**base, "projector_dims": ["064,16", "64,16"]})) == 1


def test_every_rule_names_its_field():
    """The validation tables: every rule is about a field of a run, and a value of the wrong
    kind is refused with ``<field> must be <what it accepts>, got <value>``."""
    from simulate.config import CROSS_RULES, FIELD_NAMES, FIELD_RULES

    assert set(FIELD_RULES) <= set(FIELD_NAMES) and {r[0] for r in CROSS_RULES} <= set(FIELD_NAMES)
    for name in FIELD_RULES:
        wrong = 0.5 if name in ("name", "projector_dims") else "wrong"
        with pytest.raises(SpecError) as info:
            expand({"model": "mlp", "k": 2, "d": 4, "per_class": 8, "batch_size": 4, name: wrong})
        assert str(info.value).startswith(f"{name} must be ") and str(info.value).endswith(
            f", got {wrong!r}"), str(info.value)


# ---------------------------------------------------------------------- Ctrl-C at start-up
def _interrupt_during_startup(args: list[str]) -> subprocess.Popen:
    """Start ``python ARGS`` and send SIGINT as soon as its heavy imports have begun (numpy's
    shared library is mapped: Python's SIGINT handler and site's imports are done by then),
    without waiting for any output. Whether the signal lands in the imports or later, the
    command must end with one line."""
    import signal
    import time

    proc = subprocess.Popen([sys.executable, *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    maps = Path(f"/proc/{proc.pid}/maps")
    try:
        while proc.poll() is None:
            try:
                if "numpy" in maps.read_text():
                    break
            except OSError:
                pass
            time.sleep(0.002)
        proc.send_signal(signal.SIGINT)
    except BaseException:
        proc.kill()
        raise
    return proc


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs /proc/PID/maps")
@pytest.mark.parametrize("args", [
    pytest.param(["-m", "simulate", "run", "--model", "free", "--k", "2", "--d", "4", "--per-class", "8",
                  "--batch-size", "4", "--steps", "100000000", "--log-every", "100000000",
                  "--device", "cpu"], id="simulate"),
    pytest.param(["-m", "figures", "--only", "maps", "--out", "{tmp}"], id="figures"),
])
def test_ctrl_c_at_start_up_is_one_line(tmp_path, args):
    proc = _interrupt_during_startup([a.replace("{tmp}", str(tmp_path / "figs")) for a in args])
    try:
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, (proc.returncode, err)
    assert "Traceback" not in err, err
    assert err.splitlines()[-1].startswith("error: interrupted"), err


# ---------------------------------------------------------------------- Ctrl-C at shut-down
EXIT_AFTER = """
import atexit, os, signal, sys
from simulate.interrupts import exit_after
# the interpreter's shut-down: a Ctrl-C once the command's work is done
atexit.register(lambda: os.kill(os.getpid(), signal.SIGINT))
exit_after(lambda: int(sys.argv[1]))
"""


@pytest.mark.skipif(not hasattr(__import__("signal"), "pthread_sigmask"), reason="needs pthread_sigmask")
@pytest.mark.parametrize("status", [0, 2])
def test_ctrl_c_at_shut_down_keeps_the_commands_status(status):
    """``exit_after`` (both commands' ``__main__``): a Ctrl-C after the command returned (here
    from an exit hook) neither kills the process (-2, no message) nor prints a traceback."""
    done = subprocess.run([sys.executable, "-c", EXIT_AFTER, str(status)], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stderr) == (status, "")


def test_ctrl_c_that_the_entry_does_not_handle_is_one_line():
    from simulate.interrupts import exit_after

    def entry():
        raise KeyboardInterrupt

    import signal

    old = signal.pthread_sigmask(signal.SIG_BLOCK, set())
    try:
        with pytest.raises(SystemExit) as info:
            exit_after(entry)
        assert info.value.code == 130
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)

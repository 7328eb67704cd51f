"""The notebooks work as a user sees them: plots appear in their Output widgets, change with the
widgets, and no error hides anywhere (cells or widgets). They run headless (nbclient, widget
state stored) and through a real Jupyter server (what ``make lab`` serves), driven over its
REST API and kernel websocket the way a browser frontend drives it."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import matplotlib
import nbformat
import pytest
from jupyter_server.services.kernels.connection.base import deserialize_binary_message
from nbclient import NotebookClient
from nbclient.output_widget import OutputWidget
from nbformat.v4 import new_code_cell, new_notebook, output_from_msg
from tornado.httpclient import HTTPRequest
from tornado.websocket import websocket_connect

from figures.explorer import (cobweb_path, explorer_figure, iterate, lab_figure, lab_folder,
                              lab_spec, run_lab, spec_digest, thresholds)
from jupyter_test_server import JupyterServer

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ["bound_explorer", "collapse_lab"]
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
CELL_TIMEOUT = 300  # seconds; generous for a loaded machine (the small notebooks need a few)

#: code run in the kernel after the notebook: a widget change that must redraw the plot
CHANGES = {
    "bound_explorer": 'controls["eta"].value = 3.0',
    "collapse_lab": "lrs.value = (1.0,)\nbutton.click()",
}
#: the kernel's backend and the figures left open, printed after the notebook
KERNEL_CHECK = ("import matplotlib, matplotlib.pyplot as plt\n"
                "print(matplotlib.get_backend(), plt.get_fignums())")


# --- what a user would see: every output of the cells and of the Output widgets -----------------

def widget_outputs(nb) -> dict[str, list]:
    """The outputs held by the notebook's Output widgets (stored widget state), by model id."""
    state = nb.get("metadata", {}).get("widgets", {}).get(WIDGET_STATE, {}).get("state", {})
    return {mid: list(w["state"].get("outputs", [])) for mid, w in state.items()
            if w.get("model_name") == "OutputModel"}


def all_outputs(nb):
    """(where, output) for every output of the code cells and of the Output widgets."""
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            for out in cell.get("outputs", []):
                yield f"cell {i}", out
    for mid, outs in widget_outputs(nb).items():
        for out in outs:
            yield f"Output widget {mid}", out


def output_problems(where: str, out) -> list[str]:
    """An error output, or a traceback written to stderr."""
    if out["output_type"] == "error":
        return [f"{where}: {out['ename']}: {out['evalue']}"]
    if out["output_type"] == "stream" and out["name"] == "stderr" and "Traceback" in out["text"]:
        return [f"{where}: traceback on stderr: {out['text'][-500:]}"]
    return []


def notebook_problems(nb) -> list[str]:
    return [p for where, out in all_outputs(nb) for p in output_problems(where, out)]


def pngs(outputs) -> list[str]:
    return [o["data"]["image/png"] for o in outputs
            if o["output_type"] in ("display_data", "execute_result") and "image/png" in o.get("data", {})]


def plot_widget(nb) -> tuple[str, str]:
    """The one Output widget that shows a plot: its model id and its PNG."""
    shown = {mid: pngs(outs) for mid, outs in widget_outputs(nb).items() if pngs(outs)}
    assert len(shown) == 1, f"expected one Output widget with a plot, got {len(shown)}"
    (mid, images), = shown.items()
    assert len(images) == 1, f"the plot widget holds {len(images)} images (old plots not cleared)"
    return mid, images[0]


def png_digest(data: str) -> str:
    """A short digest of a base64 PNG, after checking that it is one."""
    raw = base64.b64decode(data)
    assert raw[:8] == b"\x89PNG\r\n\x1a\n"
    return hashlib.sha256(raw).hexdigest()[:16]


def check_kernel_report(text: str) -> None:
    """The output of KERNEL_CHECK: the inline backend, and no figure left open."""
    assert "inline" in text and text.strip().endswith("[]"), text


# --- headless: nbclient with the widget state stored ----------------------------------------------

class OutputCapture(OutputWidget):
    """nbclient's Output widget stand-in, without echoing each captured output back to the kernel.
    The echo is sent on the shell socket while the client awaits the cell's reply on that same
    socket; under load the reply's wake-up is then lost and the wait ends only at the cell
    timeout (jupyter/nbclient#312). The kernel never reads the echoed state."""

    def sync_state(self) -> None:
        pass


def execute_headless(nb, extra: list[str] = ()):
    """Execute ``nb`` in a fresh kernel, then each code of ``extra`` as one more cell. Returns the
    PNG list of every Output widget after the notebook and after each extra cell."""
    client = NotebookClient(nb, timeout=CELL_TIMEOUT, kernel_name="python3", store_widget_state=True,
                            resources={"metadata": {"path": str(ROOT / "notebooks")}})
    client.widget_registry["@jupyter-widgets/output"]["OutputModel"] = OutputCapture
    snapshots = []
    with client.setup_kernel():
        for i, cell in enumerate(nb.cells):
            client.execute_cell(cell, i)
        for code in extra:
            client.set_widgets_metadata()
            snapshots.append({m: pngs(o) for m, o in widget_outputs(nb).items()})
            nb.cells.append(new_code_cell(code))
            client.execute_cell(nb.cells[-1], len(nb.cells) - 1)
        client.set_widgets_metadata()
        snapshots.append({m: pngs(o) for m, o in widget_outputs(nb).items()})
    return snapshots


@pytest.mark.timeout(900)
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_executes_headless(name, monkeypatch):
    import jupytext

    monkeypatch.setenv("CLOP_LAB_NOTEBOOK_SIZE", "small")
    nb = jupytext.read(ROOT / "notebooks" / f"{name}.py")
    assert "parameters" in next(c for c in nb.cells if c.cell_type == "code").metadata.get("tags", [])
    before, after, _ = execute_headless(nb, [CHANGES[name], KERNEL_CHECK])
    assert not notebook_problems(nb), notebook_problems(nb)
    assert pngs(o for _, o in all_outputs(nb)), "no image/png in the cells or the Output widgets"
    # the plot sits in one Output widget; the widget change replaced it with a new one
    shown = {m: [png_digest(p) for p in ps] for m, ps in before.items() if ps}
    assert len(shown) == 1 and len(next(iter(shown.values()))) == 1, shown
    (mid, (first,)), = shown.items()
    redrawn = [png_digest(p) for p in after[mid]]
    assert len(redrawn) == 1 and redrawn[0] != first, f"the widget change did not redraw: {redrawn}"
    assert not nb.cells[-2].outputs  # the redraw went into the Output widget, nothing beside it
    check_kernel_report("".join(o.get("text", "") for o in nb.cells[-1].outputs))


@pytest.mark.timeout(300)
def test_checker_sees_an_error_inside_an_output_widget():
    """An exception in a callback lands in its Output widget, never in the cell outputs: the
    checker must report it from the stored widget state."""
    nb = new_notebook(cells=[new_code_cell(
        "import ipywidgets as widgets\n"
        "from IPython.display import display\n"
        "out = widgets.Output()\n"
        "display(out)\n"
        "def callback(change=None):\n"
        "    with out:\n"
        "        raise RuntimeError('deliberate failure in a callback')\n"
        "callback()\n")])
    execute_headless(nb)
    assert not [o for o in nb.cells[0].outputs if o.output_type == "error"]  # invisible to cells
    problems = notebook_problems(nb)
    assert len(problems) == 1 and problems[0].startswith("Output widget"), problems
    assert "RuntimeError: deliberate failure in a callback" in problems[0]


# --- the widget callbacks as plain functions ---------------------------------------------------------

def test_explorer_callbacks():
    orbit = iterate("anchor", eta=1.0, w=1.0, x0=0.5, steps=5)
    assert orbit.shape == (6,) and abs(orbit[-1]) < abs(orbit[0])
    xs, ys = cobweb_path(orbit)
    assert xs[0] == orbit[0] and ys[0] == orbit[1] and xs[1] == ys[1] == orbit[1]
    th = thresholds(eta=2.5, w=1.0, tau=0.5, n=8)
    assert th["anchor"]["above"] and th["pair"]["above"] and th["anchor"]["eta_c"] == pytest.approx(2.0)
    fig = explorer_figure(eta=2.5, w=1.0, tau=0.5, n=8, mode="unprojected (sphere_raw)")
    assert len(fig.get_axes()) == 3
    matplotlib.pyplot.close(fig)
    with pytest.raises(ValueError, match="mode"):
        explorer_figure(mode="nope")


def test_lab_callbacks(tmp_path):
    spec = lab_spec(("ntxent",), (0.0, 1.0), (0.1, 10.0), size="small")
    df = run_lab(spec, tmp_path, device="cpu")
    assert df.run_id.nunique() == 4
    fig = lab_figure(df)
    assert len(fig.get_axes()[1].get_legend().get_texts()) == 4
    matplotlib.pyplot.close(fig)
    with pytest.raises(ValueError, match="size"):
        lab_spec(size="tiny")


def test_lab_cache_is_keyed_by_a_stable_digest(tmp_path):
    spec = lab_spec(("ntxent",), (0.0, 1.0), (0.1,), size="small")
    # the same digest in processes with different string hashing
    code = ("import json, sys; from figures.explorer import spec_digest; "
            "print(spec_digest(json.loads(sys.argv[1])))")
    digests = set()
    for seed in ("1", "2"):
        done = subprocess.run([sys.executable, "-c", code, json.dumps(spec)], capture_output=True,
                              text=True, env={**os.environ, "PYTHONHASHSEED": seed}, timeout=300,
                              cwd=ROOT)
        assert done.returncode == 0, done.stderr
        digests.add(done.stdout.strip())
    assert digests == {spec_digest(spec)}
    assert spec_digest(dict(reversed(spec.items()))) == spec_digest(spec)  # key order is irrelevant
    # the canonical form: sorted keys, no spaces, tuples as lists
    assert spec_digest({"lr": (0.1, 10.0), "loss": "ntxent"}) == hashlib.sha256(
        b'{"loss":"ntxent","lr":[0.1,10.0]}').hexdigest()
    assert spec_digest({**spec, "lr": [10.0]}) != spec_digest(spec)
    assert lab_folder(spec, tmp_path) == tmp_path / spec_digest(spec)[:16]
    # running the same sweep again only reads the cache
    first = run_lab(spec, tmp_path, device="cpu")
    chunks = {p: p.stat().st_mtime_ns for p in (lab_folder(spec, tmp_path) / "chunks").glob("*.parquet")}
    again = run_lab(dict(spec), tmp_path, device="cpu")
    assert chunks and chunks == {p: p.stat().st_mtime_ns
                                 for p in (lab_folder(spec, tmp_path) / "chunks").glob("*.parquet")}
    assert again.equals(first)


def test_library_has_no_notebook_size_switch():
    import figures.explorer

    source = Path(figures.explorer.__file__).read_text()
    assert "CLOP_LAB_NOTEBOOK_SIZE" not in source and "environ" not in source
    for name in NOTEBOOKS:
        text = (ROOT / "notebooks" / f"{name}.py").read_text()
        assert 'os.environ.get("CLOP_LAB_NOTEBOOK_SIZE", "full")' in text


# --- a real Jupyter server: what `make lab` serves ---------------------------------------------------

class Server(JupyterServer):
    """A jupyter_server on 127.0.0.1 (port chosen by the OS) with a token, rooted at the repo."""

    def __init__(self, tmp: Path):
        super().__init__(tmp, "jupyter_server", ROOT, log_name="server.log",
                         args=("--ServerApp.allow_root=True",), own_session=False)
        self.ws = f"ws://127.0.0.1:{self.port}"


class Frontend:
    """What a notebook frontend does over a kernel's websocket: sends requests, keeps the widget
    models, and routes each output into the Output widget whose ``msg_id`` matches the output's
    parent message (as JupyterLab does), else to the request that caused it."""

    def __init__(self, ws, session: str):
        self.ws, self.session = ws, session
        self.models: dict[str, dict] = {}
        self.outputs: dict[str, list] = {}
        self.replies: dict[str, dict] = {}
        self.idle: set[str] = set()
        self.clear_pending: set[str] = set()

    async def request(self, msg_type: str, content: dict, seconds: float, reply: bool = True) -> list:
        """Send one shell message; wait until the kernel is idle after it (and has replied).
        Returns the outputs that no Output widget captured."""
        msg_id = uuid.uuid4().hex
        self.outputs[msg_id] = []
        await self.ws.write_message(json.dumps({
            "header": {"msg_id": msg_id, "msg_type": msg_type, "session": self.session, "username": "test",
                       "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "version": "5.3"},
            "parent_header": {}, "metadata": {}, "content": content, "buffers": [], "channel": "shell"}))
        deadline = time.monotonic() + seconds
        while msg_id not in self.idle or (reply and msg_id not in self.replies):
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{msg_type} not finished after {seconds} s: {content}")
            raw = await asyncio.wait_for(self.ws.read_message(), left)
            if raw is None:
                raise AssertionError("the kernel websocket closed")
            if isinstance(raw, bytes):
                raw = deserialize_binary_message(raw)
            self.handle(json.loads(raw) if isinstance(raw, str) else raw)
        return self.outputs[msg_id]

    def handle(self, msg: dict) -> None:
        kind, parent = msg["header"]["msg_type"], msg["parent_header"].get("msg_id")
        content = msg["content"]
        if msg.get("channel") == "shell":
            self.replies[parent] = msg
        elif msg.get("channel") != "iopub":
            return
        elif kind == "status" and content["execution_state"] == "idle":
            self.idle.add(parent)
        elif kind == "comm_open" and content.get("target_name") == "jupyter.widget":
            state = dict(content["data"]["state"])
            if state.get("_model_name") == "OutputModel":
                state["outputs"] = []
            self.models[content["comm_id"]] = {"model_name": state.get("_model_name"),
                                               "model_module": state.get("_model_module"),
                                               "model_module_version": state.get("_model_module_version"),
                                               "state": state}
        elif kind == "comm_msg" and content["comm_id"] in self.models:
            data = content["data"]
            if data.get("method") in ("update", "echo_update"):
                self.models[content["comm_id"]]["state"].update(data["state"])
        elif kind in ("stream", "display_data", "execute_result", "error", "clear_output"):
            owner = next((mid for mid, m in self.models.items() if m["model_name"] == "OutputModel"
                          and parent and m["state"].get("msg_id") == parent), None)
            key = owner or parent
            outs = self.models[owner]["state"]["outputs"] if owner else self.outputs.setdefault(parent, [])
            if kind == "clear_output":
                if content.get("wait"):
                    self.clear_pending.add(key)
                else:
                    outs.clear()
                return
            if key in self.clear_pending:
                self.clear_pending.discard(key)
                outs.clear()
            outs.append(output_from_msg(msg))

    def widget(self, model: str, description: str) -> str:
        found = [mid for mid, m in self.models.items()
                 if m["model_name"] == model and m["state"].get("description") == description]
        assert len(found) == 1, (model, description, found)
        return found[0]

    async def change(self, comm_id: str, data: dict, seconds: float) -> list:
        """A widget update or event sent as the browser sends it (a comm message)."""
        return await self.request("comm_msg", {"comm_id": comm_id, "data": data}, seconds, reply=False)

    def widget_state(self) -> dict:
        return {WIDGET_STATE: {"state": self.models, "version_major": 2, "version_minor": 0}}


async def run_in_server(server: Server, name: str, nb) -> tuple[list, list]:
    """Open ``nb`` in a session of ``server``, execute its cells over the kernel websocket, then
    change a widget as a user would. Fills the cell outputs and the widget state of ``nb``; returns
    the plot's PNGs before and after the change and the outputs of the change and the check."""
    session = server.rest("POST", "/api/sessions", {"path": f"notebooks/{name}.py", "name": f"{name}.py",
                                                      "type": "notebook", "kernel": {"name": "python3"}})
    try:
        url = f"{server.ws}/api/kernels/{session['kernel']['id']}/channels?session_id={session['id']}"
        ws = await asyncio.wait_for(websocket_connect(HTTPRequest(
            url, headers={"Authorization": f"token {server.token}"}), max_message_size=1 << 28), 120)
        try:
            fe = Frontend(ws, session["id"])
            await fe.request("kernel_info_request", {}, CELL_TIMEOUT)
            for cell in nb.cells:
                if cell.cell_type == "code":
                    cell.outputs = await fe.request("execute_request", {
                        "code": cell.source, "silent": False, "store_history": True, "user_expressions": {},
                        "allow_stdin": False, "stop_on_error": True}, CELL_TIMEOUT)
            nb.metadata["widgets"] = fe.widget_state()
            assert not notebook_problems(nb), notebook_problems(nb)
            plot, first = plot_widget(nb)
            loose = []
            if name == "bound_explorer":  # drag the eta slider to 3
                eta = fe.widget("FloatLogSliderModel", "eta")
                loose += await fe.change(eta, {"method": "update", "state": {"value": 3.0},
                                               "buffer_paths": []}, CELL_TIMEOUT)
            else:  # select lr 1.0 only, then press "run"
                lrs = fe.widget("SelectMultipleModel", "lr")
                assert fe.models[lrs]["state"]["_options_labels"][2] == "1.0"
                loose += await fe.change(lrs, {"method": "update", "state": {"index": [2]},
                                               "buffer_paths": []}, CELL_TIMEOUT)
                run = fe.widget("ButtonModel", "run")
                loose += await fe.change(run, {"method": "custom", "content": {"event": "click"}},
                                         CELL_TIMEOUT)
            nb.metadata["widgets"] = fe.widget_state()
            mid, second = plot_widget(nb)
            assert mid == plot
            loose += await fe.request("execute_request", {"code": KERNEL_CHECK, "silent": False,
                                                          "store_history": False, "user_expressions": {},
                                                          "allow_stdin": False}, CELL_TIMEOUT)
            return [first, second], loose
        finally:
            ws.close()
    finally:
        server.rest("DELETE", f"/api/sessions/{session['id']}", check=False)


@pytest.fixture(scope="module")
def lab_server(tmp_path_factory):
    server = Server(tmp_path_factory.mktemp("lab"))
    yield server
    server.stop()


@pytest.mark.xdist_group("lab_server")
@pytest.mark.timeout(900)
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_lab_server_runs_notebooks(lab_server, name):
    # the contents API opens the jupytext .py file as a notebook (the jupytext server extension)
    model = lab_server.rest("GET", f"/api/contents/notebooks/{name}.py?type=notebook&content=1")
    assert model["type"] == "notebook"
    nb = nbformat.from_dict(model["content"])
    assert any(c.source.startswith("%matplotlib inline") for c in nb.cells if c.cell_type == "code")
    (first, second), loose = asyncio.run(run_in_server(lab_server, name, nb))
    problems = notebook_problems(nb) + [p for o in loose for p in output_problems("widget change", o)]
    assert not problems, problems
    assert png_digest(second) != png_digest(first), "the widget change did not redraw the plot"
    check_kernel_report("".join(o.get("text", "") for o in loose if o["output_type"] == "stream"))

"""A Jupyter server for the tests, as ``make lab`` starts one: on 127.0.0.1, a port chosen by the
OS, a token, and fresh runtime, config and data folders under a temporary folder. Used by
test_notebooks.py (jupyter_server) and test_lab_browser.py (JupyterLab).

Not named ``jupyter_server.py``: pytest puts tests/ first on sys.path, so that name would hide the
real ``jupyter_server`` package from the tests and from JupyterLab imported by them."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path


class JupyterServer:
    """``python -m <module>`` serving ``root`` (also its working folder), its output in
    ``tmp / log_name``; ready once its info file and ``/api/status`` answer. ``name`` is how the
    error messages call it; they end with the last ``log_tail`` characters of its log."""

    name = "jupyter_server"
    log_tail = 5000

    def __init__(self, tmp: Path, module: str, root: Path, *, log_name: str,
                 args: tuple[str, ...] = (), env: dict[str, str] | None = None,
                 own_session: bool = True):
        self.token = secrets.token_hex(24)
        self.root = root
        runtime = tmp / "runtime"
        env = {**os.environ, "JUPYTER_TOKEN": self.token, "JUPYTER_RUNTIME_DIR": str(runtime),
               "JUPYTER_CONFIG_DIR": str(tmp / "config"), "JUPYTER_DATA_DIR": str(tmp / "data"),
               "CLOP_LAB_NOTEBOOK_SIZE": "small", **(env or {})}
        self.log_path = tmp / log_name
        self.log = open(self.log_path, "w+")
        argv = [sys.executable, "-m", module, "--ServerApp.ip=127.0.0.1", "--ServerApp.port=0",
                "--ServerApp.port_retries=0", "--ServerApp.open_browser=False",
                "--ServerApp.terminals_enabled=False", f"--ServerApp.root_dir={root}", *args]
        # own_session: a Ctrl-C in the terminal reaches pytest, whose teardown stops the server
        self.proc = subprocess.Popen(argv, env=env, stdout=self.log, stderr=subprocess.STDOUT,
                                     cwd=root, start_new_session=own_session)
        try:
            info = self.poll(lambda: self._info(runtime), 120, "server info file")
            self.port = info["port"]
            self.url = f"http://127.0.0.1:{self.port}"
            self.poll(lambda: self.rest("GET", "/api/status", check=False) is not None, 120,
                      "/api/status")
        except BaseException:
            self.stop()
            raise

    def _info(self, runtime: Path):
        path = runtime / f"jpserver-{self.proc.pid}.json"
        return json.loads(path.read_text()) if path.exists() and path.stat().st_size else None

    def poll(self, probe, seconds: float, what: str):
        """``probe()``'s first true value within ``seconds``; fails at once if the server exits."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"{self.name} exited ({self.proc.returncode}):\n{self.log_text()}")
            try:
                got = probe()
            except (OSError, ValueError):
                got = None
            if got:
                return got
            time.sleep(0.2)  # polling interval; the deadline bounds the wait
        raise AssertionError(f"no {what} after {seconds} s:\n{self.log_text()}")

    def rest(self, method: str, path: str, body: dict | None = None, check: bool = True):
        """The decoded JSON answer ({} if empty). A failed request raises, or with ``check=False``
        gives None."""
        req = urllib.request.Request(self.url + path, method=method,
                                     data=None if body is None else json.dumps(body).encode(),
                                     headers={"Authorization": f"token {self.token}",
                                              "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                text = resp.read()
        except (urllib.error.URLError, OSError):
            if check:
                raise
            return None
        return json.loads(text) if text else {}

    def log_text(self) -> str:
        self.log.flush()
        return self.log_path.read_text()[-self.log_tail:]

    def stop(self):
        """Shut down through the API (which stops the kernels), else terminate, else kill."""
        try:
            if self.proc.poll() is None:
                try:
                    self.rest("POST", "/api/shutdown", check=False)
                    self.proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    self.proc.terminate()
                    try:
                        self.proc.wait(timeout=30)
                    except subprocess.TimeoutExpired:
                        self.proc.kill()
                        self.proc.wait(timeout=30)
        finally:
            self.log.close()

"""Reaching a Ray cluster for the ``ray`` executor (:mod:`simulate.executors`): connecting to
one at an address, or starting a private instance on this machine.

Every wait is bounded, and nothing outlives the driver:

- connecting to ``address`` gives up after ``connect_timeout`` seconds with
  :class:`RayConnectTimeout` (:func:`wait_for_cluster` first checks that the address answers as
  a Ray cluster does, with an HTTP/2 handshake);
- ``address=None`` starts a private Ray instance bound to 127.0.0.1 whose processes do not
  outlive the driver, even a driver killed with SIGKILL (on Linux: a reaper process, see
  :func:`ray_init`).
"""

from __future__ import annotations

import math
import os
import socket
import subprocess
import sys
import time
import uuid


class RayConnectTimeout(RuntimeError):
    """No Ray cluster answered at the given address within the connect timeout.

    The message is one line naming the address, what was last seen there and the
    ``--connect-timeout`` option."""


LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
#: marks every process of a private instance (their environment carries it), so that the
#: instance's reaper finds exactly those processes
INSTANCE_ENV = "CLOP_LAB_RAY_INSTANCE"

_reapers: list[subprocess.Popen] = []

# The reaper of a private instance: a small process in its own session. It reads the instance's
# session folder from its standard input, then waits until that input reaches end of file (the
# driver closed it or died, however it died) and ends the instance's processes: SIGTERM, then
# SIGKILL to whatever is left after a grace period. A process belongs to the instance when its
# environment carries the instance's marker (set while the instance starts, inherited by every
# process Ray starts), or when it has renamed itself ``ray::...`` and holds files of the
# instance's session folder open (renaming can overwrite part of the environment as the kernel
# shows it, marker included: Ray's agents do). Only this user's processes can be read.
_REAPER = r"""
import os, signal, sys, time
entry = (sys.argv[1] + "=" + sys.argv[2]).encode()
session = sys.stdin.readline().strip()
sys.stdin.read()
def holds_session_files(pid):
    try:
        fds = os.listdir("/proc/" + pid + "/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            if os.readlink("/proc/" + pid + "/fd/" + fd).startswith(session + "/"):
                return True
        except OSError:
            pass
    return False
def instance():
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            with open("/proc/" + pid + "/environ", "rb") as f:
                env = f.read()
            with open("/proc/" + pid + "/cmdline", "rb") as f:
                renamed = f.read().startswith(b"ray::")
        except OSError:
            continue
        if entry in env.split(b"\0") or (session and renamed and holds_session_files(pid)):
            found.append(int(pid))
    return found
for sig in (signal.SIGTERM, signal.SIGKILL):
    pids = instance()
    for pid in pids:
        try:
            os.kill(pid, sig)
        except OSError:
            pass
    end = time.monotonic() + 3
    while pids and time.monotonic() < end:
        time.sleep(0.1)
        pids = instance()
    if not pids:
        break
"""


def _start_reaper(marker: str) -> subprocess.Popen | None:
    """Start the reaper of the private instance marked ``marker`` (Linux: it reads /proc)."""
    if not os.path.isdir("/proc/self/fd"):
        return None
    env = {k: v for k, v in os.environ.items() if k != INSTANCE_ENV}
    return subprocess.Popen([sys.executable, "-I", "-c", _REAPER, INSTANCE_ENV, marker],
                            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=env, start_new_session=True, text=True)


def _release_reapers() -> None:
    """Let the reapers of earlier private instances (shut down by now) clean up and exit."""
    for reaper in _reapers:
        if reaper.stdin is not None and not reaper.stdin.closed:
            reaper.stdin.close()
    _reapers[:] = [r for r in _reapers if r.poll() is None]


def _split_address(address: str) -> tuple[str, int] | None:
    """``host:port`` (also ``ray://host:port`` and ``[v6]:port``), or None when it is not one."""
    rest = address.split("://", 1)[1] if "://" in address else address
    host, sep, port = rest.rpartition(":")
    if not sep or not port.isdigit() or not host:
        return None
    return host.strip("[]"), int(port)


def _ray_host(host: str) -> str:
    """The host Ray itself connects to: it replaces a loopback name by this node's address
    unless cluster mode is off (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``)."""
    if host in ("localhost", "127.0.0.1", "::1"):
        from ray.util import get_node_ip_address

        return get_node_ip_address()
    return host


# the client's connection preface and an empty SETTINGS frame (HTTP/2, RFC 9113 section 3.4)
_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"


def _answers_as_grpc(host: str, port: int, timeout: float) -> str | None:
    """None when ``host:port`` answers an HTTP/2 handshake (as Ray's GCS, a gRPC server,
    does); otherwise why not."""
    try:
        with socket.create_connection((host, port), timeout=max(timeout, 0.05)) as s:
            if os.environ.get("RAY_USE_TLS", "0").lower() in ("1", "true"):
                return None  # a TLS handshake first: reaching the port is all we check
            s.sendall(_H2_PREFACE)
            head = b""
            while len(head) < 9:
                part = s.recv(9 - len(head))
                if not part:
                    return "the connection was closed without an answer"
                head += part
    except TimeoutError:
        return "no answer"
    except OSError as exc:
        return exc.strerror or str(exc)
    if head[3] != 0x4:  # a server's first frame is its SETTINGS frame
        return "something answers there, but without the gRPC handshake of a Ray cluster"
    return None


def wait_for_cluster(address: str, timeout: float) -> None:
    """Return once ``address`` answers as a Ray cluster does; raise :class:`RayConnectTimeout`
    after ``timeout`` seconds of trying (refused, unreachable, unknown host, wrong service)."""
    parsed = _split_address(address)
    if parsed is None:
        return  # "auto" and the like: Ray resolves them and fails at once when nothing is found
    host, port = parsed[0], parsed[1]
    host = _ray_host(host) if "://" not in address else host
    deadline = time.monotonic() + timeout
    while True:
        why = _answers_as_grpc(host, port, min(deadline - time.monotonic(), 5.0))
        if why is None:
            return
        left = deadline - time.monotonic()
        if left <= 0:
            shown = address if host == parsed[0] else f"{address} (Ray connects to {host}:{port})"
            raise RayConnectTimeout(
                f"no Ray cluster answered at {shown} within {timeout:g} s ({why}); start one "
                f"there (ray start --head), check the address, or give more time with "
                f"--connect-timeout SECONDS")
        time.sleep(min(0.5, left))


def _check_same_cluster(ray, address: str | None) -> None:
    """This process is connected already: refuse another ``host:port`` than that cluster's."""
    parsed = _split_address(address) if address and "://" not in address else None
    if parsed is None:
        return  # a private instance asked for (the current one serves), or "auto"
    wanted = f"{_ray_host(parsed[0])}:{parsed[1]}"
    current = ray.get_runtime_context().gcs_address
    if current != wanted:
        raise RuntimeError(f"this process is connected to the Ray cluster at {current} already; "
                           f"it cannot also use {address} (call ray.shutdown() first)")


def ray_init(address: str | None = None, num_cpus: int | None = None, connect_timeout: float = 30.0):
    """Connect to ``address`` or start a private instance bound to the loopback interface.

    Connecting first waits (at most ``connect_timeout`` seconds) until the address answers as a
    Ray cluster, then calls ``ray.init``; :class:`RayConnectTimeout` when it does not.

    A private instance runs with Ray's cluster mode off (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``,
    read by Ray when it is imported): its processes listen on 127.0.0.1 only. On Linux a reaper
    process started beside them ends them once this process has ended, whatever ended it (when
    a driver is killed, Ray leaves its dashboard and runtime-env agents running).
    """
    if not math.isfinite(connect_timeout) or connect_timeout <= 0:
        raise ValueError(f"--connect-timeout must be a number of seconds > 0, got {connect_timeout}")
    private = not address or address == "local"
    if private and "ray" not in sys.modules:
        os.environ[LOOPBACK_ENV] = "0"
    try:
        import ray
        from ray.util import get_node_ip_address
    except ImportError as exc:  # pragma: no cover - exercised only without the extra
        raise RuntimeError("the ray executor needs the extra: pip install 'clop-lab[ray]'") from exc
    if ray.is_initialized():
        _check_same_cluster(ray, None if private else address)
        return ray
    if not private:
        wait_for_cluster(address, connect_timeout)
        try:
            ray.init(address=address, log_to_driver=False)
        except ConnectionError as exc:
            raise RayConnectTimeout(f"could not connect to the Ray cluster at {address}: "
                                    f"{' '.join(str(exc).split())}") from exc
        return ray
    if get_node_ip_address() not in ("127.0.0.1", "::1"):
        raise RuntimeError(
            f"a private Ray instance would listen on {get_node_ip_address()}, not 127.0.0.1: ray "
            f"was imported before {LOOPBACK_ENV}=0 was set; set it in the environment")
    _release_reapers()
    marker = uuid.uuid4().hex
    reaper = _start_reaper(marker)
    os.environ[INSTANCE_ENV] = marker
    try:
        # address="local": always a new private instance, never an existing cluster found on disk
        ray.init(address="local", num_cpus=num_cpus or os.cpu_count(), include_dashboard=False,
                 log_to_driver=False)
    except BaseException:
        if reaper is not None:
            reaper.stdin.close()  # clean up what was started
        raise
    finally:
        del os.environ[INSTANCE_ENV]
    if reaper is not None:
        context = ray.get_runtime_context()
        try:
            reaper.stdin.write(os.path.join(context.get_temp_dir(), context.get_session_name()) + "\n")
            reaper.stdin.flush()
        except OSError:  # the reaper is gone (killed): the instance still runs, uncovered
            pass
        _reapers.append(reaper)
    return ray

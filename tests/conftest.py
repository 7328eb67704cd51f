import os

# Ray resolves 127.0.0.1 to the machine's routable address unless its cluster mode is off;
# with it off every Ray process of the tests binds to the loopback interface only. Set before
# any test module imports ray (subprocesses inherit it).
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

import signal

import pytest
from hypothesis import settings

# A job started in the background of a non-interactive shell (``make test &``, nohup) inherits
# SIGINT ignored, and its children inherit that across exec: Python then installs no
# KeyboardInterrupt handler, and the tests that press Ctrl-C on a command would wait for an
# exit that never comes. A handler here is reset to the default in every child at exec.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

#: a test that hangs fails after this many seconds, with its name (pytest-timeout), unless it
#: sets its own limit (@pytest.mark.timeout) or the run sets one (--timeout, PYTEST_TIMEOUT,
#: the ini option)
DEFAULT_TIMEOUT_S = 900


def pytest_collection_modifyitems(config, items):
    if not config.pluginmanager.hasplugin("timeout"):
        return
    if (config.getoption("timeout", None) is not None or os.environ.get("PYTEST_TIMEOUT")
            or config.getini("timeout")):
        return
    for item in items:
        if item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(DEFAULT_TIMEOUT_S))


settings.register_profile("default", max_examples=25, deadline=None, derandomize=True)
settings.register_profile("thorough", max_examples=300, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

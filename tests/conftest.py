import os

# Ray resolves 127.0.0.1 to the machine's routable address unless its cluster mode is off;
# with it off every Ray process of the tests binds to the loopback interface only. Set before
# any test module imports ray (subprocesses inherit it).
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

from hypothesis import settings

settings.register_profile("default", max_examples=25, deadline=None, derandomize=True)
settings.register_profile("thorough", max_examples=300, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

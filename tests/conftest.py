"""Test-suite defaults: a derandomized hypothesis profile, ``--runslow``, and the
data directory taken from ``L2OBENCH_DATA_DIR`` (never a path written here): one
sub-directory per data set, or the MNIST files themselves (the older layout)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

# The example plugin is a separate distribution with its own tests; they run in
# its own environment (tests/test_packaging.py), not as part of this suite.
collect_ignore = ["example_plugin"]

# "ci" (the default) replays the same examples on every run, so a failure in CI is a
# failure on a laptop; HYPOTHESIS_PROFILE=dev explores fresh examples each run.
settings.register_profile(
    "ci", derandomize=True, deadline=None, database=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("dev", deadline=None, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# A relative data directory is resolved once, so subprocesses started in other
# working directories read the same files.
if os.environ.get("L2OBENCH_DATA_DIR"):
    os.environ["L2OBENCH_DATA_DIR"] = str(Path(os.environ["L2OBENCH_DATA_DIR"]).expanduser().resolve())


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False,
                     help="also run tests marked slow (long meta-training and full-suite runs)")


def pytest_configure(config):
    config.addinivalue_line("markers", "integration: builds and pip-installs packages in scratch "
                                       "environments; part of the default run")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow"):
        return
    skip_slow = pytest.mark.skip(reason="slow: run with --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip_slow)


def pytest_report_header(config):
    data = os.environ.get("L2OBENCH_DATA_DIR")
    return f"L2OBENCH_DATA_DIR: {data or 'unset (data sets are downloaded into the user cache)'}"


@pytest.fixture
def single_thread():
    """One intra-op thread for tests of small tensors: a second thread only spins,
    badly so on a busy 2-core machine.  Modules opt in with
    ``pytestmark = pytest.mark.usefixtures("single_thread")``."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def fresh_registry(monkeypatch):
    """Forget the process-wide registry before and after a test that changes what is installed
    or the plugin environment variables."""
    from l2obench import registry

    monkeypatch.setattr(registry, "_default", None)


@pytest.fixture
def plugin_env(monkeypatch, fresh_registry):
    """No plugin environment variables from the caller's shell."""
    from l2obench.registry import ALLOW_ENV, DISABLE_ENV

    monkeypatch.delenv(ALLOW_ENV, raising=False)
    monkeypatch.delenv(DISABLE_ENV, raising=False)
    return monkeypatch

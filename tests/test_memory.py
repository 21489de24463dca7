"""keep_freed_memory: glibc's malloc told to keep freed blocks, once per process, unless switched off."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from l2obench import memory

GLIBC = memory._glibc()


def _fresh(env_value: str | None) -> str:
    env = {k: v for k, v in os.environ.items() if k != memory.ENV}
    if env_value is not None:
        env[memory.ENV] = env_value
    code = "from l2obench.memory import keep_freed_memory as k; print(k(), k())"
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout


@pytest.mark.skipif(not GLIBC, reason="glibc only")
def test_applied_once_on_glibc():
    assert _fresh(None).split() == ["True", "True"]


@pytest.mark.parametrize("value", ["0", "off", "false"])
def test_switched_off_by_the_environment(value):
    assert _fresh(value).split() == ["False", "False"]


@pytest.mark.skipif(not GLIBC, reason="glibc only")
def test_lstm_steps_on_32_seeds_stop_page_faulting():
    """The learned LSTM's update for 32 seeds of 20,000 coordinates makes state tensors
    of 51 MB every step: by default each is page-faulted in anew (~50k faults a step);
    with freed memory kept, the steady state reuses the freed blocks."""
    code = """
from l2obench.memory import keep_freed_memory
keep_freed_memory()
import resource, torch
from l2obench.registry import get_registry
torch.set_num_threads(1)
torch.manual_seed(0)
opt = get_registry().learned("lstm").opt_fn()
params, grads = torch.zeros(32, 20_000), torch.randn(32, 20_000)
with torch.no_grad():
    state = opt.init(params)
    for _ in range(3):
        _, state = opt.update(grads, state, params)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):
        _, state = opt.update(grads, state, params)
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) // 5)
"""

    def faults_per_step(value: str) -> int:
        env = {**os.environ, memory.ENV: value}
        return int(subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                                  check=True).stdout)

    default, kept = faults_per_step("0"), faults_per_step("1")
    assert default > 20_000 and kept < default / 5, (default, kept)

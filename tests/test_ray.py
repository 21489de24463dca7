"""``--executor ray`` gives the same results table as the local executor (a local Ray
instance; CI installs Ray through the test extra)."""
from __future__ import annotations

import os

import pandas as pd
import pytest

import l2obench
from l2obench.errors import PluginError
from l2obench.runner import Runner
from l2obench.suite import parse_suite

ray = pytest.importorskip("ray")

SUITE = """\
[suite]
name = "tiny-ray"
seeds = 3
validation_seeds = 2

[[meta_train]]
name = "lstm-tiny"
optimizer = "lstm"
params = { preprocess = false, hidden = 4, layers = 1 }
task = { family = "quadratic", dim = 5 }
horizon = 8
unroll = 4
epochs = 1
episodes_per_epoch = 2
meta_batch = 2
validation_seeds = 2

[baselines]
optimizers = ["sgd", "adam"]
lr_grid = [1000.0, 0.1]

[[test]]
task = { family = "quadratic", dim = [5, 7] }
horizons = [8]
"""


@pytest.fixture(scope="module")
def local_ray():
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    if started:
        ray.shutdown()


def canonical(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame.drop(columns=["wall_time", "compute_time", "elapsed"])
    return frame.sort_values(["cell_key", "metric", "seed", "step"], kind="stable").reset_index(drop=True)


def test_ray_gives_the_same_table_as_local(local_ray, tmp_path):
    quiet = open(os.devnull, "w")
    suite = parse_suite(SUITE, tmp_path / "tiny.toml")
    on_ray = Runner(suite, tmp_path / "ray").run("ray", workers=2, progress=False, stream=quiet)
    on_local = Runner(suite, tmp_path / "local").run("local", workers=2, progress=False, stream=quiet)
    assert not on_ray.failed and not on_local.failed
    assert on_ray.ran == on_local.ran == 1 + 2 * 2 * 2 + 2 + 2 * 2
    ray_table = l2obench.load_results(tmp_path / "ray")
    assert (ray_table["status"] == "diverged").any()  # sgd at lr 1000, recorded on Ray too
    pd.testing.assert_frame_equal(canonical(ray_table), canonical(l2obench.load_results(tmp_path / "local")),
                                  check_exact=False, rtol=1e-6)
    again = Runner(parse_suite(SUITE, tmp_path / "tiny.toml"), tmp_path / "ray")
    assert again.count() == (on_ray.ran, 0)


def test_ray_missing_is_one_line(monkeypatch):
    import builtins

    from l2obench.plugins.executors import RayExecutor

    real_import = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray":
            raise ImportError("No module named 'ray'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    with pytest.raises(PluginError, match=r"pip install 'l2obench\[ray\]'"):
        RayExecutor(2)

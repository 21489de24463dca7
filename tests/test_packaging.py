"""Packaging, end to end: the l2obench wheel installed in a scratch environment,
and the example third-party plugin (tests/example_plugin) installed with pip,
listed, used in a suite and passing its own conformance tests.

These are the slowish integration tests (tens of seconds: builds, pip installs
and subprocesses); they run by default and in CI.  Scratch environments are
``venv --system-site-packages`` environments that also see this interpreter's
site-packages, so torch and the other dependencies are inherited and nothing is
downloaded; packages are installed with ``--no-deps --no-build-isolation``.
"""
from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "tests" / "example_plugin"
BASELINES = {"sgd", "momentum", "nag", "rmsprop", "adam", "adagrad", "adamw"}
# Build outputs and environments never travel into a scratch copy of a source tree.
IGNORE = shutil.ignore_patterns(".git", ".venv", "__pycache__", "*.egg-info", "build", "dist", ".hypothesis",
                                ".pytest_cache", "runs", "results", "tests")


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "L2OBENCH_PLUGINS", "L2OBENCH_DISABLE_PLUGIN_AUTOLOAD", "VIRTUAL_ENV")}
    return {**env, **extra}


def run(cmd: list, cwd: Path | None = None, env: dict | None = None, timeout: float = 300,
        expect: int = 0) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env or _clean_env(), capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == expect, (
        f"{' '.join(map(str, cmd))} exited {proc.returncode}\n--- stdout\n{proc.stdout[-4000:]}\n"
        f"--- stderr\n{proc.stderr[-4000:]}")
    return proc


@dataclass
class ScratchEnv:
    root: Path
    python: Path

    def run(self, *args, **kw) -> subprocess.CompletedProcess:
        return run([self.python, *args], **kw)

    def pip_install(self, *args) -> None:
        self.run("-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--no-index",
                 "--ignore-installed", "--disable-pip-version-check", *args)

    def owns(self, path: str) -> bool:
        return Path(path).resolve().is_relative_to(self.root.resolve())


def scratch_env(path: Path) -> ScratchEnv:
    """A fresh venv that inherits this interpreter's packages (torch, pytest, pip, setuptools).

    A venv made from a venv sees only the base interpreter's site-packages, so
    this interpreter's own site directories are added with a ``.pth`` file.
    """
    run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", path])
    python = path / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    purelib = Path(run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"]).stdout.strip())
    (purelib / "_inherit_parent_env.pth").write_text(
        "import site; " + "; ".join(f"site.addsitedir({d!r})" for d in site.getsitepackages()) + "\n")
    return ScratchEnv(path, python)


# -- the l2obench wheel ---------------------------------------------------------------

@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel of l2obench, built from a copy of the source tree (the tree itself stays clean)."""
    tmp = tmp_path_factory.mktemp("wheel")
    shutil.copytree(ROOT, tmp / "src", ignore=IGNORE)
    run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "--no-index",
         "--disable-pip-version-check", tmp / "src", "-w", tmp / "dist"])
    (found,) = (tmp / "dist").glob("l2obench-*.whl")
    return found


def test_wheel_holds_only_the_l2obench_package(wheel):
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        info = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
        entry_points = zf.read(info).decode()
    tops = {n.split("/")[0] for n in names}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"l2obench"}
    for module in ("l2obench/registry.py", "l2obench/plugins/baselines.py", "l2obench/plugins/quadratic.py",
                   "l2obench/plugins/mnist.py", "l2obench/testing/__init__.py", "l2obench/commands/listing.py",
                   "l2obench/plugins/lstm/__init__.py", "l2obench/plugins/lstm/variants.py",
                   "l2obench/plugins/lstm/backend.py", "l2obench/plugins/lstm_kernel.py",
                   "l2obench/plugins/lstm_kernel.cpp", "l2obench/plugins/lopts/__init__.py",
                   "l2obench/plugins/lopts/mlp_lopt.py", "l2obench/plugins/lopts/hrnn.py",
                   "l2obench/plugins/estimators/__init__.py", "l2obench/plugins/estimators/pes.py"):
        assert module in names
    assert "[l2obench]" in entry_points and "baselines = l2obench.plugins.baselines" in entry_points
    assert "lopts = l2obench.plugins.lopts" in entry_points
    assert "estimators = l2obench.plugins.estimators" in entry_points
    assert "l2obench = l2obench.cli:main" in entry_points


def test_wheel_installs_and_runs_from_a_scratch_environment(wheel, tmp_path):
    env = scratch_env(tmp_path / "venv")
    env.pip_install(wheel)
    # Run outside the source tree, so nothing can be imported from it by accident.
    files = json.loads(env.run("-c", (
        "import json, l2obench, l2obench.plugins.baselines, l2obench.testing, importlib.metadata as md;"
        "print(json.dumps([l2obench.__file__, l2obench.plugins.baselines.__file__, l2obench.testing.__file__,"
        " str(md.distribution('l2obench').locate_file('')), l2obench.__version__]))"), cwd=tmp_path).stdout)
    *paths, version = files
    for path in paths:
        assert env.owns(path), f"{path} is not inside the scratch environment {env.root}"
    assert version == _project_version()
    if shutil.which(os.environ.get("CXX", "c++")):  # the installed kernel source builds and loads
        built = env.run("-c", "from l2obench.plugins import lstm_kernel; print(lstm_kernel.available())", cwd=tmp_path)
        assert built.stdout.strip() == "True", built.stderr

    script = env.root / ("Scripts/l2obench.exe" if os.name == "nt" else "bin/l2obench")
    rows = json.loads(run([script, "list", "--json"], cwd=tmp_path).stdout)
    by_name = {r["name"]: r for r in rows}
    assert BASELINES <= set(by_name)
    assert {"quadratic", "mnist-mlp"} <= set(by_name)
    assert {by_name[n]["distribution"] for n in BASELINES} == {"l2obench"}


def _project_version() -> str:
    import tomllib

    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


# -- the example third-party plugin ---------------------------------------------------

@pytest.fixture(scope="module")
def plugin_env(tmp_path_factory) -> tuple[ScratchEnv, Path]:
    """A scratch environment with tests/example_plugin pip-installed from a copy of it."""
    tmp = tmp_path_factory.mktemp("plugin")
    source = tmp / "l2obench-example"
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "build"))
    env = scratch_env(tmp / "venv")
    env.pip_install(source)
    where = env.run("-c", "import l2obench_example; print(l2obench_example.__file__)", cwd=tmp).stdout.strip()
    assert env.owns(where), f"l2obench_example was imported from {where}, not from the scratch environment"
    return env, source


def test_example_plugin_appears_in_list(plugin_env):
    env, source = plugin_env
    rows = json.loads(env.run("-m", "l2obench.cli", "list", "--json", cwd=source.parent).stdout)
    by_name = {r["name"]: r for r in rows}
    assert by_name["lion"]["kind"] == "optimizer"
    assert by_name["lion"]["parameters"] == {"lr": 1e-4, "beta1": 0.9, "beta2": 0.99, "weight_decay": 0.0}
    assert by_name["logistic-regression"]["kind"] == "task"
    for name in ("lion", "logistic-regression"):
        assert (by_name[name]["distribution"], by_name[name]["version"]) == ("l2obench-example", "0.1.0")
    assert BASELINES <= set(by_name)

    table = env.run("-m", "l2obench.cli", "list", cwd=source.parent).stdout
    assert any(line.split()[:3] == ["optimizer", "lion", "l2obench-example"] for line in table.splitlines())


def test_example_plugin_can_be_switched_off(plugin_env):
    env, source = plugin_env
    proc = env.run("-m", "l2obench.cli", "list", "--json", cwd=source.parent,
                   env=_clean_env(L2OBENCH_DISABLE_PLUGIN_AUTOLOAD="1"))
    names = {r["name"] for r in json.loads(proc.stdout)}
    assert "lion" not in names and BASELINES <= names
    assert "l2obench-example (example)" in proc.stderr


def test_example_plugin_passes_its_own_tests(plugin_env):
    """The plugin's test suite, conformance kit included, run in its own environment."""
    env, source = plugin_env
    proc = env.run("-m", "pytest", "-q", "-p", "no:cacheprovider", cwd=source, timeout=400)
    assert " passed" in proc.stdout and "failed" not in proc.stdout


def test_example_plugin_runs_in_a_suite(plugin_env, tmp_path):
    """tests/example_plugin/suite.toml tunes and tests Lion on logistic regression with ``l2obench run``."""
    env, source = plugin_env
    out = tmp_path / "run"
    env.run("-m", "l2obench.cli", "run", "suite.toml", "--out", out, "--workers", "1", "--no-progress",
            cwd=source, timeout=400)
    summary = json.loads(env.run("-c", (
        "import json, sys, l2obench; df = l2obench.load_results(sys.argv[1]);"
        "test = df[df.split == 'test'];"
        "print(json.dumps({'optimizers': sorted(test.optimizer.unique()), 'families': sorted(test.family.unique()),"
        " 'lion_versions': sorted(test[test.optimizer == 'lion'].versions.unique()),"
        " 'finite': bool(test.loss.notna().all()), 'seeds': sorted(int(s) for s in test.seed.unique())}))"),
        out, cwd=tmp_path).stdout)
    assert {k: v for k, v in summary.items() if k != "lion_versions"} == {
        "optimizers": ["adam", "lion"], "families": ["logistic-regression"], "finite": True, "seeds": [0, 1, 2, 3]}
    assert all("l2obench-example" in v for v in summary["lion_versions"]), summary["lion_versions"]


def test_kit_pytest_plugin_checks_the_installed_distribution(plugin_env, tmp_path):
    """``pytest --l2obench-conformance=l2obench-example``, as the README offers, with no test file at all."""
    env, _ = plugin_env
    proc = env.run("-m", "pytest", "-q", "-p", "no:cacheprovider", "--l2obench-conformance=l2obench-example",
                   "-rA", cwd=tmp_path, timeout=400)
    assert "l2obench[l2obench-example]::lion-check_zero_grad" in proc.stdout
    assert "logistic-regression-check_task_batching" in proc.stdout
    assert " passed" in proc.stdout and "failed" not in proc.stdout


def test_commands_that_need_no_tensor_do_not_import_torch():
    """`l2obench report`, `schema` and `--help` start fast: nothing they import pulls in torch."""
    code = ("import sys, l2obench, l2obench.cli, l2obench.suite, l2obench.report, l2obench.store;"
            "l2obench.cli.build_parser(); l2obench.suite.json_schema(); print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"

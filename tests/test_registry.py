"""The plugin registry: discovery (inline plugins and distributions found through
the ``l2obench`` entry-point group), name rules, and the one-line errors a broken
plugin causes.  A real pip-installed plugin is tested in test_packaging.py."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import l2obench
from l2obench import ConfigError, PluginError, Registry, hookimpl
from l2obench.cli import main
from l2obench.optimizer import Optimizer, scale
from l2obench.registry import ALLOW_ENV, DISABLE_ENV, get_registry
from l2obench.task import TaskConfig, TaskFamily

BASELINES = {"sgd", "momentum", "nag", "rmsprop", "adam", "adagrad", "adamw"}


def assert_one_line(message: str, *needles: str) -> None:
    assert "\n" not in message.strip(), message
    assert "Traceback" not in message, message
    for needle in needles:
        assert needle in message, f"{needle!r} not in {message!r}"


# -- a plugin written inline -------------------------------------------------------

class InlinePlugin:
    """A plugin can be any object with hook implementations."""

    @hookimpl
    def register_optimizers(self, register):
        def halved_sgd(lr: float = 0.5) -> Optimizer:
            """SGD at half the step size."""
            return scale(-lr / 2)

        register("halved-sgd", halved_sgd)

    @hookimpl
    def register_task_families(self, register):
        class LineConfig(TaskConfig):
            dim: int = 3

        register("line", TaskFamily(LineConfig, build=lambda c: c))


def test_inline_plugin_is_registered_next_to_the_installed_ones(plugin_env):
    reg = Registry(plugins=[InlinePlugin()])
    entry = reg.get("optimizer", "halved-sgd")
    assert (entry.distribution, entry.kind, entry.plugin) == ("<inline>", "optimizer", "InlinePlugin")
    assert entry.parameters() == {"lr": 0.5}
    opt = reg.optimizer("halved-sgd", lr=0.2)
    import torch

    updates, _ = opt.update(torch.ones(2, 3), opt.init(torch.zeros(2, 3)), torch.zeros(2, 3))
    assert torch.allclose(updates, torch.full((2, 3), -0.1))
    assert reg.family("line").name == "line"
    assert reg.task("line", dim=5).dim == 5
    assert BASELINES <= set(reg.entries["optimizer"])


def test_inline_plugin_alone():
    reg = Registry(plugins=[InlinePlugin()], entry_points=False)
    assert set(reg.entries["optimizer"]) == {"halved-sgd"}
    assert set(reg.entries["task"]) == {"line"}


def test_two_inline_plugins_of_one_class_are_both_registered():
    with pytest.raises(PluginError) as err:  # both register "halved-sgd"
        Registry(plugins=[InlinePlugin(), InlinePlugin()], entry_points=False)
    assert_one_line(str(err.value), "'halved-sgd' is registered twice", "'InlinePlugin'", "'InlinePlugin#2'")


def test_a_module_is_a_plugin():
    import types

    mod = types.ModuleType("tiny_plugin")

    @hookimpl
    def register_optimizers(register):
        register("tiny", lambda lr=1.0: scale(-lr))

    mod.register_optimizers = register_optimizers
    reg = Registry(plugins=[mod], entry_points=False)
    assert reg.get("optimizer", "tiny").plugin == "tiny_plugin"


def test_a_hook_without_register_is_refused_naming_its_plugin():
    """pluggy accepts a hookimpl that takes fewer arguments than its spec; such a hook
    could register nothing, so it is an error instead of silence."""
    import types

    mod = types.ModuleType("forgetful_plugin")

    @hookimpl
    def register_executors():
        pass

    mod.register_executors = register_executors
    with pytest.raises(PluginError) as err:
        Registry(plugins=[mod], entry_points=False)
    assert_one_line(str(err.value), "'forgetful_plugin'", "register_executors() without the 'register' argument")


@pytest.mark.parametrize("returned", [{"tiny": None}, [("tiny", None)], 0])
def test_a_hook_that_returns_instead_of_registering_is_refused(returned):
    class Returning:
        @hookimpl
        def register_optimizers(self, register):
            return returned

    with pytest.raises(PluginError) as err:
        Registry(plugins=[Returning()], entry_points=False)
    assert_one_line(str(err.value), "'Returning'", f"register_optimizers returned a {type(returned).__name__}",
                    "call register")


# -- faked distributions: a dist-info directory on sys.path ---------------------------

@pytest.fixture
def fake_dist(tmp_path, plugin_env):
    """Install fake distributions by writing ``NAME-VERSION.dist-info`` next to their
    modules in a directory put on ``sys.path`` (and on PYTHONPATH, for subprocesses)."""
    root = tmp_path / "site"
    root.mkdir()
    plugin_env.syspath_prepend(str(root))
    plugin_env.setenv("PYTHONPATH", os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]))
    modules: list[str] = []

    def make(dist: str, modules_src: dict[str, str], entry_points: dict[str, str] | None = None,
             version: str = "1.0") -> Path:
        for module, src in modules_src.items():
            (root / f"{module}.py").write_text(textwrap.dedent(src))
            modules.append(module)
        info = root / f"{dist.replace('-', '_')}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
        eps = entry_points or {m: m for m in modules_src}
        (info / "entry_points.txt").write_text(
            "[l2obench]\n" + "".join(f"{name} = {target}\n" for name, target in eps.items()))
        import importlib

        importlib.invalidate_caches()
        return root

    yield make
    for module in modules:
        sys.modules.pop(module, None)


SIGN_PLUGIN = """
    import torch
    from l2obench import Optimizer, hookimpl

    def signdescent(lr: float = 0.01) -> Optimizer:
        '''Steps of fixed size along the sign of the gradient.'''
        return Optimizer(lambda p: {}, lambda g, s, p: (-lr * torch.sign(g), s))

    @hookimpl
    def register_optimizers(register):
        register("signdescent", signdescent)
"""


def test_faked_distribution_is_discovered_through_its_entry_point(fake_dist):
    fake_dist("l2obench-fake", {"fake_sign": SIGN_PLUGIN}, {"sign": "fake_sign"}, version="1.2.3")
    entry = Registry().get("optimizer", "signdescent")
    assert (entry.distribution, entry.version, entry.plugin) == ("l2obench-fake", "1.2.3", "sign")
    assert entry.parameters() == {"lr": 0.01}
    assert get_registry(refresh=True).get("optimizer", "signdescent").distribution == "l2obench-fake"


def test_faked_distribution_shows_in_cli_list(fake_dist, capsys):
    import json

    fake_dist("l2obench-fake", {"fake_sign": SIGN_PLUGIN}, version="0.3")
    assert main(["list", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["signdescent"]["distribution"] == "l2obench-fake"
    assert rows["signdescent"]["version"] == "0.3"
    assert rows["signdescent"]["parameters"] == {"lr": 0.01}
    assert rows["signdescent"]["description"] == "Steps of fixed size along the sign of the gradient."


def test_entry_points_can_be_faked_with_monkeypatch(plugin_env):
    """The same discovery path, with ``importlib.metadata.entry_points`` replaced."""
    import importlib.metadata as md
    import types

    module = types.ModuleType("monkey_plugin")

    @hookimpl
    def register_optimizers(register):
        register("monkey", lambda lr=0.1: scale(-lr))

    module.register_optimizers = register_optimizers
    plugin_env.setitem(sys.modules, "monkey_plugin", module)

    class FakeDistribution(md.Distribution):
        texts = {"METADATA": "Metadata-Version: 2.1\nName: l2obench-monkey\nVersion: 9.9\n",
                 "entry_points.txt": "[l2obench]\nmonkey = monkey_plugin\n"}

        def read_text(self, filename):
            return self.texts.get(filename)

        def locate_file(self, path):
            return Path(path)

    fake = list(FakeDistribution().entry_points.select(group="l2obench"))
    real = md.entry_points
    plugin_env.setattr(md, "entry_points",
                       lambda **kw: [*real(**kw), *fake] if kw.get("group") == "l2obench" else real(**kw))
    entry = Registry().get("optimizer", "monkey")
    assert (entry.distribution, entry.version) == ("l2obench-monkey", "9.9")


# -- broken plugins: one line that names the distribution ----------------------------

def test_two_distributions_registering_one_name(fake_dist):
    fake_dist("l2obench-one", {"one_sign": SIGN_PLUGIN})
    fake_dist("l2obench-two", {"two_sign": SIGN_PLUGIN})
    with pytest.raises(PluginError) as err:
        Registry()
    assert_one_line(str(err.value), "'signdescent'", "l2obench-one", "l2obench-two", ALLOW_ENV)


def test_a_plugin_taking_a_builtin_name_names_both_distributions(fake_dist):
    fake_dist("l2obench-clash", {"clash_adam": SIGN_PLUGIN.replace('register("signdescent"', 'register("adam"')})
    with pytest.raises(PluginError) as err:
        Registry()
    assert_one_line(str(err.value), "'adam'", "distribution l2obench ", "l2obench-clash")


def test_hand_designed_and_learned_optimizers_share_one_namespace():
    class Learned:
        @hookimpl
        def register_learned_optimizers(self, register):
            register("adam", lambda hidden=20: None)

    with pytest.raises(PluginError) as err:
        Registry(plugins=[Learned()])
    assert_one_line(str(err.value), "'adam'", "as an optimizer by distribution l2obench (plugin 'baselines')",
                    "as a learned optimizer by distribution <inline> (plugin 'Learned')")


def test_two_distributions_with_one_entry_point_name(fake_dist):
    fake_dist("l2obench-alpha", {"alpha_mod": SIGN_PLUGIN}, {"shared": "alpha_mod"})
    fake_dist("l2obench-beta", {"beta_mod": "x = 1\n"}, {"shared": "beta_mod"})
    with pytest.raises(PluginError) as err:
        Registry()
    assert_one_line(str(err.value), "'shared'", "l2obench-alpha", "l2obench-beta")


def test_hookimpl_with_a_wrong_signature_names_its_plugin(fake_dist):
    fake_dist("l2obench-badsig", {"badsig": """
        from l2obench import hookimpl

        @hookimpl
        def register_optimizers(reg, extra):
            pass
    """})
    with pytest.raises(PluginError) as err:
        Registry()
    assert_one_line(str(err.value), "plugin 'badsig'", "l2obench-badsig", "register_optimizers", "'extra'",
                    "Writing a plugin")


def test_hookimpl_for_an_unknown_hook_names_its_plugin(fake_dist):
    fake_dist("l2obench-typo", {"typo": """
        from l2obench import hookimpl

        @hookimpl
        def register_optimiser(register):
            pass
    """})
    with pytest.raises(PluginError) as err:
        Registry()
    assert_one_line(str(err.value), "plugin 'typo'", "l2obench-typo", "'register_optimiser'",
                    "did you mean 'register_optimizers'")


def test_hook_without_the_decorator_names_its_plugin(fake_dist):
    fake_dist("l2obench-undecorated", {"undecorated": """
        def register_optimizers(register):
            register("never", lambda lr=0.1: None)
    """})
    with pytest.raises(PluginError) as err:
        Registry()
    assert_one_line(str(err.value), "plugin 'undecorated'", "l2obench-undecorated", "register_optimizers()",
                    "@l2obench.hookimpl")


@pytest.mark.parametrize("source, what", [
    ("import l2obench_no_such_dependency\n", "ModuleNotFoundError"),
    ("def broken(:\n", "SyntaxError"),
    ("raise RuntimeError('no GPU\\nfound')\n", "RuntimeError: no GPU; found"),
    ("import sys\nsys.exit(3)\n", "SystemExit: 3"),
])
def test_plugin_that_fails_to_import(fake_dist, source, what):
    fake_dist("l2obench-noimport", {"noimport": source}, version="0.0.1")
    with pytest.raises(PluginError) as err:
        Registry()
    assert_one_line(str(err.value), "plugin 'noimport'", "l2obench-noimport 0.0.1", "failed to import",
                    what, DISABLE_ENV)


BROKEN_HOOK = """
    from l2obench import hookimpl

    @hookimpl
    def register_task_families(register):
        raise KeyError("mnist\\nis missing")
"""


def test_plugin_that_raises_in_a_hook(fake_dist):
    fake_dist("l2obench-raises", {"raises": BROKEN_HOOK}, version="2.0")
    with pytest.raises(PluginError) as err:
        Registry()
    assert_one_line(str(err.value), "plugin 'raises'", "l2obench-raises 2.0", "register_task_families",
                    "KeyError", DISABLE_ENV, ALLOW_ENV)


def test_plugin_registering_a_wrong_object(fake_dist):
    fake_dist("l2obench-wrongobj", {"wrongobj": """
        from l2obench import hookimpl

        @hookimpl
        def register_task_families(register):
            register("rosenbrock", {"dim": 2})

        @hookimpl
        def register_optimizers(register):
            register("constant", 0.1)
    """})
    with pytest.raises(PluginError) as err:
        Registry()
    assert_one_line(str(err.value), "'wrongobj'", "l2obench-wrongobj")


# -- switching a broken plugin off ---------------------------------------------------

def test_disable_autoload_skips_third_party_plugins(fake_dist, monkeypatch):
    fake_dist("l2obench-raises", {"raises": BROKEN_HOOK})
    fake_dist("l2obench-fake", {"fake_sign": SIGN_PLUGIN})
    monkeypatch.setenv(DISABLE_ENV, "1")
    reg = Registry()
    assert BASELINES <= set(reg.entries["optimizer"])
    assert "signdescent" not in reg.entries["optimizer"]
    assert sorted(reg.skipped) == ["l2obench-fake (fake_sign)", "l2obench-raises (raises)"]


@pytest.mark.parametrize("value", ["0", "", "false"])
def test_disable_autoload_off_values(fake_dist, monkeypatch, value):
    fake_dist("l2obench-fake", {"fake_sign": SIGN_PLUGIN})
    monkeypatch.setenv(DISABLE_ENV, value)
    assert "signdescent" in Registry().entries["optimizer"]


@pytest.mark.parametrize("allow", ["l2obench-fake", "L2OBENCH_FAKE", "fake_sign", "l2obench-fake, l2obench"])
def test_allow_list_loads_only_the_listed_plugins(fake_dist, monkeypatch, allow):
    fake_dist("l2obench-raises", {"raises": BROKEN_HOOK})
    fake_dist("l2obench-fake", {"fake_sign": SIGN_PLUGIN})
    monkeypatch.setenv(ALLOW_ENV, allow)
    reg = Registry()
    assert reg.get("optimizer", "signdescent").distribution == "l2obench-fake"
    assert BASELINES <= set(reg.entries["optimizer"])
    assert reg.skipped == ["l2obench-raises (raises)"]


def test_allow_list_wins_over_disable(fake_dist, monkeypatch):
    fake_dist("l2obench-fake", {"fake_sign": SIGN_PLUGIN})
    monkeypatch.setenv(DISABLE_ENV, "1")
    monkeypatch.setenv(ALLOW_ENV, "l2obench-fake")
    assert "signdescent" in Registry().entries["optimizer"]


def test_allow_list_with_a_name_nobody_installed(fake_dist, monkeypatch):
    fake_dist("l2obench-fake", {"fake_sign": SIGN_PLUGIN})
    monkeypatch.setenv(ALLOW_ENV, "l2obench-fkae")
    with pytest.raises(PluginError) as err:
        Registry()
    assert_one_line(str(err.value), ALLOW_ENV, "l2obench-fkae", "l2obench-fake")


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "l2obench.cli", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=120)


def test_cli_with_a_broken_plugin_prints_one_line_then_works_when_it_is_switched_off(fake_dist):
    """The real command, in its own process: no traceback, exit code 2, and a way out."""
    fake_dist("l2obench-raises", {"raises": BROKEN_HOOK}, version="2.0")
    broken = run_cli("list")
    assert broken.returncode == 2, broken.stderr
    assert broken.stdout == ""
    assert_one_line(broken.stderr, "l2obench: error:", "l2obench-raises 2.0", DISABLE_ENV)

    switched_off = run_cli("list", env={DISABLE_ENV: "1"})
    assert switched_off.returncode == 0, switched_off.stderr
    assert "adam" in switched_off.stdout and "quadratic" in switched_off.stdout
    assert_one_line(switched_off.stderr, "not loaded", "l2obench-raises (raises)")


def test_cli_in_process_reports_plugin_errors_as_one_line(fake_dist, capsys, monkeypatch):
    fake_dist("l2obench-raises", {"raises": BROKEN_HOOK})
    assert main(["list"]) == 2
    err = capsys.readouterr().err
    assert_one_line(err, "l2obench: error:", "l2obench-raises")
    monkeypatch.setenv(ALLOW_ENV, "l2obench")
    assert main(["list", "--json"]) == 0


# -- name rules ---------------------------------------------------------------------

def _register_optimizer(name):
    class Plugin:
        @hookimpl
        def register_optimizers(self, register):
            register(name, lambda lr=0.1: scale(-lr))

    return Registry(plugins=[Plugin()], entry_points=False)


@pytest.mark.parametrize("name", ["Adam", "1cycle", "my opt", "adam[lr=0.1]", "", "ad/am", "-adam", "adam,sgd",
                                  3, None])
def test_names_that_are_refused(name):
    with pytest.raises(PluginError) as err:
        _register_optimizer(name)
    assert_one_line(str(err.value), repr(name), "plugin 'Plugin' of distribution <inline>", "lower-case")


@pytest.mark.parametrize("name", ["lstm-gac", "rnnprop", "adam_w", "lion.v2", "l2l"])
def test_names_that_are_accepted(name):
    assert name in _register_optimizer(name).entries["optimizer"]


def test_one_name_in_two_kinds_is_allowed_where_kinds_do_not_meet():
    class Plugin:
        @hookimpl
        def register_optimizers(self, register):
            register("local", lambda lr=0.1: scale(-lr))

        @hookimpl
        def register_executors(self, register):
            register("local", lambda workers=1: None)

    reg = Registry(plugins=[Plugin()], entry_points=False)
    assert reg.get("executor", "local").kind == "executor"


def test_unknown_name_suggests_the_closest(plugin_env):
    with pytest.raises(ConfigError) as err:
        get_registry().optimizer("adamm")
    assert_one_line(str(err.value), "unknown optimizer 'adamm'", "did you mean 'adam'", "sgd")
    with pytest.raises(ConfigError) as err:
        get_registry().task("quadratc")
    assert_one_line(str(err.value), "unknown task family", "did you mean 'quadratic'")


@pytest.mark.parametrize("params, needles", [
    ({"learning_rate": 0.1}, ["'learning_rate'", "allowed: lr"]),
    ({"lr": "fast"}, ["lr='fast'", "number"]),
    ({"lr": True}, ["lr=True", "number"]),
])
def test_hyperparameters_are_checked_in_one_line(plugin_env, params, needles):
    with pytest.raises(ConfigError) as err:
        get_registry().optimizer("adam", **params)
    assert_one_line(str(err.value), "optimizer 'adam'", *needles)


def test_factory_with_var_keywords_takes_any_hyperparameter():
    class Plugin:
        @hookimpl
        def register_optimizers(self, register):
            def wrapped(lr: float = 0.1, **extra):
                assert extra == {"anything": 1}
                return scale(-lr)

            register("wrapped", wrapped)

    Registry(plugins=[Plugin()], entry_points=False).optimizer("wrapped", lr=0.2, anything=1)


def test_package_exports_the_registry():
    assert l2obench.get_registry is get_registry
    assert l2obench.Registry is Registry

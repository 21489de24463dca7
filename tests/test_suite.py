"""Suite files: validation before any work (one line: file, key path, value, what is
allowed, closest name), grid expansion and readable ids, the JSON Schema."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from l2obench.cli import main
from l2obench.errors import ConfigError
from l2obench.suite import format_value, json_schema, load_suite, make_id, parse_suite

SUITES = Path(__file__).resolve().parent.parent / "suites"

BASE = """\
[suite]
name = "mini"
seeds = 3
validation_seeds = 2

[baselines]
optimizers = ["sgd", "adam"]
lr_grid = [0.1, 0.01]
params = { adam = { beta1 = [0.9, 0.5] } }

[[test]]
task = { family = "quadratic", dim = [10, 20], functions = 2 }
horizons = [20, 40]
"""

META = """
[[meta_train]]
name = "tiny-lstm"
optimizer = "lstm"
params = { preprocess = false, hidden = 4 }
task = { family = "quadratic", dim = 5 }
horizon = 10
unroll = 5
epochs = 1
episodes_per_epoch = 2
"""

# (name, edit of BASE, what the one-line message must contain)
MISTAKES = [
    ("misspelt optimizer", ('"sgd", "adam"]', '"sgd", "adamm"]'),
     ["baselines.optimizers[1]", "'adamm'", "did you mean 'adam'"]),
    ("negative horizon", ("horizons = [20, 40]", "horizons = [20, -40]"),
     ["test[0].horizons[1]", "-40", "greater than 0"]),
    ("string seeds", ("seeds = 3", 'seeds = "three"'),
     ["suite.seeds", "'three'", "count of seeds"]),
    ("unknown key", ("horizons = [20, 40]", "horizons = [20, 40]\nhorizon = 10"),
     ["test[0].horizon", "unknown key", "did you mean 'horizons'", "allowed keys"]),
    ("broken TOML line", ("seeds = 3", "seeds = 3 3"), ["mini.toml:3:", "invalid TOML", "seeds = 3 3"]),
    ("unknown task key", ("functions = 2", "functons = 2"),
     ["test[0].task.functons", "did you mean 'functions'", "allowed keys"]),
    ("bad task value", ("dim = [10, 20]", "dim = [10, 0]"), ["test[0].task.dim", "0", "greater than 0"]),
    ("bad task value type", ("functions = 2", 'functions = "two"'), ["test[0].task.functions", "'two'"]),
    ("misspelt family", ('family = "quadratic"', 'family = "quadratik"'),
     ["test[0].task.family", "did you mean 'quadratic'"]),
    ("unknown hyperparameter", ("beta1 = [0.9, 0.5]", "betta1 = [0.9, 0.5]"),
     ["baselines.params.adam.betta1", "unknown parameter", "beta1"]),
    ("params of an unlisted baseline", ("params = { adam", "params = { adm"),
     ["baselines.params.adm", "did you mean 'adam'"]),
    ("unknown test optimizer", ("horizons = [20, 40]", 'horizons = [20, 40]\noptimizers = ["adma"]'),
     ["test[0].optimizers[0]", "'adma'", "did you mean 'adam'"]),
    ("missing section", ("[suite]\nname = \"mini\"", "[suit]\nname = \"mini\""), ["suit", "unknown key"]),
    ("bad device", ("seeds = 3", 'seeds = 3\ndevice = "gpu"'), ["suite.device", "'gpu'"]),
    ("duplicate seeds", ("validation_seeds = 2", "validation_seeds = [4, 4]"),
     ["suite.validation_seeds", "distinct"]),
    ("empty grid axis", ("dim = [10, 20]", "dim = []"), ["test[0].task.dim", "empty grid axis"]),
]


def edited(old_new) -> str:
    old, new = old_new
    assert old in BASE + META
    return (BASE + META).replace(old, new, 1)


@pytest.mark.parametrize("name,edit,expected", MISTAKES, ids=[m[0] for m in MISTAKES])
def test_a_mistake_is_one_line_naming_file_key_and_value(name, edit, expected, tmp_path):
    path = tmp_path / "mini.toml"
    path.write_text(edited(edit))
    with pytest.raises(ConfigError) as info:
        load_suite(path)
    message = str(info.value)
    assert "\n" not in message
    assert str(path) in message
    for part in expected:
        assert part in message, (part, message)


def test_meta_train_mistakes_are_named(tmp_path):
    for (old, new), part in [
        (('optimizer = "lstm"', 'optimizer = "lstn"'), "did you mean 'lstm'"),
        (("unroll = 5", "unroll = -5"), "meta_train[0].unroll"),
        (("hidden = 4", "hiden = 4"), "meta_train[0].params"),
        (("dim = 5", "dim = [5, 0]"), "meta_train[0].task.dim"),
        (("dim = 5", "dim = []"), "meta_train[0].task.dim: an empty grid axis"),
        (("epochs = 1", 'epochs = 1\nestimator = "pse"'), "meta_train[0].estimator: unknown estimator 'pse': did you mean 'pes'"),
        (("epochs = 1", 'epochs = 1\nestimator = "es"\nestimator_params = { population = 3 }'),
         "meta_train[0].estimator_params: estimator 'es': population=3 must be an even number"),
        (("epochs = 1", 'epochs = 1\nestimator = "pes"\nestimator_params = { truncation = 20 }'),
         "truncation=20 is longer than the horizon=10"),
        (("epochs = 1", 'epochs = 1\nobjective = "heldout_accuracy"'), "estimator 'tbptt' backpropagates"),
        (("epochs = 1", 'epochs = 1\nestimator = "es"\nobjective = "heldout_loss"'),
         "meta_train[0].objective: objective='heldout_loss' needs a task with held-out data"),
        (("epochs = 1", 'epochs = 1\ntruncation_schedule = "log-uniform"\nmin_horizon = 50'),
         "meta_train[0]: min_horizon=50 is longer than horizon=10"),
        (("epochs = 1", 'epochs = 1\ntruncation_schedule = "linear"'),
         "meta_train[0]: invalid truncation_schedule='linear': expected one of constant, log-uniform"),
        (("epochs = 1", "epochz = 1"), "did you mean 'epochs'"),
    ]:
        with pytest.raises(ConfigError) as info:
            parse_suite((BASE + META).replace(old, new), tmp_path / "m.toml")
        assert part in str(info.value) and "\n" not in str(info.value), str(info.value)


@pytest.mark.parametrize("name,edit,expected", MISTAKES[:5], ids=[m[0] for m in MISTAKES[:5]])
def test_cli_refuses_before_any_work_and_leaves_the_output_alone(name, edit, expected, tmp_path, capsys):
    suite = tmp_path / "mini.toml"
    suite.write_text(edited(edit))
    fresh = tmp_path / "fresh"
    assert main(["run", str(suite), "--out", str(fresh)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("l2obench: error: ") and len(err.splitlines()) == 1, err
    assert not fresh.exists()
    existing = tmp_path / "existing"
    (existing / "cells").mkdir(parents=True)
    (existing / "cells" / "keep.parquet").write_bytes(b"x")
    before = sorted((p.relative_to(existing), p.stat().st_mtime_ns) for p in existing.rglob("*"))
    assert main(["run", str(suite), "--out", str(existing), "--force"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert sorted((p.relative_to(existing), p.stat().st_mtime_ns) for p in existing.rglob("*")) == before


def test_missing_suite_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_suite(tmp_path / "nope.toml")


def test_grids_expand_to_cartesian_products_with_ids_in_suite_order(tmp_path):
    suite = parse_suite(BASE, tmp_path / "mini.toml")
    ids = [tv.task.id for tv in suite.tests]
    assert ids == ["quadratic[dim=10,functions=2]", "quadratic[dim=20,functions=2]"]
    assert all(tv.horizons == (20, 40) for tv in suite.tests)
    assert [o.id for o in suite.baselines["sgd"]] == ["sgd[lr=0.1]", "sgd[lr=0.01]"]
    assert [o.id for o in suite.baselines["adam"]] == [
        "adam[lr=0.1,beta1=0.9]", "adam[lr=0.1,beta1=0.5]", "adam[lr=0.01,beta1=0.9]", "adam[lr=0.01,beta1=0.5]"]
    # the full config (defaults included) is what identifies the work, the id what was written
    assert suite.tests[0].task.config == {"dim": 10, "functions": 2, "distribution": "gaussian", "init_scale": 0.01}
    assert suite.baselines["adam"][0].params["beta2"] == 0.999
    assert suite.test_seeds == [0, 1, 2]
    assert suite.validation_seeds == [1_000_000, 1_000_001]


def test_grid_order_follows_the_file_and_lists_are_axes(tmp_path):
    text = BASE.replace('task = { family = "quadratic", dim = [10, 20], functions = 2 }',
                        'task = { family = "mnist-mlp", activation = ["sigmoid", "relu"], hidden = [20, 40], '
                        'layers = 2 }')
    suite = parse_suite(text, tmp_path / "m.toml")
    assert [tv.task.id for tv in suite.tests] == [
        "mnist-mlp[activation=sigmoid,hidden=20,layers=2]", "mnist-mlp[activation=sigmoid,hidden=40,layers=2]",
        "mnist-mlp[activation=relu,hidden=20,layers=2]", "mnist-mlp[activation=relu,hidden=40,layers=2]"]


def test_ids_format_values_readably():
    assert make_id("adam", {"lr": 0.01}) == "adam[lr=0.01]"
    assert make_id("sgd", {"lr": 1e-05, "nesterov": True}) == "sgd[lr=1e-05,nesterov=true]"
    assert make_id("quadratic", {}) == "quadratic"
    assert format_value([8, 16]) == "[8,16]"
    assert format_value("relu") == "relu"


def test_test_optimizers_default_to_everything_and_can_be_chosen(tmp_path):
    suite = parse_suite(BASE + META, tmp_path / "m.toml")
    assert suite.tests[0].optimizers == ("tiny-lstm", "sgd", "adam")
    chosen = parse_suite((BASE + META).replace("horizons = [20, 40]", 'horizons = [20, 40]\noptimizers = ["adam"]'),
                         tmp_path / "m.toml")
    assert chosen.tests[0].optimizers == ("adam",)
    spec = suite.learned["tiny-lstm"]
    assert spec.plugin == "lstm" and spec.train["epochs"] == 1 and spec.train["horizon"] == 10
    assert spec.params["hidden"] == 4 and spec.params["layers"] == 2


def test_names_must_be_unique(tmp_path):
    text = BASE + META.replace('name = "tiny-lstm"', 'name = "adam"')
    with pytest.raises(ConfigError, match="already used"):
        parse_suite(text, tmp_path / "m.toml")


def test_references_must_name_a_variant_of_the_suite(tmp_path):
    ref = '\n[[reference]]\nproblem = "q"\ntask = "quadratic[dim=10,functions=2]"\nhorizon = 20\noptimizer = "adam"\n' \
          'summed_loss = 3.0\nsource = "a paper"\n'
    assert parse_suite(BASE + ref, tmp_path / "m.toml").references[0]["summed_loss"] == 3.0
    with pytest.raises(ConfigError, match="not a test variant"):
        parse_suite(BASE + ref.replace("horizon = 20", "horizon = 30"), tmp_path / "m.toml")


def test_schema_is_valid_json_schema_and_accepts_the_shipped_suites(capsys):
    jsonschema = pytest.importorskip("jsonschema")
    import tomllib

    assert main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert schema == json.loads(json.dumps(json_schema()))
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    assert {"suite", "meta_train", "checkpoint", "baselines", "test", "reference"} <= set(schema["properties"])
    assert schema["$defs"]["MetaTrainEntry"]["properties"]["unroll"]["description"]
    for path in sorted(SUITES.glob("*.toml")):
        validator.validate(tomllib.loads(path.read_text()))
    assert list(validator.iter_errors({"suite": {"name": "x", "seeds": "ten"}, "test": []}))


@pytest.mark.parametrize("path", sorted(SUITES.glob("*.toml")), ids=lambda p: p.name)
def test_shipped_suites_are_valid(path):
    suite = load_suite(path)
    assert suite.tests

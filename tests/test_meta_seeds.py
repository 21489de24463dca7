"""Several meta-training seeds of one ``[[meta_train]]`` entry: each its own cell with
its own checkpoint, tested on every variant, the seed in the results table, and the
report showing the spread over them (a tiny quadratic suite end to end)."""
from __future__ import annotations

import pytest

from l2obench import store
from l2obench.errors import ConfigError
from l2obench.plan import plan_suite
from l2obench.runner import Runner
from l2obench.suite import parse_suite

SUITE = """\
[suite]
name = "meta-seeds"
seeds = 4
validation_seeds = 2

[[meta_train]]
name = "lstm-tiny"
optimizer = "lstm"
params = {{ preprocess = false, hidden = 4, layers = 1 }}
task = {{ family = "quadratic", dim = 5 }}
horizon = 10
unroll = 5
epochs = 1
episodes_per_epoch = 2
meta_batch = 2
validation_seeds = 2
seed = {seed}

[baselines]
optimizers = ["sgd", "adam"]
lr_grid = [0.1, 0.01]

[[test]]
task = {{ family = "quadratic", dim = [5, 8] }}
horizons = 10
"""


def test_a_list_of_seeds_is_one_meta_train_cell_each_tested_on_every_variant():
    suite = parse_suite(SUITE.format(seed="[0, 1, 2]"))
    assert list(suite.learned) == ["lstm-tiny[seed=0]", "lstm-tiny[seed=1]", "lstm-tiny[seed=2]"]
    assert suite.learned_names == ["lstm-tiny"] and suite.runs("lstm-tiny") == list(suite.learned)
    plan = plan_suite(suite, "cpu")
    assert [c.id for c in plan.meta.values()] == [f"meta-train lstm-tiny[seed={s}]" for s in range(3)]
    assert [c.spec["train"]["seed"] for c in plan.meta.values()] == [0, 1, 2]
    assert len({c.key for c in plan.meta.values()}) == 3
    tests = sorted(c.id for c in plan.learned_tests)
    assert tests == sorted(f"lstm-tiny[seed={s}] @ quadratic[dim={d}] @ T=10" for s in range(3) for d in (5, 8))
    assert all(c.needs == (c.spec["optimizer"]["id"],) for c in plan.learned_tests)


def test_one_seed_keeps_the_plain_name_and_its_keys():
    written = plan_suite(parse_suite(SUITE.format(seed="0")), "cpu")
    assert list(written.meta) == ["lstm-tiny"] and written.meta["lstm-tiny"].id == "meta-train lstm-tiny"
    assert written.meta["lstm-tiny"].spec["train"]["seed"] == 0 and "meta_seed" not in str(written.meta)
    default = plan_suite(parse_suite(SUITE.format(seed="0").replace("seed = 0\n", "")), "cpu")
    assert [c.key for c in default.known_cells()] == [c.key for c in written.known_cells()]
    assert [c.id for c in default.learned_tests] == ["lstm-tiny @ quadratic[dim=5] @ T=10",
                                                     "lstm-tiny @ quadratic[dim=8] @ T=10"]


@pytest.mark.parametrize("seed, message", [
    ("[]", "an empty list of meta-training seeds"),
    ("[1, 1]", "meta-training seeds must be distinct"),
    ("[0, -1]", "meta-training seeds must be integers >= 0"),
    ("-2", "meta_train[0].seed: invalid value -2: expected a seed"),
    ("true", "expected a seed (an integer >= 0) or a list of them"),
])
def test_bad_meta_training_seeds_are_one_line(seed, message):
    with pytest.raises(ConfigError, match=r"meta_train\[0\]\.seed") as info:
        parse_suite(SUITE.format(seed=seed))
    assert message in str(info.value) and "\n" not in str(info.value)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from test_runner import ThreadExecutor

    out = tmp_path_factory.mktemp("meta-seeds")
    suite = parse_suite(SUITE.format(seed="[0, 1, 2]"))
    summary = Runner(suite, out).run(pool=ThreadExecutor(2), progress=False, stream=open("/dev/null", "w"))
    assert not summary.failed
    return out


def test_meta_training_seeds_give_distinct_checkpoints_and_a_column(run_dir):
    from l2obench.checkpoint import read_checkpoint

    paths = sorted((run_dir / "checkpoints").iterdir())
    assert [p.name for p in paths] == [f"lstm-tiny[seed={s}].safetensors" for s in range(3)]
    hashes = {read_checkpoint(p)[1].content_hash for p in paths}
    assert len(hashes) == 3
    df = store.load_results(run_dir)
    learned = df[(df["kind"] == "test") & (df["optimizer"] == "lstm-tiny")]
    assert sorted(learned["meta_seed"].unique()) == [0, 1, 2]
    for seed, rows in learned.groupby("meta_seed"):
        assert set(rows["optimizer_id"]) == {f"lstm-tiny[seed={seed}]"}
        assert rows["checkpoint"].nunique() == 1 and rows["checkpoint"].iloc[0] in hashes
        assert set(rows["task"]) == {"quadratic[dim=5]", "quadratic[dim=8]"}
    meta = df[df["kind"] == "meta-train"]
    assert sorted(meta["meta_seed"].unique()) == [0, 1, 2]
    assert set(df[df["optimizer_kind"] == "baseline"]["meta_seed"]) == {-1}
    assert learned.groupby("meta_seed")["checkpoint"].first().nunique() == 3


def test_the_report_shows_the_spread_over_meta_training_seeds(run_dir):
    from l2obench.analysis import meta_seed_spread, robust_summary
    from l2obench.report import write_report

    paths = write_report(run_dir)
    text = paths["markdown"].read_text()
    assert "## Meta-training seeds" in text and "**lstm-tiny** (3 meta-training runs)" in text
    assert (run_dir / "figures" / "meta-seeds.png").stat().st_size > 0
    assert (run_dir / "figures" / "performance-profile.png").stat().st_size > 0
    df = store.load_results(run_dir)
    spread = meta_seed_spread(df)
    assert sorted(spread["task"]) == ["quadratic[dim=5]", "quadratic[dim=8]"] and set(spread["runs"]) == {3}
    runs = robust_summary(df)
    for r in spread.to_dict("records"):  # the table's min / median / max are the runs' own ratios
        mine = runs[(runs["task"] == r["task"]) & (runs["optimizer"] == "lstm-tiny")]["log10_vs_best"]
        assert len(mine) == 3
        assert (r["log10_vs_best_min"], r["log10_vs_best_max"]) == pytest.approx((mine.min(), mine.max()))
        assert r["log10_vs_best_low"] <= r["log10_vs_best_mean"] <= r["log10_vs_best_high"]
        row = next(line for line in text.splitlines() if line.startswith(f"| {r['task']} @ T=10 | lstm-tiny | 3 (0, 1, 2)"))
        assert r["typical"] in row
    for s in range(3):  # every run in the heatmap's and the meta-training table's rows, and in the ranks
        assert f"| lstm-tiny[seed={s}] |" in text
    meta_rows = [line for line in text.split("## Meta-training\n")[1].splitlines() if line.startswith("| lstm-tiny[")]
    assert len(meta_rows) == 3


def test_a_missing_or_failed_meta_training_run_is_listed_by_its_id():
    import pandas as pd

    from l2obench.report_tables import missing_cells

    summary = pd.DataFrame({"task": ["q"], "horizon": [10], "optimizer": ["lstm"], "optimizer_id": ["lstm[seed=0]"]})
    manifest = {"variants": [{"task": "q", "horizons": [10], "optimizers": ["lstm"]}],
                "learned_runs": {"lstm": ["lstm[seed=0]", "lstm[seed=1]", "lstm[seed=2]"]},
                "failures": [{"cell": "meta-train lstm[seed=2]", "error": "no finite meta-loss"}]}
    rows = missing_cells(manifest, summary).set_index("optimizer")
    assert list(rows.index) == ["lstm[seed=1]", "lstm[seed=2]"]
    assert rows.loc["lstm[seed=1]", "state"] == "missing"
    assert rows.loc["lstm[seed=2]", "reason"] == "its meta-training failed: no finite meta-loss"

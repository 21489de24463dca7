"""The planner: a validated suite to its cells, with no disk access (what is already done
in a run directory is the runner's business, not the plan's).

Every learned optimizer of the suite is meta-trained by one meta-train cell per
meta-training seed (or loaded from its ``[[checkpoint]]``), and each run is tested on
every variant; every baseline is tuned once per task variant, to the
longest horizon any ``[[test]]`` entry asks of it there (:class:`~l2obench.tuning.TuneGroup`);
every (optimizer, task variant, horizon) of the ``[[test]]`` entries is one test cell,
the baselines' once tuning has chosen their settings.  Entries that overlap share cells.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from .cells import Cell, CellKind, baseline_spec, evaluation_cell, learned_spec, meta_train_cell
from .suite import Suite
from .tuning import GroupKey, TuneGroup


@dataclass
class Plan:
    """A suite's cells in dependency order, the baselines' test cells still unknown.

    - ``meta``: a meta-train cell per learned optimizer meta-trained here, by its id (its
      name, or ``name[seed=s]`` for each of several meta-training seeds);
    - ``sources``: where each learned optimizer's meta-parameters come from, by id
      (``meta-train:KEY`` or ``checkpoint:HASH``, part of its test cells' keys);
    - ``groups``: the tuning groups, by (baseline, task variant, horizon);
    - ``learned_tests``: the learned optimizers' test cells (``needs`` their meta-training);
    - ``baseline_tests``: (group, test horizon) pairs, a test cell each once the group is done.
    """

    meta: dict[str, Cell] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)
    groups: dict[GroupKey, TuneGroup] = field(default_factory=dict)
    learned_tests: list[Cell] = field(default_factory=list)
    baseline_tests: list[tuple[GroupKey, int]] = field(default_factory=list)

    def learned_id(self, cell: Cell) -> str:
        """The learned optimizer (its id in ``meta``) a meta-train cell trains."""
        return next(name for name, c in self.meta.items() if c.key == cell.key)

    def known_cells(self) -> list[Cell]:
        """The cells known before any tuning: meta-training, tuning, learned tests."""
        return [*self.meta.values(), *(c for g in self.groups.values() for c in g.cells), *self.learned_tests]


def plan_suite(suite: Suite, device: str, provenance: Optional[dict[str, Any]] = None) -> Plan:
    """The cells of ``suite`` run on ``device`` (its name as cells record it), keyed with
    ``provenance`` too (:func:`l2obench.provenance.current`; the runner passes it)."""
    plan = Plan()
    for name, spec in suite.learned.items():
        if spec.train is not None:
            cell = meta_train_cell(spec, device, provenance)
            plan.meta[name] = cell
            plan.sources[name] = f"meta-train:{cell.key}"
        else:
            plan.sources[name] = f"checkpoint:{spec.checkpoint_hash}"
    longest: dict[tuple[str, str], int] = {}
    for tv in suite.tests:
        for name in tv.optimizers:
            key = (name, tv.task.id)
            longest[key] = max(longest.get(key, 0), *tv.horizons)
    seen: set[str] = set()
    for tv in suite.tests:
        for name in tv.optimizers:
            runs = suite.runs(name)
            if runs:  # a learned optimizer: each meta-training run tested on the variant
                for run in runs:
                    opt = learned_spec(suite.learned[run], plan.sources[run])
                    needs = (run,) if run in plan.meta else ()
                    for h in tv.horizons:
                        cell = evaluation_cell(CellKind.TEST, opt, tv.task, h, "test", suite.test_seeds, device,
                                               needs, provenance, heldout={"every": suite.heldout_every})
                        if cell.key not in seen:
                            seen.add(cell.key)
                            plan.learned_tests.append(cell)
                continue
            hmax = longest[(name, tv.task.id)]
            gkey = (name, tv.task.id, hmax)
            group = plan.groups.get(gkey)
            if group is None:
                group = plan.groups[gkey] = TuneGroup(name, tv.task, hmax, suite.baselines[name], [],
                                                      search=suite.search)
            for h in tv.horizons:
                if h not in group.horizons:
                    group.horizons.append(h)
                    plan.baseline_tests.append((gkey, h))
    for group in plan.groups.values():  # once its horizons are known: each needs held-out metrics at its end
        heldout = {"every": suite.heldout_every, "horizons": sorted(group.horizons)}
        group.cells = [evaluation_cell(CellKind.TUNE, baseline_spec(o), group.task, group.horizon, "validation",
                                       suite.validation_seeds, device, provenance=provenance, heldout=heldout)
                       for o in group.specs]
    return plan

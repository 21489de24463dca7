"""The cell model: a unit of a suite's work, plain data with a stable key.

A suite expands to three kinds of cells (:class:`CellKind`):

- **meta-train** ``meta-train lstm-base``: meta-train a learned optimizer
  (:func:`l2obench.metatrain.meta_train`) and keep its checkpoint;
- **tune** ``tune adam[lr=0.01] @ mnist-mlp[hidden=40] @ T=200``: one point of a
  baseline's grid on the validation optimizees of one task variant, run to the
  variant's longest horizon (a shorter horizon reads the same trajectory's prefix);
- **test** ``adam[lr=0.03] @ mnist-mlp[hidden=40] @ T=100``: an optimizer on the test
  optimizees of a variant; a baseline with the settings its tuning chose for that
  horizon, a learned optimizer with its meta-trained checkpoint.

A cell's ``spec`` is everything that defines its result: its id, the full task config
with defaults, all hyperparameters, seeds, split, horizon, device, the meta-training
cell or checkpoint it uses, and the versions of the plugins involved; and its
``provenance`` (:func:`with_provenance`): the source fingerprint of a
plugin installed from a directory and any result-affecting switch turned off, absent
when there is none.  Its ``key``, a hash of the spec, names its file in a run
directory, so a rerun skips finished cells and editing a suite, a plugin's code or a
switch reruns only the cells it changes.
"""
from __future__ import annotations

import enum
import hashlib
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional

if TYPE_CHECKING:
    from .suite import LearnedSpec, OptimizerSpec, TaskVariant


class CellKind(enum.StrEnum):
    """What a cell does; the value is how the results table and cell keys write it."""

    META_TRAIN = "meta-train"
    TUNE = "tune"
    TEST = "test"


class OptimizerKind(enum.StrEnum):
    """A hand-designed baseline (tuned on validation optimizees) or a learned optimizer."""

    BASELINE = "baseline"
    LEARNED = "learned"


def cell_key(kind: CellKind | str, spec: dict[str, Any]) -> str:
    """A short stable hash of what defines a cell's result."""
    blob = json.dumps({"kind": str(kind), "spec": spec}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


@dataclass(frozen=True)
class Cell:
    """One unit of work: ``spec`` is plain JSON-ready data, everything that defines the
    result (and the input of ``key``); ``needs`` names learned optimizers whose
    meta-training must finish first."""

    kind: CellKind
    id: str
    spec: dict[str, Any]
    needs: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", CellKind(self.kind))

    @property
    def key(self) -> str:
        return cell_key(self.kind, self.spec)


def key_ingredients(cell: Cell) -> dict[str, Any]:
    """What a cell's key is made of, apart: ``definition`` (a hash of the spec without its
    provenance), ``sources`` and ``switches``; the manifest records them so that a later
    run can say why a cell with the same id has another key."""
    spec = dict(cell.spec)
    provenance = spec.pop("provenance", {})
    source = spec.get("optimizer", {}).get("source", "")
    if source.startswith("meta-train:"):  # a learned test: its meta-training's key apart
        spec["optimizer"] = {**spec["optimizer"], "source": "meta-train"}
    return {"id": cell.id, "definition": cell_key(cell.kind, spec), "sources": provenance.get("sources", {}),
            "switches": provenance.get("switches", {}), "meta_train": source.partition("meta-train:")[2]}


def stale_reason(now: dict[str, Any], before: dict[str, Any]) -> str:
    """Why a cell keyed by the ingredients ``now`` is not the one keyed by ``before``."""
    from .env import RESULT_SWITCHES

    reasons = []
    if now.get("definition") != before.get("definition"):
        reasons.append("definition changed")
    if now.get("meta_train") != before.get("meta_train"):
        reasons.append("its meta-training changed")
    sources, old = now.get("sources", {}), before.get("sources", {})
    changed = sorted(d for d in sources.keys() | old.keys() if sources.get(d) != old.get(d))
    if changed:
        reasons.append(f"plugin source changed ({', '.join(changed)})")
    switches, old = now.get("switches", {}), before.get("switches", {})
    for name in sorted(switches.keys() | old.keys()):
        if switches.get(name, "on") != old.get(name, "on"):
            what = RESULT_SWITCHES.get(name, name).split(" (")[0]
            reasons.append(f"{what} changed ({name} {old.get(name, 'on')} -> {switches.get(name, 'on')})")
    return "; ".join(reasons) or "key changed"


def _origins(kind: CellKind, spec: dict[str, Any]) -> list[str]:
    """The ``"distribution version"`` of the plugins a cell runs."""
    return [spec["version"] if kind is CellKind.META_TRAIN else spec["optimizer"]["version"], spec["task"]["version"]]


def with_provenance(cell: Cell, provenance: Optional[dict[str, Any]]) -> Cell:
    """``cell`` with the part of ``provenance`` (:func:`l2obench.provenance.current`) that
    concerns it in its spec: the source fingerprints of its plugins' distributions and the
    switches turned off; a cell with neither is left as it is, so its key does not change."""
    if not provenance:
        return cell
    from .provenance import distribution_of

    spec = {k: v for k, v in cell.spec.items() if k != "provenance"}
    sources = {d: provenance["sources"][d] for d in sorted({distribution_of(o) for o in _origins(cell.kind, spec)})
               if d in provenance.get("sources", {})}
    switches = provenance.get("switches", {})
    extra = {**({"sources": sources} if sources else {}), **({"switches": dict(switches)} if switches else {})}
    return Cell(cell.kind, cell.id, {**spec, "provenance": extra} if extra else spec, cell.needs)


def task_spec(task: TaskVariant) -> dict[str, Any]:
    return {"id": task.id, "family": task.family, "config": task.config, "version": task.version}


def distribution_spec(variants: tuple[TaskVariant, ...]) -> dict[str, Any]:
    """A meta-training task distribution: its variants' configs (``grid``), one drawn per episode;
    the id is the grid as the suite writes it (``mnist-mlp[activation=["sigmoid","relu"]]``) and
    ``config`` the first variant's with each grid axis as its list of values (the table's columns)."""
    from .suite_specs import make_id

    first, written = variants[0], {}
    for key in first.written:
        values = {json.dumps(v.written[key], sort_keys=True): v.written[key] for v in variants}
        written[key] = list(values.values()) if len(values) > 1 else first.written[key]
    axes = {k: v for k, v in written.items() if isinstance(v, list) and v != first.written[k]}
    return {"id": make_id(first.family, written), "family": first.family, "version": first.version,
            "config": {**first.config, **axes}, "grid": [v.config for v in variants]}


def baseline_spec(opt: OptimizerSpec) -> dict[str, Any]:
    return {"name": opt.name, "id": opt.id, "kind": OptimizerKind.BASELINE.value, "plugin": opt.name,
            "params": opt.params, "version": opt.version}


def learned_spec(spec: LearnedSpec, source: str) -> dict[str, Any]:
    """A learned optimizer in a cell; ``source`` is the meta-training cell (``meta-train:KEY``)
    or checkpoint (``checkpoint:HASH``) its meta-parameters come from."""
    return {"name": spec.name, "id": spec.id, "kind": OptimizerKind.LEARNED.value, "plugin": spec.plugin,
            "params": spec.params, "version": spec.version, "source": source}


def evaluation_cell(kind: CellKind | str, optimizer: dict[str, Any], task: TaskVariant, horizon: int, split: str,
                    seeds: list[int], device: str, needs: tuple[str, ...] = (),
                    provenance: Optional[dict[str, Any]] = None, heldout: Optional[dict[str, Any]] = None) -> Cell:
    """A tune or test cell: ``optimizer`` (a :func:`baseline_spec` or :func:`learned_spec`)
    on ``task`` for ``horizon`` steps, every seed in one batched run (see :func:`with_provenance`).
    ``heldout`` says when held-out metrics are recorded (:func:`heldout_schedule`): ``every``
    (``None``: about ten points a run) and, for a tune cell, the test ``horizons`` it serves."""
    kind = CellKind(kind)
    prefix = "tune " if kind is CellKind.TUNE else ""
    spec = {"optimizer": optimizer, "task": task_spec(task), "horizon": horizon, "split": split,
            "seeds": list(seeds), "device": device, "heldout": dict(heldout or {"every": None})}
    return with_provenance(Cell(kind, f"{prefix}{optimizer['id']} @ {task.id} @ T={horizon}", spec, needs),
                           provenance)


def meta_train_cell(spec: LearnedSpec, device: str, provenance: Optional[dict[str, Any]] = None) -> Cell:
    task = task_spec(spec.task) if not spec.distribution else distribution_spec(spec.distribution)
    body = {"name": spec.name, "plugin": spec.plugin, "params": spec.params, "version": spec.version,
            "task": task, "train": spec.train, "device": device}
    if spec.id != spec.name:  # one of several meta-training seeds (one seed: the key as it always was)
        body["id"] = spec.id
    return with_provenance(Cell(CellKind.META_TRAIN, f"meta-train {spec.id}", body), provenance)


def share_prefixes(cells: list[Cell], done: set[str]) -> dict[str, list[Cell]]:
    """The test cells of ``cells`` not in ``done``, grouped by everything but their horizon:
    ``{key of the longest: the shorter ones, read from its prefix}``; every other cell
    not done maps to ``[]``.

    Test cells that differ only in their horizon (a learned optimizer at T=100 and
    T=1000, or a baseline whose tuning chose the same settings for both) run once, to
    the longest: a seed's minibatches and an optimizer's steps do not depend on how
    long it runs, so the shorter ones are the same trajectory's prefix."""
    families: dict[str, dict[str, Cell]] = {}
    for cell in cells:
        if cell.key not in done:
            family = cell_key(cell.kind, {**cell.spec, "horizon": None}) if cell.kind is CellKind.TEST else cell.key
            families.setdefault(family, {})[cell.key] = cell
    plan = {}
    for members in families.values():
        *shorter, longest = sorted(members.values(), key=lambda c: c.spec.get("horizon", 0))
        plan[longest.key] = shorter
    return plan


def heldout_schedule(spec: dict[str, Any]) -> list[int]:
    """The steps at which the evaluation cell ``spec`` records held-out metrics: those of
    :func:`l2obench.evaluate.heldout_steps` for its horizon, and for a tune cell for every
    test horizon it serves (each needs its last step)."""
    from .evaluate import heldout_steps

    heldout = spec.get("heldout") or {}
    horizons = heldout.get("horizons") or [spec["horizon"]]
    return sorted({t for h in horizons for t in heldout_steps(int(h), heldout.get("every"))})


def prefix_result(result: dict[str, Any], horizon: int) -> dict[str, Any]:
    """A finished evaluation's raw results cut to its first ``horizon`` steps (timings, those
    of the run they come from; no artifacts: those are of the longest run's last step)."""
    import numpy as np

    diverged = np.asarray(result["diverged_at"])
    steps = np.asarray(result.get("heldout_steps", []), dtype=np.int64)
    keep = steps < horizon
    return {**{k: v for k, v in result.items() if k != "artifacts"}, "losses": np.array(result["losses"][:, :horizon]),
            "diverged_at": np.where(diverged < horizon, diverged, -1),
            "elapsed": np.array(result["elapsed"][:horizon]) if "elapsed" in result else None,
            "heldout_steps": steps[keep],
            "heldout": {k: np.array(v[:, keep]) for k, v in (result.get("heldout") or {}).items()}}

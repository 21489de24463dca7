"""``l2obench list``: what the installed plugins register, and from which distribution."""
from __future__ import annotations

import json
import sys


def add_parser(sub) -> None:
    from ..registry import KINDS

    p = sub.add_parser("list", help="list registered optimizers, learned optimizers, task families, datasets, "
                                    "executors and estimators",
                       description="List what the installed plugins register: name, kind, distribution "
                                   "and version, parameters with their defaults, and what a learned optimizer "
                                   "built with them can do (replay, per-group networks, second derivatives).")
    p.add_argument("--json", action="store_true",
                   help="one JSON array: name, kind, plugin, distribution, version, parameters, description, "
                        "capabilities (learned optimizers; null otherwise)")
    p.add_argument("--kind", choices=list(KINDS), help="only this kind")
    p.set_defaults(func=cmd_list)


def describe(entry) -> str:
    """First line of a factory's docstring, or a task family's or dataset's description."""
    text = entry.obj.description if entry.kind in ("task", "dataset") else ""
    text = text or (getattr(entry.obj, "__doc__", None) or "")
    return text.strip().splitlines()[0] if text.strip() else ""


def capabilities(entry) -> dict | None:
    """What a learned optimizer can do (``Capabilities.describe()``), read from one built with
    its defaults; ``None`` for other kinds, or (with a warning) where the defaults do not build."""
    if entry.kind != "learned":
        return None
    import torch

    try:
        with torch.random.fork_rng(devices=[]):  # building one draws initial meta-parameters
            return entry.create().capabilities.describe()
    except Exception as exc:  # a plugin's factory: say so and list the rest
        print(f"l2obench: warning: learned optimizer {entry.name!r} of {entry.origin} does not build with its "
              f"defaults, so its capabilities are not shown ({type(exc).__name__}: {exc})", file=sys.stderr)
        return None


def capability_words(caps: dict | None) -> str:
    """``replay groups=conv,fc 1st-order``: each capability, or its absence, in a word."""
    if caps is None:
        return ""
    words = ["replay" if caps["replay"] else "no-replay"]
    if caps["groups"]:
        words.append("groups=" + ",".join(caps["groups"]))
    words.append("2nd-order" if caps["second_derivatives"] else "1st-order")
    return " ".join(words)


def cmd_list(args) -> int:
    from ..registry import ALLOW_ENV, DISABLE_ENV, KINDS, get_registry

    registry = get_registry()
    order = {kind: i for i, kind in enumerate(KINDS)}
    entries = sorted((e for e in registry.all_entries() if args.kind in (None, e.kind)),
                     key=lambda e: (order[e.kind], e.name))
    if args.json:
        print(json.dumps([
            {"name": e.name, "kind": e.kind, "plugin": e.plugin, "distribution": e.distribution,
             "version": e.version, "parameters": _jsonable(e.parameters()), "description": describe(e),
             "capabilities": capabilities(e)}
            for e in entries
        ], indent=2))
    else:
        rows = [("kind", "name", "distribution", "capabilities", "parameters")]
        for e in entries:
            params = ", ".join(f"{k}={v!r}" for k, v in e.parameters().items())
            if e.kind == "dataset":  # no parameters: what a task family's config needs to know
                params = f"classes={e.obj.classes}, shape={'x'.join(map(str, e.obj.shape))}"
            rows.append((e.kind, e.name, e.origin, capability_words(capabilities(e)), params))
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        for r in rows:
            print("  ".join(c.ljust(w) for c, w in zip(r[:4], widths)) + "  " + r[4])
    if registry.skipped:
        print(f"l2obench: not loaded because of {DISABLE_ENV} / {ALLOW_ENV}: {', '.join(registry.skipped)}",
              file=sys.stderr)
    return 0


def _jsonable(obj):
    return json.loads(json.dumps(obj, default=str))

"""``l2obench list``: what the installed plugins register."""
from __future__ import annotations

import json


def add_parser(sub) -> None:
    p = sub.add_parser("list", help="list registered optimizers, learned optimizers and task families")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_list)


def cmd_list(args) -> int:
    from ..registry import get_registry

    entries = sorted(get_registry().all_entries(), key=lambda e: (e.kind, e.name))
    if args.json:
        print(json.dumps([
            {"name": e.name, "kind": e.kind, "plugin": e.plugin, "distribution": e.distribution,
             "version": e.version, "parameters": _jsonable(e.parameters())}
            for e in entries
        ], indent=2))
        return 0
    rows = [("kind", "name", "distribution", "parameters")]
    for e in entries:
        params = ", ".join(f"{k}={v!r}" for k, v in e.parameters().items())
        rows.append((e.kind, e.name, e.origin, params))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r[:3], widths)) + "  " + r[3])
    return 0


def _jsonable(obj):
    return json.loads(json.dumps(obj, default=str))



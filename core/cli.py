"""The ``l2obench`` command line. Each subcommand is a thin layer over the library;
every :class:`~l2obench.errors.L2OError` is printed as one line and exits 2."""
from __future__ import annotations

import argparse
import json
import sys

from .errors import ConfigError, L2OError


def parse_value(text: str):
    """A CLI ``key=value`` value: JSON when it parses (numbers, true, lists), else a string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_params(items: list[str] | None, what: str) -> dict:
    """``["lr=0.1", "nesterov=true"]`` -> ``{"lr": 0.1, "nesterov": True}``."""
    params = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"{what}: expected key=value, got {item!r}")
        params[key.strip()] = parse_value(value)
    return params


# -- list ----------------------------------------------------------------------
def cmd_list(args) -> int:
    from .registry import get_registry

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


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="l2obench", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"l2obench {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("list", help="list registered optimizers, learned optimizers and task families")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_list)

    # Other subcommands add themselves here: each module exposes add_parser(sub).
    for module in _COMMAND_MODULES:
        __import__(f"l2obench.{module}", fromlist=["add_parser"]).add_parser(sub)
    return parser


#: modules under l2obench that contribute a subcommand via ``add_parser(subparsers)``
_COMMAND_MODULES: list[str] = []


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except L2OError as exc:
        print(f"l2obench: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("l2obench: interrupted; finished work is kept", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

"""The ``l2obench`` command line. Each subcommand is a thin layer over the library;
every :class:`~l2obench.errors.L2OError` is printed as one line and exits 2."""

from __future__ import annotations

import argparse
import json
import sys
import time

#: When the command started (epoch seconds): this module is the first thing it imports
#: after ``l2obench`` itself (which imports nothing heavy), so only the interpreter's own
#: start-up, some tens of milliseconds, comes before.  The process's start time is not
#: used: a shell that ``exec``s the command after other work makes that much earlier.
#: Subcommands read it as ``args.started`` (see :func:`main`).
STARTED = time.time()

from .errors import ConfigError, L2OError  # noqa: E402

#: What ``l2obench --help`` says of the command.
DESCRIPTION = ("Benchmark how well optimizers, learned and hand-designed, generalize: meta-train, "
               "run suites of held-out tasks, report.  Every mistake is one line and exit code 2.")


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


class CommandLineParser(argparse.ArgumentParser):
    """argparse, with its mistakes (an unknown option, a missing or malformed argument) said
    in the one line every other error takes, ``l2obench: error: ...``, exit code 2."""

    def error(self, message: str):
        command = self.prog.removeprefix("l2obench").strip()
        self.exit(2, f"l2obench: error: {command + ': ' if command else ''}{message}; "
                     f"see `{self.prog} --help`\n")


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = CommandLineParser(prog="l2obench", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"l2obench {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    # Each module of l2obench.commands adds its subcommand(s) with add_parser(subparsers).
    import importlib
    import pkgutil

    from . import commands

    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        importlib.import_module(f"{commands.__name__}.{info.name}").add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command ``argv`` (default: this process's arguments).  ``args.started``, the
    clock a subcommand reports wall time from, is :data:`STARTED` when this is the process's
    own command, and now when a program (or a test) calls ``main`` with its arguments."""
    started = STARTED if argv is None else time.time()
    from .errors import one_line_warnings
    from .memory import keep_freed_memory

    keep_freed_memory()
    one_line_warnings()
    parser = build_parser()
    args = parser.parse_args(argv)
    args.started = started
    try:
        return int(args.func(args) or 0)
    except L2OError as exc:
        print(f"l2obench: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("l2obench: interrupted; finished work is kept", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # the reader of our output went away (``l2obench list | head``): not an error of ours;
        # point stdout at /dev/null so the interpreter's final flush does not fail again
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())

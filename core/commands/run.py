"""``l2obench run SUITE --out DIR``: run a suite file, resumably."""
from __future__ import annotations

import sys
import threading
import time


def add_parser(sub) -> None:
    p = sub.add_parser("run", help="run a suite file (meta-train, tune, test); finished cells are kept",
                       description="Run a suite file into DIR. A rerun skips the cells already finished, "
                                   "so an interrupted run loses only the cells in flight.")
    p.add_argument("suite", help="the suite file (TOML), e.g. suites/smoke.toml")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="run directory (created if missing); it belongs to one suite, and one run at a time")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="cells run at once (default: the number of cores)")
    p.add_argument("--executor", default="local", help="a registered executor: local (default) or ray")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: the suite's, else cpu)")
    p.add_argument("--force", action="store_true",
                   help="recompute every cell, even those already done; lets a suite replace another's "
                        "results in DIR")
    p.add_argument("--dry-run", action="store_true", help="list the cells and which are done; run nothing")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--report", action="store_true",
                   help="when every cell is done, also write the report (as `l2obench report DIR` does)")
    p.set_defaults(func=cmd_run)


def cmd_run(args) -> int:
    from ..devices import resolve_device
    from ..errors import ConfigError
    from ..executor import start_executor
    from ..registry import get_registry
    from ..runner import Runner
    from ..store import check_writable
    from ..suite import load_suite

    if args.workers is not None and args.workers < 1:
        raise ConfigError(f"--workers {args.workers}: give a number of workers >= 1")
    if args.device is not None:
        resolve_device(args.device)
    _check_out(args.out)
    get_registry().get("executor", args.executor)
    if not args.dry_run:
        check_writable(args.out)
    # The workers start (and import torch) while the suite is validated; nothing is
    # written before validation passes, and they are stopped if it fails.
    pool = None if args.dry_run else start_executor(args.executor, args.workers)
    try:
        suite = load_suite(args.suite)
        _check_tasks(suite)
        runner = Runner(suite, args.out, device=args.device, force=args.force)
    except BaseException:
        if pool is not None:
            pool.shutdown(cancel=True)
        raise
    if args.dry_run:
        done, to_run = runner.count()
        for line in runner.describe():
            print(line)
        print(f"{suite.name}: {done} cells done already, {to_run} to run (dry run: nothing was run)")
        return 0
    if args.report:  # the plotting libraries load while the cells run
        threading.Thread(target=_preload_report, name="l2obench-report-preload", daemon=True).start()
    started = args.started
    summary = runner.run(args.executor, args.workers, progress=not args.no_progress,
                         command=["l2obench", *sys.argv[1:]], pool=pool, started=started)
    outside = summary.wall_s - summary.compute_union_s
    print(f"{suite.name}: {summary.ran} cells run, {summary.done_before} were done already; "
          f"results in {summary.out}")
    if summary.ran:
        print(f"time: {summary.wall_s:.1f} s wall since the command started; "
              f"optimizer steps ran during {summary.compute_union_s:.1f} s of it "
              f"({summary.compute_sum_s:.1f} s summed over cells, {summary.workers} workers); "
              f"{outside:.1f} s ({100 * summary.outside_fraction:.1f}%) outside optimizer steps")
    for cell, error in summary.failed:
        print(f"l2obench: error: cell {cell!r} failed: {error}", file=sys.stderr)
    if summary.failed:
        print(f"l2obench: error: {len(summary.failed)} cells failed; fix the cause and rerun "
              f"(finished cells are kept)", file=sys.stderr)
        return 1
    if args.report:
        from ..report import write_report

        paths = write_report(summary.out)
        wall = time.time() - started
        print(f"wrote {paths['markdown']}, {paths['html']}, {paths['summary']} and figures in {paths['figures']}")
        if summary.ran:
            print(f"time with the report: {wall:.1f} s wall; {wall - summary.compute_union_s:.1f} s "
                  f"({100 * (1 - summary.compute_union_s / wall):.1f}%) outside optimizer steps")
    return 0


def _check_tasks(suite) -> None:
    """Build every task the suite names once, so what a cell would fail on (a data file
    missing or corrupt, a class subset empty in a split) is refused before anything runs,
    by ``--dry-run`` too, in one line naming the suite entry."""
    from ..errors import L2OError
    from ..registry import get_registry

    registry, seen = get_registry(), set()
    variants = [(f"meta_train {name!r}", spec.task) for name, spec in suite.learned.items() if spec.task is not None]
    variants += [(f"test task {tv.task.id}", tv.task) for tv in suite.tests]
    for where, task in variants:
        key = (task.family, repr(sorted(task.config.items())))
        if key in seen:
            continue
        seen.add(key)
        try:
            registry.task(task.family, **task.config)
        except L2OError as exc:
            raise type(exc)(f"{suite.path}: {where}: {exc}") from None


def _check_out(out: str) -> None:
    """Refuse, before any work, a run directory that is a file or lies under one."""
    from pathlib import Path

    from ..errors import ConfigError

    path = Path(out)
    for at in (path, *path.parents):
        if at.exists():
            if not at.is_dir():
                what = "is a file" if at == path else f"is under {str(at)!r}, a file"
                raise ConfigError(f"--out {out}: {what}, not a directory; give a run directory (new or "
                                  f"from an earlier run)")
            return


def _preload_report() -> None:
    try:
        from ..report import plotting

        plotting()
        import pandas  # noqa: F401
    except Exception:  # pragma: no cover - the report itself will say what is missing
        pass

"""``l2obench report DIR``: the generalization report of a run directory."""
from __future__ import annotations


def add_parser(sub) -> None:
    p = sub.add_parser("report", help="write REPORT.md, index.html, figures and summary.csv for a run directory",
                       description="Report on a run directory written by `l2obench run`, from its results "
                                   "table and manifest only.")
    p.add_argument("directory", metavar="DIR", help="the run directory (l2obench run --out DIR)")
    p.set_defaults(func=cmd_report)


def cmd_report(args) -> int:
    from ..report import write_report

    paths = write_report(args.directory)
    print(f"wrote {paths['markdown']}, {paths['html']}, {paths['summary']} and figures in {paths['figures']}")
    return 0

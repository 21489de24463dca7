"""``l2obench schema``: the suite file format as JSON Schema."""
from __future__ import annotations

import json


def add_parser(sub) -> None:
    p = sub.add_parser("schema", help="print the suite file format as JSON Schema",
                       description="Print the suite file format (every table and key, with its type and meaning) as JSON Schema.")
    p.set_defaults(func=cmd_schema)


def cmd_schema(args) -> int:
    from ..suite import json_schema

    print(json.dumps(json_schema(), indent=2))
    return 0

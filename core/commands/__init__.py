"""Subcommands of the ``l2obench`` CLI: each module defines ``add_parser(subparsers)``."""

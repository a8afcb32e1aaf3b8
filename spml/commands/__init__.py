"""Subcommands of ``python -m spml``: each module has ``add_parser(subparsers)`` setting ``func``."""

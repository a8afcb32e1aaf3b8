"""Command line of the library: ``python -m spml {predict,audit,convert,...}``."""

from __future__ import annotations

import argparse
import sys

from spml.commands import audit, bench_app, bench_audit, bench_serve, calibrate, convert, predict


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m spml", description=__doc__)
    subparsers = parser.add_subparsers(dest="command", required=True)
    for command in (predict, bench_app, audit, bench_audit, convert, bench_serve, calibrate):
        command.add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())

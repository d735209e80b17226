"""The ``crossderm`` command: one subcommand per pipeline stage.

Each stage module exposes ``register(subparsers)``; handlers import their heavy dependencies lazily so
``crossderm --help`` stays instant. User errors (:class:`CrossdermError`) print as one line and exit 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from crossderm import __version__
from crossderm.errors import CrossdermError

COMMAND_MODULES = (
    "crossderm.prepare.synth_cli",
    "crossderm.prepare.cli",
    "crossderm.train.cli",
    "crossderm.predict.cli",
    "crossderm.evaluate.cli",
    "crossderm.report.cli",
    "crossderm.serve.cli",
    "crossderm.demo",
)


class _Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keep the hand-written examples in epilogs as they are and show defaults."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="crossderm",
        description="Cross-dataset dermoscopy: prepare -> split -> train -> predict -> evaluate -> report.",
        formatter_class=_Formatter,
    )
    parser.add_argument("--version", action="version", version=f"crossderm {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers, _Formatter)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except CrossdermError as exc:
        print(f"crossderm {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"crossderm {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())

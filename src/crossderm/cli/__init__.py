"""The ``crossderm`` command: one subcommand per pipeline stage.

Each command is one module ``crossderm/cli/<command>.py`` exposing ``register(subparsers, formatter_class)`` and
``run(args)``; they parse arguments and call the stage packages, importing the heavy ones lazily so
``crossderm --help`` stays instant. User errors (:class:`CrossdermError`) print as one line and exit 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import warnings
from typing import NoReturn

from crossderm import __version__
from crossderm.errors import CrossdermError

# One module per command, in pipeline order (the order of `crossderm --help`): crossderm/cli/<command>.py.
COMMANDS = (
    "download", "synth", "prepare", "cv", "pool", "predict", "export", "evaluate", "report", "ablate", "serve",
    "explain", "demo",
)


class _Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keep the hand-written examples in epilogs as they are and show defaults."""


class _Parser(argparse.ArgumentParser):
    """argparse with its usage errors as the one line every other error is (the usage is one --help away)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="crossderm",
        description="Cross-dataset dermoscopy: prepare -> split -> train -> predict -> evaluate -> report.",
        formatter_class=_Formatter,
    )
    parser.add_argument("--version", action="version", version=f"crossderm {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(f"crossderm.cli.{name}").register(subparsers, _Formatter)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    with warnings.catch_warnings():
        warnings.formatwarning = _one_line_warning(args.command)
        try:
            return _run(args)
        finally:
            warnings.formatwarning = _DEFAULT_FORMATWARNING


_DEFAULT_FORMATWARNING = warnings.formatwarning


def _one_line_warning(command: str):  # noqa: ANN202 (the signature warnings.formatwarning expects)
    def format_warning(message: Warning | str, category: type[Warning], *_: object, **__: object) -> str:
        return f"crossderm {command}: warning: {' '.join(str(message).split())}\n"

    return format_warning


def _run(args: argparse.Namespace) -> int:
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

"""User-facing errors: the CLI prints them as one line and exits non-zero, never as a traceback."""

from __future__ import annotations

from pathlib import Path
from typing import Any


class CrossdermError(Exception):
    """A problem with the user's input or environment that the user can fix."""


def at(path: str | Path, row: int | None = None) -> str:
    """Location prefix ``file:row`` for messages; ``row`` is the 1-based line number in the file."""
    return f"{path}:{row}" if row is not None else str(path)


def validation_message(exc: Any) -> str:
    """A pydantic ``ValidationError``'s first error as ``field: reason`` on one line (+ how many more)."""
    first = exc.errors()[0]
    # a field is a key the user typed (``--set 'a\rb=1'``): quoted unless printable, so the message stays one line
    field = ".".join(str(part) if str(part).isprintable() else repr(part) for part in first["loc"])
    message = first["msg"].removeprefix("Value error, ")
    more = exc.error_count() - 1
    return (f"{field}: {message}" if field else message) + (f" ({more} more)" if more else "")

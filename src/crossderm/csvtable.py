"""A CSV file as a table of text cells, each row indexed by the line of the file it starts on.

The one tokenizer behind the readers that name a file's line in their errors (``prepare``'s metadata readers and
the predictions of ``evaluate``/``pool``/``report``). Lines are counted as an editor counts them (LF, CRLF or CR),
so blank lines and line breaks inside quoted cells never shift the line an error names. A row with more non-blank
cells than the header is an error naming its line (pandas would silently make the first column the index and shift
every cell); a row with fewer cells has the rest blank. Column names are trimmed and their inner whitespace (line
breaks included) becomes one space; a blank name becomes ``Unnamed: <i>``; a name given twice is an error. Quoting
follows RFC 4180: a quote that opens a cell must close it, followed by a comma or the end of the line.

numpy/pandas are imported inside the function so ``crossderm --help`` stays instant.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import TYPE_CHECKING

from crossderm.errors import CrossdermError, at

if TYPE_CHECKING:
    import pandas as pd


def read_table(path: Path, what: str = "CSV", strip: bool = True, skip_blank: bool = True) -> tuple[pd.DataFrame, int]:
    """(cells as ``str``, index = each row's line in the file; the header's line). ``strip``: trim every cell and
    ignore spaces after a comma (so ``a, "b, c"`` is two cells); ``skip_blank``: drop rows whose cells are all
    blank, else keep them (a blank line is a row of blank cells). ``what`` names the file in messages."""
    import pandas as pd

    line = 0
    records: list[tuple[int, list[str]]] = []
    try:
        with open(path, encoding="utf-8-sig", newline="") as stream:
            reader = csv.reader(stream, skipinitialspace=strip, strict=True)
            for row in reader:
                if not skip_blank or any(cell.strip() for cell in row):
                    records.append((line + 1, row))  # the line the record starts on
                line = reader.line_num
    except FileNotFoundError:
        raise CrossdermError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        if isinstance(exc, csv.Error):
            raise CrossdermError(f"{at(path, line + 1)}: cannot parse {what} ({reason})") from None
        raise CrossdermError(f"{path}: cannot read {what} ({reason})") from None
    while records and not any(cell.strip() for cell in records[0][1]):
        records.pop(0)  # blank lines before the header
    if not records:
        raise CrossdermError(f"{path}: cannot parse {what} (the file has no header row)")
    (header_line, header), rows = records[0], records[1:]
    columns = [" ".join(name.split()) or f"Unnamed: {i}" for i, name in enumerate(header)]  # as pandas names them
    repeated = sorted({c for c in columns if columns.count(c) > 1})
    if repeated:
        raise CrossdermError(f"{at(path, header_line)}: column {repeated[0]!r} appears more than once")
    width = len(columns)
    cells = []
    for number, row in rows:
        if strip:
            row = [cell.strip() for cell in row]
        if any(cell.strip() for cell in row[width:]):
            raise CrossdermError(
                f"{at(path, number)}: cannot parse {what} (expected {width} fields in line {number}, saw {len(row)})"
            )
        cells.append(row[:width] + [""] * (width - len(row)))
    index = pd.Index([number for number, _ in rows], dtype="int64")
    return pd.DataFrame(cells, columns=columns, index=index, dtype=str), header_line

"""Property-based fuzzing (Hypothesis) of every reader of untrusted input and of the image decoder.

Targets: the CSV readers of ``prepare`` (HAM10000 metadata, ISIC 2019 ground truth + metadata, a generic source's
``labels.csv`` + ``label_map.yaml``, a ``--sites`` file), the ``--set key=value`` overrides and a config YAML file,
the predictions CSV of ``evaluate``/``pool``/``report``, and :func:`crossderm.imaging.decode` (``predict``,
``explain`` and ``serve``).

The property of every target: on any input it either returns a valid result (checked against real invariants:
row counts, the label vocabulary, finite probabilities summing to 1, an 8-bit ``size x size x 3`` array within the
pixel/aspect/memory limits...) or raises its documented error: :class:`CrossdermError` whose message is one line
and names the file (and, where the reader promises a line, a line that exists), or for the decoder
:class:`ImageError` with a known ``kind`` and a one-line message (the callers prefix the file name). Any other
exception fails the test.

Inputs are built to get deep: a valid table (or image) is generated first, then mutated at the cell/row/header level
(nasty cells: blank, NaN, inf, 1e400, full-width digits, NUL, quotes; duplicate ids; short and long rows; renamed,
missing and duplicate columns) and/or at the byte level (truncation, byte flips, inserted bytes, other encodings).
Three kinds of property per CSV reader:

* hostile: arbitrary mutations -> valid result or a well-formed error;
* benign: on a file with at least one row (a header-only file is an error), formatting that must not matter
  (BOM, CRLF or CR line endings, blank lines, every cell quoted, spaces after the commas, columns reordered, an
  extra free-text column with quoted commas and line breaks) gives exactly the result of the plain file;
* lines: one bad cell in row k of an otherwise valid file, formatted as above, is reported at the physical line
  of row k.

Every test is derandomized and uses no example database, so a run is reproducible; the whole file runs in well
under a minute on one core (``docs/reliability.md``, section Fuzzing).
"""

from __future__ import annotations

import io
import math
import os
import re
import struct
import tempfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from crossderm.errors import CrossdermError
from crossderm.imaging import ImageError, decode, decode_cost
from crossderm.labels import CLASSES, DEFAULT_ISIC_TO_HAM, ISIC2019_COLUMNS
from crossderm.patient import ANATOM_SITES
from crossderm.prepare.generic import read_generic
from crossderm.prepare.metadata import FLAMBY_CENTERS, HAM_LOCALIZATION, ISIC_ANATOM_SITE, read_sites
from crossderm.prepare.sources import (
    HAM_ID_RANGE,
    ISIC_GROUND_TRUTH,
    ISIC_METADATA,
    TABLE_COLUMNS,
    read_ham10000,
    read_isic2019,
)

# Examples per test. The CSV targets cost ~5-15 ms an example (pandas, a temporary folder), the decoder ~2 ms.
# CROSSDERM_FUZZ_SCALE=10 runs ten times as many (a longer, still reproducible, search).
SCALE = float(os.environ.get("CROSSDERM_FUZZ_SCALE", "1"))
N_HOSTILE = 150
N_BENIGN = 60
N_LINES = 60
N_CONFIG = 300
N_IMAGES = 250

# Pillow warns about the corrupt TIFF tags the decoder is fed (and then refuses or decodes the file): expected here.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:PIL")


def fuzz_settings(n: int) -> settings:
    return settings(
        max_examples=max(1, round(n * SCALE)), deadline=None, derandomize=True, database=None, print_blob=False,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
    )


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A module-scoped folder; every example works in a fresh temporary folder below it."""
    return tmp_path_factory.mktemp("fuzz")


# ---- the CSV model: a table, its mutations and its rendering ------------------------------------------------------


class Raw(str):
    """A cell written as it is, never quoted: commas, quotes and line breaks in it break the row on purpose."""


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]

    def names(self) -> list[str]:
        """The column names as the readers see them (stripped)."""
        return [name.strip() for name in self.header]

    def has(self, *names: str) -> bool:
        """The header holds each of ``names`` and no name twice."""
        return len(set(self.names())) == len(self.header) and set(names) <= set(self.names())

    def column(self, name: str, fmt: Format | None = None) -> list[str]:
        """The cells of a column as the reader should see them: stripped, a short row's missing cell blank, and
        without the rows that are written as a blank line (a reader skips those)."""
        index = self.names().index(name)
        rows = [row for row in self.rows if fmt is None or record_text(row, fmt).strip()]
        return [(row[index] if index < len(row) else "").strip() for row in rows]


@dataclass
class Format:
    """How a table is written. Everything here except ``encoding`` and ``bytes_mutated`` is benign formatting."""

    newline: str = "\n"
    bom: bool = False
    quote_all: bool = False
    pad: bool = False  # a space after each comma (the readers strip cells)
    blank_lines: dict[int, str] = field(default_factory=dict)  # record index -> blank text written before it
    trailing_newline: bool = True
    encoding: str = "utf-8"
    bytes_mutated: bool = False


LINE_BREAK = re.compile(r"\r\n|\r|\n")


def record_text(record: list[str], fmt: Format) -> str:
    """One record as written (without its line break)."""

    def cell(value: str) -> str:
        if isinstance(value, Raw):
            return str(value)
        if fmt.quote_all or any(c in value for c in ',"\r\n') or value != value.strip():
            return '"' + value.replace('"', '""') + '"'
        return value

    return (", " if fmt.pad else ",").join(cell(v) for v in record)


def render(table: Table, fmt: Format) -> tuple[bytes, list[int]]:
    """The file's bytes and the 1-based physical line of each data row (line breaks: CRLF, CR or LF)."""
    records = [table.header, *table.rows]
    parts: list[str] = []
    lines: list[int] = []
    line = 1
    for index, record in enumerate(records):
        blank = fmt.blank_lines.get(index)
        if blank is not None:
            parts.append(blank + fmt.newline)
            line += 1 + len(LINE_BREAK.findall(blank))
        text = record_text(record, fmt)
        if index:
            lines.append(line)
        parts.append(text)
        line += len(LINE_BREAK.findall(text))
        if index < len(records) - 1 or fmt.trailing_newline:
            parts.append(fmt.newline)
            line += 1
    if len(records) in fmt.blank_lines:  # blank lines at the end
        parts.append(("" if fmt.trailing_newline else fmt.newline) + fmt.blank_lines[len(records)] + fmt.newline)
    text = ("\ufeff" if fmt.bom else "") + "".join(parts)
    return text.encode(fmt.encoding, errors="replace"), lines


NASTY = [
    "", " ", "nan", "NaN", "NA", "None", "null", "inf", "-inf", "Infinity", "1e400", "-1e400", "1e-400", "-0",
    "0.0", "1.0", "1", "0", "2", "-1", "0.5", "1e2", "80.0", "120.4", "120.6", "-0.4", "0x1", "1_0", "\u0661",
    "\uff15", "9" * 40, "\x00", '"', "'", ",", ";", "\t", "\\", "\u00e9", "\ufeff", "\u2028", "ISIC_0024306",
    "ISIC_0000001", "ISIC_0000001_downsampled", "HAM_0000001", "BCN_0000001", "MSK4_0000001", "nv", "NV", " nv ",
    "mel", "UNK", "male", "FEMALE", "back", "anterior torso", "unknown", "a\nb", "a\r\nb",
]
nasty_cells = st.one_of(st.sampled_from(NASTY), st.text(max_size=8))


def mutate_table(data: st.DataObject, table: Table, columns: list[str]) -> bool:
    """Apply 0-4 random cell/row/header mutations in place; True when a row may now have the wrong field count."""
    ragged = False
    for _ in range(data.draw(st.integers(0, 4), label="mutations")):
        kind = data.draw(st.sampled_from(
            ["cell", "cell", "cell", "raw", "duplicate", "short", "long", "drop_col", "rename_col", "dup_col",
             "swap_header", "no_rows", "many_rows"]
        ), label="mutation")
        if kind in ("cell", "raw", "duplicate", "short", "long") and not table.rows:
            continue
        r = data.draw(st.integers(0, max(0, len(table.rows) - 1)), label="row")
        c = data.draw(st.integers(0, len(table.header) - 1), label="column")
        if kind in ("cell", "raw", "short") and c >= len(table.rows[r]):
            continue
        if kind == "cell":
            table.rows[r][c] = data.draw(nasty_cells, label="cell value")
        elif kind == "raw":
            table.rows[r][c] = Raw(data.draw(st.sampled_from([",", '"', 'x"y', '"x', "a,b", "\n", ",,"])))
            ragged = True
        elif kind == "duplicate":
            copy = list(table.rows[r])
            if copy and data.draw(st.booleans(), label="change other cells"):
                other = data.draw(st.integers(0, len(copy) - 1))
                copy[other] = data.draw(nasty_cells)
            table.rows.insert(data.draw(st.integers(0, len(table.rows))), copy)
        elif kind == "short":
            table.rows[r] = table.rows[r][: data.draw(st.integers(0, len(table.rows[r]) - 1))]
        elif kind == "long":
            table.rows[r] = table.rows[r] + data.draw(st.lists(nasty_cells, min_size=1, max_size=2))
            ragged = True
        elif kind == "drop_col":
            del table.header[c]
            for row in table.rows:
                if c < len(row):
                    del row[c]
            if not table.header:
                table.header.append("x")
        elif kind == "rename_col":
            table.header[c] = data.draw(st.one_of(
                st.sampled_from([" " + table.header[c] + " ", table.header[c].upper(), "", "a\nb", "\x0c", "1"]),
                nasty_cells,
            ))
        elif kind == "dup_col":
            table.header[c] = data.draw(st.sampled_from(columns)) + data.draw(st.sampled_from(["", " ", "  "]))
        elif kind == "swap_header":
            d = data.draw(st.integers(0, len(table.header) - 1))
            table.header[c], table.header[d] = table.header[d], table.header[c]
        elif kind == "no_rows":
            table.rows.clear()
        elif kind == "many_rows":
            table.rows.extend([list(table.rows[r])[:] for _ in range(data.draw(st.integers(1, 30)))] if table.rows
                              else [])
    return ragged


def draw_format(data: st.DataObject, n_records: int, blank_lines: bool = True) -> Format:
    fmt = Format(
        newline=data.draw(st.sampled_from(["\n", "\r\n", "\r"]), label="newline"),
        bom=data.draw(st.booleans(), label="bom"),
        quote_all=data.draw(st.booleans(), label="quote all"),
        pad=data.draw(st.booleans(), label="pad"),
        trailing_newline=data.draw(st.booleans(), label="trailing newline"),
    )
    if blank_lines:
        positions = data.draw(st.lists(st.integers(0, n_records), max_size=3, unique=True), label="blank lines")
        fmt.blank_lines = {p: data.draw(st.sampled_from(["", "", "  "])) for p in positions}
    return fmt


def mutate_bytes(data: st.DataObject, content: bytes, fmt: Format) -> bytes:
    """Maybe re-encode, then 0-3 byte-level mutations (truncate, flip, insert)."""
    if data.draw(st.integers(0, 9), label="re-encode?") == 0:
        fmt.encoding = data.draw(st.sampled_from(["latin-1", "utf-16", "cp1252", "utf-32"]), label="encoding")
        text = content.decode("utf-8")
        content = text.encode(fmt.encoding, errors="replace")
        fmt.bytes_mutated = fmt.encoding in ("utf-16", "utf-32") or not text.isascii()
    for _ in range(data.draw(st.integers(0, 3), label="byte mutations") if data.draw(st.booleans()) else 0):
        if not content:
            break
        fmt.bytes_mutated = True
        kind = data.draw(st.sampled_from(["truncate", "flip", "insert"]), label="byte mutation")
        at = data.draw(st.integers(0, len(content) - 1), label="at")
        if kind == "truncate":
            content = content[:at]
        elif kind == "flip":
            content = content[:at] + bytes([content[at] ^ data.draw(st.integers(1, 255))]) + content[at + 1:]
        else:
            content = content[:at] + data.draw(st.binary(min_size=1, max_size=4)) + content[at:]
    return content


def physical_lines(content: bytes) -> int:
    return len(LINE_BREAK.split(content.decode("utf-8", errors="replace")))


def read_or_refuse(base: Path, name: str, content: bytes, reader: Callable[[Path], Any],
                   quote_content: bool = True) -> Any:
    """``content`` as a file ``name`` read by ``reader``; a refusal must be a good one-line error (then None)."""
    with tempfile.TemporaryDirectory(dir=base) as folder:
        path = Path(folder) / name
        path.write_bytes(content)
        try:
            return reader(path)
        except CrossdermError as exc:
            check_error(exc, [path], content if quote_content else None)
            return None


def check_error(exc: CrossdermError, files: list[Path], content: bytes | None = None) -> None:
    """One line, names one of ``files``; a named line exists in the file."""
    message = str(exc)
    assert message.splitlines() == [message], f"not one line: {message!r}"
    named = [f for f in files if message.startswith(str(f))]
    assert named, f"does not name {[str(f) for f in files]}: {message!r}"
    match = re.match(re.escape(str(named[0])) + r":(\d+):", message)
    if match and content is not None:
        assert 1 <= int(match.group(1)) <= physical_lines(content), message


def expect_line(exc: CrossdermError, path: Path, line: int) -> None:
    message = str(exc)
    assert message.startswith(f"{path}:{line}: "), f"expected line {line}: {message!r}"
    assert message.splitlines() == [message]


# ---- HAM10000 metadata -------------------------------------------------------------------------------------------

HAM_COLUMNS = ["lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization", "dataset"]
HAM_SITES = ["vidir_molemax", "vidir_modern", "rosendahl", "vienna_dias", ""]


@st.composite
def ham_tables(draw: Any) -> Table:
    n = draw(st.integers(0, 12))
    numbers = draw(st.lists(st.integers(*HAM_ID_RANGE), min_size=n, max_size=n, unique=True))
    rows = [
        [
            f"HAM_{draw(st.integers(0, 9999)):07d}",
            f"ISIC_{number:07d}",
            draw(st.sampled_from(CLASSES)),
            draw(st.sampled_from(["histo", "follow_up", "consensus", "confocal"])),
            draw(st.sampled_from(["", "5.0", "45.0", "80", "0", "120", "85.0"])),
            draw(st.sampled_from(["male", "female", "unknown", ""])),
            draw(st.sampled_from(sorted(HAM_LOCALIZATION))),
            draw(st.sampled_from(HAM_SITES)),
        ]
        for number in numbers
    ]
    keep = draw(st.sampled_from([7, 8]))  # with and without the Dataverse ``dataset`` column
    return Table(HAM_COLUMNS[:keep], [row[:keep] for row in rows])


def check_ham_result(table: pd.DataFrame, report: Any, model: Table, fmt: Format | None) -> None:
    assert list(table.columns) == TABLE_COLUMNS
    assert len(table) == report.rows
    assert set(table["label"]) <= set(CLASSES)
    assert (table["label"] == table["original_label"]).all()
    assert (table["source"] == "ham").all()
    assert table["image_id"].is_unique and (table["image_id"] != "").all()
    assert (table["site"] != "").all()
    check_patient_columns(table)
    if fmt is not None:  # the same rows, in order, with the cells the file holds
        assert list(table["image_id"]) == model.column("image_id", fmt)
        assert list(table["label"]) == model.column("dx", fmt)
        assert list(table["lesion_id"]) == model.column("lesion_id", fmt)


def check_patient_columns(table: pd.DataFrame) -> None:
    for age in table["age"]:
        assert age == "" or (age.isdigit() and 0 <= int(age) <= 120), age
    assert set(table["sex"]) <= {"", "male", "female"}
    assert set(table["anatom_site"]) <= {"", *ANATOM_SITES}


@given(data=st.data())
@fuzz_settings(N_HOSTILE)
def test_ham10000_reader_hostile(base: Path, data: st.DataObject) -> None:
    table = data.draw(ham_tables(), label="table")
    ragged = mutate_table(data, table, HAM_COLUMNS)
    fmt = draw_format(data, len(table.rows) + 1)
    content, _ = render(table, fmt)
    content = mutate_bytes(data, content, fmt)
    read = read_or_refuse(base, "HAM10000_metadata.csv", content, read_ham10000)
    if read is None:
        return
    result, report = read
    exact = not fmt.bytes_mutated and not ragged and table.has("lesion_id", "image_id", "dx")
    check_ham_result(result, report, table, fmt if exact else None)


@given(data=st.data())
@fuzz_settings(N_BENIGN)
def test_ham10000_reader_ignores_formatting(base: Path, data: st.DataObject) -> None:
    table = data.draw(ham_tables().filter(lambda t: t.rows), label="table")
    plain = read_in(base, "HAM10000_metadata.csv", render(table, Format())[0], read_ham10000)
    styled = reformat(data, table)
    assert_same_frame(read_in(base, "HAM10000_metadata.csv", render(styled, draw_format(data, len(table.rows) + 1))[0],
                              read_ham10000), plain)


def read_in(base: Path, name: str, content: bytes, reader: Callable[[Path], Any]) -> Any:
    with tempfile.TemporaryDirectory(dir=base) as folder:
        path = Path(folder) / name
        path.write_bytes(content)
        result = reader(path)
    return result[0] if isinstance(result, tuple) else result


def reformat(data: st.DataObject, table: Table, notes: bool = True) -> Table:
    """The same table with its columns reordered and an extra free-text column (commas, quotes, line breaks)."""
    order = data.draw(st.permutations(range(len(table.header))), label="column order")
    header = [table.header[i] for i in order]
    rows = [[row[i] for i in order] for row in table.rows]
    if notes and data.draw(st.booleans(), label="notes column"):
        at = data.draw(st.integers(0, len(header)))
        header.insert(at, "notes")
        for row in rows:
            row.insert(at, data.draw(st.sampled_from(["", "a, b", 'say "hi"', "two\nlines", "three\r\nmore\nlines"])))
    return Table(header, rows)


def assert_same_frame(got: Any, want: Any) -> None:
    if isinstance(got, dict):
        assert got == want
        return
    pd.testing.assert_frame_equal(got.reset_index(drop=True), want.reset_index(drop=True))


HAM_BAD = [("dx", "zzz"), ("age", "-3"), ("age", "1e400"), ("sex", "other"), ("localization", "tail"),
           ("image_id", ""), ("age", "inf")]


@given(data=st.data())
@fuzz_settings(N_LINES)
def test_ham10000_errors_name_the_line(base: Path, data: st.DataObject) -> None:
    table = data.draw(ham_tables().filter(lambda t: t.rows), label="table")
    k = data.draw(st.integers(0, len(table.rows) - 1), label="bad row")
    column, value = data.draw(st.sampled_from(HAM_BAD), label="bad cell")
    table.rows[k][table.header.index(column)] = value
    table = reformat(data, table)
    content, lines = render(table, draw_format(data, len(table.rows) + 1))
    with tempfile.TemporaryDirectory(dir=base) as folder:
        path = Path(folder) / "HAM10000_metadata.csv"
        path.write_bytes(content)
        with pytest.raises(CrossdermError) as caught:
            read_ham10000(path)
    expect_line(caught.value, path, lines[k])


# ---- ISIC 2019 ground truth + metadata ---------------------------------------------------------------------------

TRUTH_COLUMNS = ["image", *ISIC2019_COLUMNS]
META_COLUMNS = ["image", "age_approx", "anatom_site_general", "lesion_id", "sex"]


@st.composite
def isic_tables(draw: Any) -> tuple[Table, Table]:
    n = draw(st.integers(0, 10))
    numbers = draw(st.lists(st.integers(0, 60000), min_size=n, max_size=n, unique=True))
    one, zero = draw(st.sampled_from([("1.0", "0.0"), ("1", "0")]))
    truth, meta = [], []
    for number in numbers:
        image = f"ISIC_{number:07d}" + draw(st.sampled_from(["", "", "_downsampled"]))
        hot = draw(st.integers(0, len(ISIC2019_COLUMNS) - 1))
        truth.append([image, *(one if i == hot else zero for i in range(len(ISIC2019_COLUMNS)))])
        lesion = draw(st.sampled_from(["", "BCN_{:07d}", "MSK4_{:07d}", "HAM_{:07d}", "IP_{:07d}"]))
        meta.append([
            image, draw(st.sampled_from(["", "35", "60.0", "85"])), draw(st.sampled_from(["", *ISIC_ANATOM_SITE])),
            lesion.format(draw(st.integers(0, 9999))), draw(st.sampled_from(["", "male", "female"])),
        ])
    meta = draw(st.permutations(meta))
    return Table(list(TRUTH_COLUMNS), truth), Table(list(META_COLUMNS), [list(r) for r in meta])


def run_isic(folder: Path, truth: bytes, meta: bytes, ham_ids: set[str] | None) -> Any:
    (folder / ISIC_GROUND_TRUTH).write_bytes(truth)
    (folder / ISIC_METADATA).write_bytes(meta)
    return read_isic2019(folder, DEFAULT_ISIC_TO_HAM, ham_ids)


def check_isic_result(table: pd.DataFrame, report: Any, ham_ids: set[str] | None, model: Table,
                      fmt: Format | None) -> None:
    assert list(table.columns) == TABLE_COLUMNS
    assert set(table["label"]) <= set(CLASSES)
    assert set(table["original_label"]) <= set(ISIC2019_COLUMNS)
    assert all(DEFAULT_ISIC_TO_HAM[o] == lab for o, lab in zip(table["original_label"], table["label"], strict=True))
    assert (table["source"] == "isic").all()
    assert table["image_id"].is_unique
    removed = report.removed["ham_images_removed"]
    assert len(table) + removed + sum(report.dropped_labels.values()) == report.rows
    assert not table["lesion_id"].str.upper().str.startswith("HAM_").any()
    numbers = table["image_id"].str.removesuffix("_downsampled").str.removeprefix("ISIC_")
    assert not any(n.isdigit() and HAM_ID_RANGE[0] <= int(n) <= HAM_ID_RANGE[1] for n in numbers)
    if ham_ids:
        assert not table["image_id"].str.removesuffix("_downsampled").isin(ham_ids).any()
    check_patient_columns(table)
    if fmt is not None:
        ids = model.column("image", fmt)
        assert report.rows == len(ids)
        assert list(table["image_id"]) == [i for i in ids if i in set(table["image_id"])]  # a subset, in order


@given(data=st.data())
@fuzz_settings(N_HOSTILE)
def test_isic2019_reader_hostile(base: Path, data: st.DataObject) -> None:
    truth, meta = data.draw(isic_tables(), label="tables")
    which = data.draw(st.sampled_from(["truth", "meta", "both"]), label="mutated file")
    exact = True
    contents = []
    for name, table, columns in (("truth", truth, TRUTH_COLUMNS), ("meta", meta, META_COLUMNS)):
        fmt = draw_format(data, len(table.rows) + 1)
        if name == "truth":
            truth_fmt = fmt
        if which in (name, "both"):
            exact &= not mutate_table(data, table, columns)
            content = mutate_bytes(data, render(table, fmt)[0], fmt)
            exact &= not fmt.bytes_mutated
        else:
            content = render(table, fmt)[0]
        contents.append(content)
    ids = truth.column("image") if "image" in truth.names() else []
    ham_ids = data.draw(st.none() | st.sets(st.sampled_from(ids or ["ISIC_0000001"])), label="HAM ids")
    with tempfile.TemporaryDirectory(dir=base) as name:
        folder = Path(name)
        try:
            result, report = run_isic(folder, *contents, ham_ids)
        except CrossdermError as exc:
            check_error(exc, [folder / ISIC_GROUND_TRUTH, folder / ISIC_METADATA])
            return
    exact &= truth.has("image")
    check_isic_result(result, report, ham_ids, truth, truth_fmt if exact else None)


@given(data=st.data())
@fuzz_settings(N_BENIGN)
def test_isic2019_reader_ignores_formatting(base: Path, data: st.DataObject) -> None:
    truth, meta = data.draw(isic_tables().filter(lambda t: t[0].rows), label="tables")
    with tempfile.TemporaryDirectory(dir=base) as name:
        plain, plain_report = run_isic(Path(name), render(truth, Format())[0], render(meta, Format())[0], None)
    styled = [render(reformat(data, t), draw_format(data, len(t.rows) + 1))[0] for t in (truth, meta)]
    with tempfile.TemporaryDirectory(dir=base) as name:
        result, report = run_isic(Path(name), *styled, None)
    assert_same_frame(result, plain)
    assert (report.rows, report.removed, report.dropped_labels) == (
        plain_report.rows, plain_report.removed, plain_report.dropped_labels)


@given(data=st.data())
@fuzz_settings(N_LINES)
def test_isic2019_errors_name_the_line(base: Path, data: st.DataObject) -> None:
    truth, meta = data.draw(isic_tables().filter(lambda t: t[0].rows), label="tables")
    k = data.draw(st.integers(0, len(truth.rows) - 1), label="bad row")
    bad_file = data.draw(st.sampled_from(["truth", "meta"]), label="bad file")
    if bad_file == "truth":
        column = data.draw(st.sampled_from(ISIC2019_COLUMNS))
        truth.rows[k][truth.header.index(column)] = data.draw(st.sampled_from(["2", "x", "nan", "inf", "1e400", ""]))
        table = truth
    else:
        column, value = data.draw(st.sampled_from([("age_approx", "-5"), ("sex", "x"), ("anatom_site_general", "x"),
                                                   ("image", "")]))
        meta.rows[k][meta.header.index(column)] = value
        table = meta
    styled = reformat(data, table)
    content, lines = render(styled, draw_format(data, len(styled.rows) + 1))
    other = render(meta if bad_file == "truth" else truth, Format())[0]
    with tempfile.TemporaryDirectory(dir=base) as name:
        folder = Path(name)
        with pytest.raises(CrossdermError) as caught:
            run_isic(folder, *((content, other) if bad_file == "truth" else (other, content)), None)
    path = folder / (ISIC_GROUND_TRUTH if bad_file == "truth" else ISIC_METADATA)
    expect_line(caught.value, path, lines[k])


# ---- a generic source: labels.csv + label_map.yaml ---------------------------------------------------------------

GENERIC_COLUMNS = ["image", "label", "lesion_id", "site", "age", "sex", "anatom_site"]
THEIR_LABELS = {"MEL": "mel", "NEV": "nv", "BCC": "bcc", "SK": "bkl", "AK": "akiec", "DF": "df", "VASC": "vasc",
                "OTHER": None}


@st.composite
def generic_sources(draw: Any) -> tuple[Table, str | None]:
    mapped = draw(st.booleans())
    labels = sorted(THEIR_LABELS) if mapped else list(CLASSES)
    n = draw(st.integers(0, 12))
    names = draw(st.lists(st.from_regex(r"[a-z]{1,6}_[0-9]{1,3}", fullmatch=True), min_size=n, max_size=n,
                          unique=True))
    rows = [
        [
            name + draw(st.sampled_from(["", ".jpg", ".PNG", ".jpeg"])),
            draw(st.sampled_from(labels)),
            draw(st.sampled_from(["", "P1", "P2", "P3"])),
            draw(st.sampled_from(["", "ward_a", "ward_b"])),
            draw(st.sampled_from(["", "30", "45.5", "n/a"])),
            draw(st.sampled_from(["", "male", "female", "Male"])),
            draw(st.sampled_from(["", *ISIC_ANATOM_SITE])),
        ]
        for name in names
    ]
    keep = draw(st.integers(2, len(GENERIC_COLUMNS)))
    label_map = "".join(f"{k}: {v if v else 'null'}\n" for k, v in THEIR_LABELS.items()) if mapped else None
    return Table(GENERIC_COLUMNS[:keep], [row[:keep] for row in rows]), label_map


LABEL_MAPS = st.one_of(
    st.none(),
    st.sampled_from(["", "[]", "- a\n- b\n", "MEL: melanoma\n", "MEL: [mel]\n", "? [a]\n: mel\n", "{MEL: mel",
                     "MEL: mel\nMEL: nv\n", "1: nv\n", "yes: nv\n", "MEL: ~\n", "MEL: !!python/name:os.system\n",
                     '"two\\nlines": melanoma\n']),
    st.text(max_size=30),
)


def run_generic(folder: Path, labels: bytes, label_map: bytes | None) -> Any:
    (folder / "labels.csv").write_bytes(labels)
    if label_map is not None:
        (folder / "label_map.yaml").write_bytes(label_map)
    return read_generic("clinic", folder)


@given(data=st.data())
@fuzz_settings(N_HOSTILE)
def test_generic_source_reader_hostile(base: Path, data: st.DataObject) -> None:
    table, label_map = data.draw(generic_sources(), label="source")
    ragged = mutate_table(data, table, GENERIC_COLUMNS)
    fmt = draw_format(data, len(table.rows) + 1)
    content = mutate_bytes(data, render(table, fmt)[0], fmt)
    map_bytes = label_map.encode() if label_map is not None else None
    if data.draw(st.integers(0, 3), label="replace the label map?") == 0:
        choice = data.draw(LABEL_MAPS, label="label map")
        map_bytes = choice.encode() if choice is not None else data.draw(st.binary(max_size=12) | st.none())
    with tempfile.TemporaryDirectory(dir=base) as name:
        folder = Path(name)
        try:
            result, report = run_generic(folder, content, map_bytes)
        except CrossdermError as exc:
            check_error(exc, [folder / "labels.csv", folder / "label_map.yaml"], content)
            return
    assert list(result.columns) == TABLE_COLUMNS
    assert set(result["label"]) <= set(CLASSES)
    assert (result["source"] == "clinic").all()
    assert result["image_id"].is_unique and (result["image_id"] != "").all()
    assert (result["site"] != "").all()
    assert len(result) + sum(report.dropped_labels.values()) == report.rows
    check_patient_columns(result)
    if not ragged and not fmt.bytes_mutated and table.has("image"):
        images = table.column("image", fmt)
        assert report.rows == len(images)
        stems = [Path(i).stem if Path(i).suffix else i for i in images]
        assert list(result["image_id"]) == [s for s in stems if s in set(result["image_id"])]


@given(data=st.data())
@fuzz_settings(N_BENIGN)
def test_generic_source_reader_ignores_formatting(base: Path, data: st.DataObject) -> None:
    table, label_map = data.draw(generic_sources().filter(lambda s: s[0].rows), label="source")
    map_bytes = label_map.encode() if label_map else None
    with tempfile.TemporaryDirectory(dir=base) as name:
        plain = run_generic(Path(name), render(table, Format())[0], map_bytes)[0]
    styled = render(reformat(data, table), draw_format(data, len(table.rows) + 1))[0]
    with tempfile.TemporaryDirectory(dir=base) as name:
        assert_same_frame(run_generic(Path(name), styled, map_bytes)[0], plain)


@given(data=st.data())
@fuzz_settings(N_LINES)
def test_generic_source_errors_name_the_line(base: Path, data: st.DataObject) -> None:
    table, label_map = data.draw(generic_sources().filter(lambda s: s[0].rows), label="source")
    k = data.draw(st.integers(0, len(table.rows) - 1), label="bad row")
    bad = [("label", "zzz"), ("image", "")] + [(c, "x") for c in ("age", "sex", "anatom_site") if c in table.header]
    column, value = data.draw(st.sampled_from(bad), label="bad cell")
    table.rows[k][table.header.index(column)] = value
    styled = reformat(data, table)
    content, lines = render(styled, draw_format(data, len(styled.rows) + 1))
    with tempfile.TemporaryDirectory(dir=base) as name:
        folder = Path(name)
        with pytest.raises(CrossdermError) as caught:
            run_generic(folder, content, label_map.encode() if label_map else None)
    expect_line(caught.value, folder / "labels.csv", lines[k])


# ---- a --sites file ----------------------------------------------------------------------------------------------


@st.composite
def sites_tables(draw: Any) -> Table:
    flamby = draw(st.booleans())
    n = draw(st.integers(0, 12))
    ids = draw(st.lists(st.integers(0, 99999), min_size=n, max_size=n, unique=True))
    rows = []
    for number in ids:
        site = (draw(st.sampled_from(["0", "1", "2", "3", "4", "5", "1.0"])) if flamby
                else draw(st.sampled_from(["bcn", "msk", "vienna", "rosendahl"])))
        rows.append([f"ISIC_{number:07d}" + draw(st.sampled_from(["", "_downsampled"])), site,
                     draw(st.sampled_from(["train", "test"]))])
    if rows and draw(st.booleans()):  # the same image listed twice with the same site is allowed
        rows.append(list(rows[draw(st.integers(0, len(rows) - 1))]))
    id_column = draw(st.sampled_from(["image", "image_id"]))
    return Table([id_column, "center" if flamby else "site", "fold"], rows)


@given(data=st.data())
@fuzz_settings(N_HOSTILE)
def test_sites_reader_hostile(base: Path, data: st.DataObject) -> None:
    table = data.draw(sites_tables(), label="table")
    flamby = "center" in table.header
    ragged = mutate_table(data, table, ["image", "image_id", "site", "center", "fold"])
    fmt = draw_format(data, len(table.rows) + 1)
    content = mutate_bytes(data, render(table, fmt)[0], fmt)
    sites = read_or_refuse(base, "sites.csv", content, read_sites)
    if sites is None:
        return
    assert all(isinstance(k, str) and isinstance(v, str) and k and v for k, v in sites.items()), sites
    if flamby and "center" in table.names() and "site" not in table.names():
        assert set(sites.values()) <= set(FLAMBY_CENTERS.values())
    id_column = next((c for c in ("image_id", "image") if c in table.names()), None)
    if table.has() and not ragged and not fmt.bytes_mutated and id_column:
        assert set(sites) == {i.removesuffix("_downsampled") for i in table.column(id_column, fmt)}


@given(data=st.data())
@fuzz_settings(N_BENIGN)
def test_sites_reader_ignores_formatting(base: Path, data: st.DataObject) -> None:
    table = data.draw(sites_tables().filter(lambda t: t.rows), label="table")
    plain = read_in(base, "sites.csv", render(table, Format())[0], read_sites)
    styled = render(reformat(data, table), draw_format(data, len(table.rows) + 1))[0]
    assert read_in(base, "sites.csv", styled, read_sites) == plain


@given(data=st.data())
@fuzz_settings(N_LINES)
def test_sites_errors_name_the_line(base: Path, data: st.DataObject) -> None:
    table = data.draw(sites_tables().filter(lambda t: t.rows), label="table")
    k = data.draw(st.integers(0, len(table.rows) - 1), label="bad row")
    bad = ["6", "x", "nan", "inf", "-1", "1.5"] if "center" in table.header else [""]
    table.rows[k][1] = data.draw(st.sampled_from(bad), label="bad site")
    styled = reformat(data, table)
    content, lines = render(styled, draw_format(data, len(styled.rows) + 1))
    with tempfile.TemporaryDirectory(dir=base) as folder:
        path = Path(folder) / "sites.csv"
        path.write_bytes(content)
        with pytest.raises(CrossdermError) as caught:
            read_sites(path)
    expect_line(caught.value, path, lines[k])


# ---- the predictions CSV -----------------------------------------------------------------------------------------

PRED_COLUMNS = ["image_id", "source", "label", *CLASSES]
PRED_OPTIONAL = ["site", "sex", "age", "anatom_site", "train_site"]


@st.composite
def prediction_tables(draw: Any) -> Table:
    n = draw(st.integers(1, 12))
    optional = draw(st.lists(st.sampled_from(PRED_OPTIONAL), unique=True, max_size=3))
    style = draw(st.sampled_from(["{!r}", "{:.12f}", "{:.9e}"]))
    keys = draw(st.lists(st.tuples(st.integers(0, 50), st.sampled_from(["ham", "isic", "clinic"])),
                         min_size=n, max_size=n, unique=True))
    rows = []
    for number, source in keys:
        weights = draw(st.lists(st.integers(0, 1000), min_size=len(CLASSES), max_size=len(CLASSES))
                       .filter(lambda w: sum(w) > 0))
        probs = [style.format(w / sum(weights)) for w in weights]
        extra = {"site": draw(st.sampled_from(["a", "b", ""])), "sex": draw(st.sampled_from(["male", ""])),
                 "age": draw(st.sampled_from(["", "40", "nan", "62.5"])), "anatom_site": "torso",
                 "train_site": draw(st.sampled_from(["a", "b"]))}
        rows.append([f"ISIC_{number:07d}", source, draw(st.sampled_from(CLASSES)), *probs,
                     *(extra[c] for c in optional)])
    return Table([*PRED_COLUMNS, *optional], rows)


def read_predictions(path: Path) -> pd.DataFrame:
    from crossderm.evaluate.predictions import load_predictions

    return load_predictions(path)


def check_predictions(table: pd.DataFrame, model: Table, fmt: Format | None) -> None:
    assert len(table) > 0
    probs = table[list(CLASSES)].to_numpy()
    assert probs.dtype == np.float64 and np.isfinite(probs).all() and (probs >= 0).all()
    assert np.allclose(probs.sum(axis=1), 1, atol=1.001e-3)
    assert set(table["label"]) <= set(CLASSES)
    assert (table["image_id"].str.strip() != "").all() and (table["source"].str.strip() != "").all()
    keys = ["source", "image_id"] + (["train_site"] if "train_site" in table.columns else [])
    assert not table.duplicated(keys).any()
    if "age" in table.columns:
        ages = table["age"].to_numpy(dtype=float)
        assert (np.isnan(ages) | (np.isfinite(ages) & (ages >= 0))).all()
    if fmt is not None and model.header == model.names():  # this loader does not strip column names
        assert list(table["image_id"].str.strip()) == model.column("image_id", fmt)
        assert list(table["label"]) == model.column("label", fmt)


@given(data=st.data())
@fuzz_settings(N_HOSTILE)
def test_predictions_loader_hostile(base: Path, data: st.DataObject) -> None:
    table = data.draw(prediction_tables(), label="table")
    ragged = mutate_table(data, table, [*PRED_COLUMNS, *PRED_OPTIONAL])
    fmt = draw_format(data, len(table.rows) + 1)
    fmt.pad = False  # the predictions loader does not strip labels: " nv" is refused, on purpose
    content = mutate_bytes(data, render(table, fmt)[0], fmt)
    result = read_or_refuse(base, "predictions.csv", content, read_predictions)
    if result is None:
        return
    exact = not ragged and not fmt.bytes_mutated and table.has("image_id", "label")
    check_predictions(result, table, fmt if exact else None)


@given(data=st.data())
@fuzz_settings(N_BENIGN)
def test_predictions_loader_ignores_formatting(base: Path, data: st.DataObject) -> None:
    table = data.draw(prediction_tables(), label="table")
    plain = read_in(base, "predictions.csv", render(table, Format())[0], read_predictions)
    fmt = draw_format(data, len(table.rows) + 1, blank_lines=False)  # a blank line is a blank row there
    fmt.pad = False
    styled = reformat(data, table)
    got = read_in(base, "predictions.csv", render(styled, fmt)[0], read_predictions)
    assert_same_frame(got[plain.columns.tolist()], plain)


@given(data=st.data())
@fuzz_settings(N_LINES)
def test_predictions_errors_name_the_line(base: Path, data: st.DataObject) -> None:
    table = data.draw(prediction_tables(), label="table")
    k = data.draw(st.integers(0, len(table.rows) - 1), label="bad row")
    bad = [("label", "zzz"), ("image_id", ""), ("source", " "), ("mel", "x"), ("mel", "inf"), ("nv", "-1"),
           ("bcc", "7"), *((("age", "-2"),) if "age" in table.header else ())]
    column, value = data.draw(st.sampled_from(bad), label="bad cell")
    table.rows[k][table.header.index(column)] = value
    styled = reformat(data, table)
    fmt = draw_format(data, len(table.rows) + 1, blank_lines=False)
    fmt.pad = False
    content, lines = render(styled, fmt)
    with tempfile.TemporaryDirectory(dir=base) as folder:
        path = Path(folder) / "predictions.csv"
        path.write_bytes(content)
        with pytest.raises(CrossdermError) as caught:
            read_predictions(path)
    expect_line(caught.value, path, lines[k])


# ---- the config: --set key=value and a YAML file -----------------------------------------------------------------


def _config_fields() -> tuple[list[str], list[str]]:
    from crossderm.train.augment import AugmentConfig
    from crossderm.train.config import ExperimentConfig

    return list(ExperimentConfig.model_fields), list(AugmentConfig.model_fields)


CONFIG_FIELDS, AUGMENT_FIELDS = _config_fields()
YAML_VALUES = [
    "1", "0", "-1", "2.5", "1e-3", "3e-3", ".inf", "-.inf", ".nan", "1e400", "99999999999999999999999", "0x10",
    "1_0", "0o7", "~", "null", "", "yes", "no", "on", "off", "true", "False", "[]", "{}", "[ham]", "[ham, isic]",
    "[ham, ham]", "[mel]", "[mel, mel]", "[akiec, bcc, bkl, df, mel, nv, vasc]", "{a: 1}", "none", "sog6", "cv",
    "loso", "bf16", "auto", "uniform", "site_balanced", "test_efficientnet", "'3e-3'", '"x"', "!!binary aGk=",
    "!!python/object:os.system", "&a [*a]", "*a", "[", "{", "'", "a: b", "- a", "|\n x", "\x00", "\ufeff1",
    "2**40", "4294967295", "4294967296", "2147483647", "0.5", "0.49", "1.0", "0.999",
]
config_keys = st.one_of(
    st.sampled_from(CONFIG_FIELDS),
    st.sampled_from(AUGMENT_FIELDS).map(lambda f: "augment." + f),
    st.sampled_from(["", " ", "epochs ", " lr", "augment.", "augment.x", "a.b", "typo", "augment.flips.x", "=="]),
    st.text(max_size=6),
)
config_values = st.one_of(st.sampled_from(YAML_VALUES), st.integers().map(str),
                          st.floats().map(repr), st.text(max_size=8))
overrides = st.lists(
    st.one_of(st.tuples(config_keys, config_values).map(lambda kv: f"{kv[0]}={kv[1]}"), st.text(max_size=10)),
    max_size=4,
)


def check_config(config: Any) -> None:
    from crossderm.train.config import ExperimentConfig

    assert isinstance(config, ExperimentConfig)
    for model in (config, config.augment):
        for name, value in model:
            if isinstance(value, float):
                assert math.isfinite(value), f"{name}={value}"
    # what training does with the seed: sklearn's and numpy's 32-bit RandomState(seed + fold)
    np.random.RandomState(config.seed + 99)
    assert len(set(config.held_out_classes)) == len(config.held_out_classes) < len(CLASSES)
    assert set(config.held_out_classes) <= set(CLASSES)
    assert len(set(config.train_sources)) == len(config.train_sources) > 0


@given(preset=st.sampled_from(["demo_a_ham_only", "demo_b_joint"]), items=overrides)
@fuzz_settings(N_CONFIG)
def test_config_overrides(preset: str, items: list[str]) -> None:
    from crossderm.train.config import load_config

    try:
        config = load_config(preset, items)
    except CrossdermError as exc:
        message = str(exc)
        assert message.splitlines() == [message], message
        assert message.startswith(("--set ", f"preset {preset}: invalid setting ")), message
        return
    check_config(config)


@given(data=st.data())
@fuzz_settings(N_BENIGN)
def test_config_file(base: Path, data: st.DataObject) -> None:
    from crossderm.train.config import load_config

    lines = ["name: fuzz", "model: test_efficientnet", "train_sources: [ham]", "test_sources: [ham, isic]"]
    lines += data.draw(st.lists(st.tuples(config_keys, config_values).map(lambda kv: f"{kv[0]}: {kv[1]}"),
                                max_size=3), label="settings")
    text = "\n".join(data.draw(st.permutations(lines), label="order")) + "\n"
    content = text.encode("utf-8", errors="replace")
    fmt = Format()
    content = mutate_bytes(data, content, fmt)
    config = read_or_refuse(base, "experiment.yaml", content, load_config, quote_content=False)
    if config is None:
        return
    check_config(config)


# ---- the image decoder -------------------------------------------------------------------------------------------

IMAGE_KINDS = {"missing", "unsupported", "too_large", "bad_shape", "corrupt"}
# (format, mode) pairs Pillow can write; the decoder must read every one of them.
WRITABLE = [("PNG", "RGB"), ("PNG", "RGBA"), ("PNG", "L"), ("PNG", "LA"), ("PNG", "P"), ("PNG", "1"),
            ("PNG", "I;16"), ("TIFF", "I"), ("JPEG", "RGB"), ("JPEG", "L"), ("JPEG", "CMYK"), ("BMP", "RGB"),
            ("BMP", "P"), ("TIFF", "RGB"), ("TIFF", "CMYK"), ("TIFF", "F"), ("TIFF", "I;16"), ("TIFF", "LA"),
            ("WEBP", "RGB"), ("WEBP", "RGBA")]


@dataclass
class Fuzzed:
    content: bytes
    width: int
    height: int
    intact: bool  # a valid file, not mutated


def _png_dims(content: bytes, width: int, height: int, fix_crc: bool) -> bytes:
    ihdr = content[12:16] + struct.pack(">II", width, height) + content[24:29]
    crc = struct.pack(">I", zlib.crc32(ihdr)) if fix_crc else content[29:33]
    return content[:12] + ihdr + crc + content[33:]


def _jpeg_dims(content: bytes, width: int, height: int) -> bytes:
    for marker in (b"\xff\xc0", b"\xff\xc2", b"\xff\xc1"):
        at = content.find(marker)
        if at >= 0:
            return content[: at + 5] + struct.pack(">HH", height, width) + content[at + 9:]
    return content


@st.composite
def images(draw: Any) -> Fuzzed:
    fmt, mode = draw(st.sampled_from(WRITABLE))
    wide = draw(st.booleans())
    width = draw(st.integers(1, 200 if wide else 48))
    height = draw(st.integers(1, 48))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if mode in ("I;16", "I", "F"):
        array = rng.integers(0, draw(st.sampled_from([1, 255, 65535])), (height, width)).astype(
            {"I;16": np.uint16, "I": np.int32, "F": np.float32}[mode])
        image = Image.fromarray(array)
    else:
        image = Image.fromarray(rng.integers(0, 256, (height, width, 4), dtype=np.uint8), mode="RGBA")
        image = image.convert(mode) if mode != "P" else image.convert("RGB").quantize(draw(st.integers(2, 256)))
    options: dict[str, Any] = {}
    if fmt == "JPEG":
        options = {"quality": draw(st.integers(5, 95)), "progressive": draw(st.booleans())}
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    content = buffer.getvalue()
    intact = True
    for _ in range(draw(st.integers(0, 3)) if draw(st.booleans()) else 0):
        kind = draw(st.sampled_from(["truncate", "flip", "insert", "dims", "garbage", "prefix"]))
        intact = False
        at = draw(st.integers(0, max(0, len(content) - 1)))
        if kind == "truncate":
            content = content[:at]
        elif kind == "flip" and content:
            content = content[:at] + bytes([content[at] ^ draw(st.integers(1, 255))]) + content[at + 1:]
        elif kind == "insert":
            content = content[:at] + draw(st.binary(min_size=1, max_size=16)) + content[at:]
        elif kind == "dims":
            new_w = draw(st.sampled_from([0, 1, 2, 7, 300, 4000, 65535, 2**31 - 1]) | st.integers(0, 2000))
            new_h = draw(st.sampled_from([0, 1, 3, 300, 4000, 65535]) | st.integers(0, 2000))
            if content.startswith(b"\x89PNG") and len(content) > 33:
                content = _png_dims(content, new_w, new_h, draw(st.booleans()))
            elif content.startswith(b"\xff\xd8"):
                content = _jpeg_dims(content, min(new_w, 65535), min(new_h, 65535))
        elif kind == "garbage":
            content = content + draw(st.binary(min_size=1, max_size=64))
        else:
            content = draw(st.sampled_from([b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF89a", b"BM", b"II*\x00",
                                            b"RIFF\x00\x00\x00\x00WEBP", b""])) + content[at:]
    return Fuzzed(content, width, height, intact)


@given(image=images(), size=st.sampled_from([8, 16, 32]), max_pixels=st.integers(1, 2_000_000),
       display_size=st.sampled_from([None, None, 40]), max_aspect=st.sampled_from([10.0, 10.0, 1.0, 4.0, 25.0]),
       max_bytes=st.sampled_from([None, None, 2**16, 2**20, 2**24]), as_stream=st.booleans())
@fuzz_settings(N_IMAGES)
def test_decode(image: Fuzzed, size: int, max_pixels: int, display_size: int | None, max_aspect: float,
                max_bytes: int | None, as_stream: bool) -> None:
    source: Any = io.BytesIO(image.content) if as_stream else image.content
    try:
        decoded = decode(source, size, max_pixels, display_size, max_aspect, max_bytes)
    except ImageError as exc:
        assert exc.kind in IMAGE_KINDS, exc.kind
        message = str(exc)
        assert message and message.splitlines() == [message], message
        within = (image.width * image.height <= max_pixels and max(image.width, image.height)
                  <= max_aspect * min(image.width, image.height) and max_bytes is None)
        assert not (image.intact and within), f"a valid image within the limits was refused: {exc.kind}: {message}"
        return
    header = decoded.header
    assert header.pixels <= max_pixels and header.aspect <= max_aspect
    if max_bytes is not None:
        assert decode_cost(header, size, display_size) <= max_bytes
    assert decoded.pixels.dtype == np.uint8 and decoded.pixels.shape == (size, size, 3)
    if display_size is None:
        assert decoded.display is None
    else:
        assert decoded.display.mode == "RGB" and decoded.display.size == (max(size, display_size),) * 2
    if image.intact:
        assert (header.width, header.height) == (image.width, image.height)


@given(image=images(), size=st.sampled_from([8, 16]))
@fuzz_settings(N_IMAGES // 5)
def test_decode_from_a_file_is_the_same(base: Path, image: Fuzzed, size: int) -> None:
    """predict and explain pass a path, serve the uploaded bytes: the same answer either way."""

    def outcome(source: Any) -> Any:
        try:
            return decode(source, size, 10**6).pixels.tobytes()
        except ImageError as exc:
            return exc.kind, str(exc)

    with tempfile.TemporaryDirectory(dir=base) as folder:
        path = Path(folder) / "image.bin"
        path.write_bytes(image.content)
        assert outcome(path) == outcome(image.content) == outcome(str(path))

"""Bad inputs to every command, table-driven: one parametrised test over :data:`CASES`.

Each case builds its bad input in a fresh folder, runs ``crossderm.cli.main`` in-process and checks the promise of
``docs/reliability.md``: the exit code (2 for usage and user errors; 1 for ``predict`` when only some images
failed), stderr exactly one line ``crossderm <command>: error: ...`` naming the file:line or the option, no
traceback anywhere, and no output created or changed: the relative paths and sha256 of every file under the case's
folder and under the shared fixtures are the same before and after (lock files, ``.<name>.lock``, excepted: they
belong to the locking, see ``crossderm.fsutil.exclusive_lock``). So a staging folder or temporary file left behind
fails the case too.

The shared fixtures (``synth_raw``, ``synth_prepared``, ``synth_run`` of tests/conftest.py, plus a tiny download,
a few image files and an ONNX export made once per module) are only ever read; a case that needs to damage one
copies it into its own folder first.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import shutil
import struct
import sys
import traceback
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from crossderm.cli import main
from crossderm.fsutil import exclusive_lock
from crossderm.labels import CLASSES

# ---- the shared, read-only fixtures ------------------------------------------------------------------------------

HAM_HEADER = "lesion_id,image_id,dx,dx_type,age,sex,localization"
ISIC_TRUTH_HEADER = "image,MEL,NV,BCC,AK,BKL,DF,VASC,SCC,UNK"
ISIC_META_HEADER = "image,age_approx,anatom_site_general,lesion_id,sex"
ISIC_COLUMN = {"mel": "MEL", "nv": "NV", "bcc": "BCC", "akiec": "AK", "bkl": "BKL", "df": "DF", "vasc": "VASC"}
LOCK_FILE = re.compile(r"^\..+\.lock$")


def _jpeg(seed: int, size: tuple[int, int] = (40, 30)) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _wide_png(width: int = 2000, height: int = 1) -> bytes:
    """A tiny valid PNG of an extreme aspect ratio (refused from its header)."""
    raw = b"".join(b"\x00" + b"\x80" * (3 * width) for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", zlib.compress(raw)) + \
        _png_chunk(b"IEND", b"")


def _write_mini(root: Path) -> None:
    """A tiny HAM10000 (14 lesions, 2 per class) and ISIC 2019 (14 rows) download with 40 x 30 JPEGs."""
    ham, isic = root / "HAM10000", root / "ISIC2019"
    (ham / "HAM10000_images_part_1").mkdir(parents=True)
    (isic / "ISIC_2019_Training_Input").mkdir(parents=True)
    ham_rows, truth_rows, meta_rows = [HAM_HEADER], [ISIC_TRUTH_HEADER], [ISIC_META_HEADER]
    for i in range(14):
        label = CLASSES[i % len(CLASSES)]
        image = f"ISIC_{24306 + i:07d}"
        ham_rows.append(f"HAM_{i:07d},{image},{label},histo,{40 + i},male,back")
        (ham / "HAM10000_images_part_1" / f"{image}.jpg").write_bytes(_jpeg(i))
        isic_image = f"ISIC_{i + 1:07d}"
        onehot = ",".join("1.0" if ISIC_COLUMN[label] == c else "0.0" for c in ISIC_TRUTH_HEADER.split(",")[1:])
        truth_rows.append(f"{isic_image},{onehot}")
        meta_rows.append(f"{isic_image},{50 + i},anterior torso,BCN_{i:07d},female")
        (isic / "ISIC_2019_Training_Input" / f"{isic_image}.jpg").write_bytes(_jpeg(100 + i))
    (ham / "HAM10000_metadata.csv").write_text("\n".join(ham_rows) + "\n")
    (isic / "ISIC_2019_Training_GroundTruth.csv").write_text("\n".join(truth_rows) + "\n")
    (isic / "ISIC_2019_Training_Metadata.csv").write_text("\n".join(meta_rows) + "\n")


@dataclass(frozen=True)
class Fixtures:
    root: Path
    raw: Path
    data: Path
    run: Path
    mini: Path
    images: Path
    onnx: Path
    shared: tuple[Path, ...]


def snapshot(roots: tuple[Path, ...] | list[Path]) -> dict[str, str]:
    """Relative path -> sha256 (or "dir") of everything under ``roots``; lock files are left out."""
    found: dict[str, str] = {}
    for index, root in enumerate(roots):
        if not root.exists():
            continue
        for folder, dirs, files in os.walk(root):
            dirs.sort()
            for name in dirs:
                found[f"{index}/{Path(folder, name).relative_to(root)}/"] = "dir"
            for name in files:
                if LOCK_FILE.match(name):
                    continue
                path = Path(folder, name)
                found[f"{index}/{path.relative_to(root)}"] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


@pytest.fixture(scope="module")
def fx(synth_raw: Path, synth_prepared: Path, synth_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Fixtures:
    root = tmp_path_factory.mktemp("bad_inputs")
    mini, images = root / "mini", root / "images"
    _write_mini(mini)
    images.mkdir()
    (images / "good.jpg").write_bytes(_jpeg(7, (64, 48)))
    (images / "good2.jpg").write_bytes(_jpeg(8, (64, 48)))
    (images / "truncated.jpg").write_bytes(_jpeg(9, (64, 48))[:300])
    (images / "text.jpg").write_text("hello, I am text\n")
    (images / "empty.jpg").write_bytes(b"")
    (images / "wide.png").write_bytes(_wide_png())
    (images / "notes").mkdir()
    (images / "notes" / "readme.txt").write_text("no images in here\n")
    from crossderm.predict.ensemble import Ensemble
    from crossderm.predict.onnx_backend import export_onnx

    onnx = root / "onnx" / "model.onnx"
    onnx.parent.mkdir()
    export_onnx(Ensemble(synth_run, [0]), onnx, 17)
    shared = (synth_raw, synth_prepared, synth_run, root)
    return Fixtures(root, synth_raw, synth_prepared, synth_run, mini, images, onnx, shared)


# ---- one case's workspace --------------------------------------------------------------------------------------


class Work:
    """A case's own folder and the paths its argv names (``{name}`` placeholders)."""

    def __init__(self, fx: Fixtures, tmp: Path) -> None:
        self.fx, self.tmp = fx, tmp
        (tmp / "afile").write_text("a plain file, not a folder\n")
        self.vars: dict[str, Path | str] = {
            "tmp": tmp, "out": tmp / "out", "file": tmp / "afile", "under": tmp / "afile" / "out",
            "proc": "/proc/crossderm-reliability/out", "sys": "/sys/crossderm-reliability/out",
            "data": fx.data, "run": fx.run, "raw": fx.raw, "ham": fx.mini / "HAM10000", "isic": fx.mini / "ISIC2019",
            "img": fx.images, "good": fx.images / "good.jpg", "onnx": fx.onnx,
        }

    def __getitem__(self, key: str) -> Path:
        return Path(self.vars[key])

    def copy(self, key: str, name: str | None = None) -> Path:
        """Copy a shared input into this case's folder; argv's ``{key}`` then names the copy."""
        target = self.tmp / (name or key)
        source = self[key]
        if source.is_dir():
            shutil.copytree(source, target)
        else:
            shutil.copy2(source, target)
        self.vars[key] = target
        return target

    def mini(self) -> None:
        """Own copies of the tiny HAM10000 and ISIC 2019 downloads."""
        shutil.copytree(self.fx.mini, self.tmp / "in")
        self.vars["ham"], self.vars["isic"] = self.tmp / "in" / "HAM10000", self.tmp / "in" / "ISIC2019"

    def write(self, name: str, content: str | bytes) -> Path:
        path = self.tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
        return path


def lines_of(path: Path) -> list[str]:
    return path.read_text().splitlines()


def set_lines(path: Path, lines: list[str], newline: str = "\n", bom: bool = False) -> None:
    path.write_bytes(("\ufeff" if bom else "").encode() + (newline.join(lines) + newline).encode())


def edit_cell(path: Path, line: int, column: str, value: str) -> None:
    """Set ``column`` of file line ``line`` (1 = header) of a simple CSV."""
    rows = lines_of(path)
    header = rows[0].split(",")
    cells = rows[line - 1].split(",")
    cells[header.index(column)] = value
    rows[line - 1] = ",".join(cells)
    set_lines(path, rows)


def with_cell(rows: list[str], index: int, column: str, value: str) -> str:
    """Row ``index`` of ``rows`` (0 = header) with ``column`` set to ``value``."""
    cells = rows[index].split(",")
    cells[rows[0].split(",").index(column)] = value
    return ",".join(cells)


def edit_json(path: Path, change: Callable[[dict], object]) -> None:
    """Change the JSON object in place (``change``'s return value, e.g. what ``dict.pop`` gives, is ignored)."""
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


# ---- the cases ---------------------------------------------------------------------------------------------------

Setup = Callable[[Work], object]


@dataclass(frozen=True)
class Case:
    id: str
    family: str
    argv: tuple[str, ...]
    expect: tuple[str, ...]  # substrings of the message: the file(:line) or option it names, and the reason
    setup: Setup | None = None
    code: int = 2
    lock: str | None = None  # a path ({placeholders}) whose writer lock the test holds while the command runs
    failed_images: int = 0  # predict: images that fail while the others are predicted (exit 1, output written)
    env: dict[str, str] = field(default_factory=dict)

    @property
    def command(self) -> str:
        return self.argv[0]


CASES: list[Case] = []


def case(family: str, id: str, argv: str | list[str], *expect: str, setup: Setup | None = None, **options) -> None:
    args = tuple(argv.split()) if isinstance(argv, str) else tuple(argv)
    CASES.append(Case(f"{args[0]}-{id}", family, args, tuple(expect), setup, **options))


def chain(*steps: Setup) -> Setup:
    def run(w: Work) -> None:
        for step in steps:
            step(w)

    return run


# Families (docs/reliability.md counts them per command).
INPUT = "input file missing/empty/unreadable/binary/wrong encoding"
CSV = "CSV content"
OPTION = "option out of range or ill-typed"
SET = "--set"
OUTPUT = "output path"
RUN = "run folder"
DATA = "DATA_DIR"
APART = "output apart from inputs"
LOCK = "concurrency"
IMAGE = "image file"

T1 = "--threads 1"

# download (nothing reaches the network: the URL below refuses connections, so reaching it fails the case)
OFFLINE = {"CROSSDERM_HAM10000_URL": "http://127.0.0.1:9/", "CROSSDERM_ISIC2019_URL": "http://127.0.0.1:9/"}
case(OPTION, "unknown-dataset", "download ham20000 --out {out}", "argument DATASET", "ham20000", env=OFFLINE)
case(OPTION, "retries-negative", "download ham10000 --out {out} --retries -1", "--retries", env=OFFLINE)
case(OUTPUT, "out-under-file", "download ham10000 --out {under}", "--out", "afile", env=OFFLINE)
case(OUTPUT, "out-proc", "download ham10000 --out {proc}", "--out", "/proc", env=OFFLINE)
case(OUTPUT, "out-is-file", "download ham10000 --out {file}", "--out", "afile", env=OFFLINE)
case(OUTPUT, "target-not-ours", "download ham10000 --out {tmp}", "HAM10000", "not written by crossderm download",
     setup=lambda w: w.write("HAM10000/mine.txt", "somebody's own files\n"), env=OFFLINE)
case(INPUT, "marker-garbage", "download ham10000 --out {tmp}", ".crossderm-download.json",
     setup=lambda w: w.write("HAM10000/.crossderm-download.json", b"\x00\xffnot json"), env=OFFLINE)

# synth
case(OPTION, "ham-lesions-3", "synth --out {out} --ham-lesions 3", "HAM")
case(OPTION, "isic-lesions-0", "synth --out {out} --isic-lesions 0", "--isic-lesions", "whole number >= 1")
case(OPTION, "image-scale-0", "synth --out {out} --image-scale 0", "--image-scale", "finite number > 0")
case(OPTION, "image-scale-huge", "synth --out {out} --image-scale 1000", "image scale 1000")
case(OPTION, "seed-negative", "synth --out {out} --seed -1", "seed")
case(OPTION, "min-per-class-negative", "synth --out {out} --min-per-class -1", "--min-per-class")
case(OPTION, "seed-not-int", "synth --out {out} --seed one", "--seed", "'one'")
case(OUTPUT, "out-is-file", "synth --out {file} --ham-lesions 7 --isic-lesions 14", "--out", "afile")
case(OUTPUT, "out-under-file", "synth --out {under} --ham-lesions 7 --isic-lesions 14", "--out", "afile")
case(OUTPUT, "out-proc", "synth --out {proc} --ham-lesions 7 --isic-lesions 14", "--out", "/proc")
case(OUTPUT, "out-not-empty", "synth --out {tmp} --ham-lesions 7 --isic-lesions 14", "exists and is not empty",
     "--overwrite")

# prepare: options and inputs, on the tiny download
P = ["--folds", "2", "--image-size", "16", "--workers", "1"]
HAM = ["prepare", "--ham", "{ham}", "--out", "{out}", *P]
ISIC = ["prepare", "--isic", "{isic}", "--out", "{out}", *P]
BOTH = ["prepare", "--ham", "{ham}", "--isic", "{isic}", "--out", "{out}", *P]


def ham_meta(w: Work) -> Path:
    return w["ham"] / "HAM10000_metadata.csv"


def truth(w: Work) -> Path:
    return w["isic"] / "ISIC_2019_Training_GroundTruth.csv"


def isic_meta(w: Work) -> Path:
    return w["isic"] / "ISIC_2019_Training_Metadata.csv"


def in_mini(change: Callable[[Work], object]) -> Setup:
    return chain(Work.mini, change)


def ham_cell(line: int, column: str, value: str) -> Setup:
    return in_mini(lambda w: edit_cell(ham_meta(w), line, column, value))


def truth_cell(line: int, column: str, value: str) -> Setup:
    return in_mini(lambda w: edit_cell(truth(w), line, column, value))


def ham_lines(change: Callable[[list[str]], list[str]], **style) -> Setup:
    return in_mini(lambda w: set_lines(ham_meta(w), change(lines_of(ham_meta(w))), **style))


def dup_line(source: int) -> Callable[[list[str]], list[str]]:
    return lambda rows: [*rows, rows[source - 1]]


case(OPTION, "folds-1", [*HAM, "--folds", "1"], "--folds", "whole number >= 2")
case(OPTION, "folds-0", [*HAM, "--folds", "0"], "--folds", "whole number >= 2")
case(OPTION, "folds-not-int", [*HAM, "--folds", "two"], "--folds", "'two'")
case(OPTION, "folds-more-than-lesions", [*HAM, "--folds", "20"], "'ham'", "fewer than 20 folds")
case(OPTION, "image-size-0", [*HAM, "--image-size", "0"], "--image-size", "0")
case(OPTION, "image-size-negative", [*HAM, "--image-size", "-5"], "--image-size", "-5")
case(OPTION, "image-size-huge", [*HAM, "--image-size", "99999"], "--image-size", "99999")
case(OPTION, "workers-negative", [*HAM, "--workers", "-1"], "--workers", "-1")
case(OPTION, "seed-negative", [*HAM, "--seed", "-1"], "--seed", "-1")
case(OPTION, "max-hamming-negative", [*HAM, "--max-hamming", "-1"], "--max-hamming", "-1")
case(OPTION, "min-correlation-2", [*HAM, "--min-correlation", "2"], "--min-correlation", "2")
case(OPTION, "color-constancy-unknown", [*HAM, "--color-constancy", "grey"], "--color-constancy", "'grey'")
case(OPTION, "no-source", "prepare --out {out}", "--ham")
case(OPTION, "ham-metadata-without-ham", "prepare --isic {isic} --ham-metadata {file} --out {out}",
     "--ham-metadata needs --ham")
case(OPTION, "source-bad-name", [*HAM, "--source", "My Clinic={tmp}"], "--source 'My Clinic={tmp}'")
case(OPTION, "source-official-name", [*HAM, "--source", "ham={tmp}"], "--source 'ham={tmp}'")
case(INPUT, "ham-folder-missing", "prepare --ham {tmp}/nowhere --out {out}", "nowhere", "HAM10000_metadata.csv")
case(INPUT, "ham-metadata-empty", HAM, "HAM10000_metadata.csv", setup=in_mini(lambda w: ham_meta(w).write_text("")))
case(INPUT, "ham-metadata-header-only", HAM, "HAM10000_metadata.csv", "no data rows",
     setup=in_mini(lambda w: ham_meta(w).write_text(HAM_HEADER + "\n")))
case(INPUT, "ham-metadata-binary", HAM, "HAM10000_metadata.csv",
     setup=in_mini(lambda w: ham_meta(w).write_bytes(bytes(range(256)) * 8)))
case(INPUT, "ham-metadata-utf16", HAM, "HAM10000_metadata.csv",
     setup=in_mini(lambda w: ham_meta(w).write_bytes(ham_meta(w).read_text().encode("utf-16"))))
case(INPUT, "ham-metadata-latin1", HAM, "HAM10000_metadata.csv",
     setup=in_mini(lambda w: ham_meta(w).write_bytes(ham_meta(w).read_text().replace("back", "épaule")
                                                     .encode("latin-1"))))
case(INPUT, "ham-metadata-is-folder", "prepare --ham {ham} --ham-metadata {tmp} --out {out}",
     "HAM10000 metadata file", "{tmp}")
case(INPUT, "isic-truth-missing", ISIC, "ISIC_2019_Training_GroundTruth.csv", "not found",
     setup=in_mini(lambda w: truth(w).unlink()))
case(INPUT, "isic-metadata-missing", ISIC, "ISIC_2019_Training_Metadata.csv", "not found",
     setup=in_mini(lambda w: isic_meta(w).unlink()))
case(INPUT, "isic-truth-binary", ISIC, "ISIC_2019_Training_GroundTruth.csv",
     setup=in_mini(lambda w: truth(w).write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)))
case(CSV, "ham-missing-dx", HAM, "HAM10000_metadata.csv:1", "missing column(s) dx",
     setup=ham_lines(lambda rows: [r.replace(",dx,", ",diagnosis,") for r in rows]))
case(CSV, "ham-junk-header", HAM, "HAM10000_metadata.csv:2", "cannot parse CSV",
     setup=ham_lines(lambda rows: ["HAM10000 metadata, exported 2024-01-01", *rows]))
case(CSV, "ham-duplicate-id", HAM, "HAM10000_metadata.csv:16", "duplicate image_id", setup=ham_lines(dup_line(3)))
case(CSV, "ham-blank-id", HAM, "HAM10000_metadata.csv:4", "blank image_id", setup=ham_cell(4, "image_id", ""))
case(CSV, "ham-unknown-dx", HAM, "HAM10000_metadata.csv:5", "unknown dx 'melanoma'",
     setup=ham_cell(5, "dx", "melanoma"))
case(CSV, "ham-bom-crlf-unknown-dx", HAM, "HAM10000_metadata.csv:3", "unknown dx 'MEL'",
     setup=in_mini(lambda w: (edit_cell(ham_meta(w), 3, "dx", "MEL"),
                              set_lines(ham_meta(w), lines_of(ham_meta(w)), "\r\n", bom=True))))
case(CSV, "ham-bad-age", HAM, "HAM10000_metadata.csv:6", "age", setup=ham_cell(6, "age", "forty"))
case(CSV, "ham-ragged-row", HAM, "HAM10000_metadata.csv", "line 4",
     setup=ham_lines(lambda rows: [*rows[:3], rows[3] + ",extra,cells", *rows[4:]]))
case(CSV, "ham-unclosed-quote", HAM, "HAM10000_metadata.csv",
     setup=ham_lines(lambda rows: [*rows[:3], rows[3].replace("histo", '"histo'), *rows[4:]]))
case(CSV, "isic-two-labels", ISIC, "ISIC_2019_Training_GroundTruth.csv:3", "2 labels",
     setup=truth_cell(3, "UNK", "1.0"))
case(CSV, "isic-no-label", ISIC, "ISIC_2019_Training_GroundTruth.csv:2", "no label",
     setup=truth_cell(2, "AK", "0.0"))  # line 2 is the first image: akiec, one-hot AK
case(CSV, "isic-nan-onehot", ISIC, "ISIC_2019_Training_GroundTruth.csv:4", "NV='NaN'",
     setup=truth_cell(4, "NV", "NaN"))
case(CSV, "isic-negative-onehot", ISIC, "ISIC_2019_Training_GroundTruth.csv:5", "BCC='-1'",
     setup=truth_cell(5, "BCC", "-1"))
case(CSV, "isic-onehot-2", ISIC, "ISIC_2019_Training_GroundTruth.csv:6", "AK='2'", setup=truth_cell(6, "AK", "2"))
case(CSV, "isic-inf-onehot", ISIC, "ISIC_2019_Training_GroundTruth.csv:7", "BKL='inf'",
     setup=truth_cell(7, "BKL", "inf"))
case(CSV, "isic-missing-unk", ISIC, "ISIC_2019_Training_GroundTruth.csv:1", "missing column(s) UNK",
     setup=in_mini(lambda w: set_lines(truth(w), [r.rsplit(",", 1)[0] for r in lines_of(truth(w))])))
case(CSV, "isic-duplicate-image", ISIC, "ISIC_2019_Training_GroundTruth.csv:16", "duplicate image",
     setup=in_mini(lambda w: set_lines(truth(w), dup_line(2)(lines_of(truth(w))))))
case(CSV, "isic-blank-image", ISIC, "ISIC_2019_Training_GroundTruth.csv:9", "blank image",
     setup=truth_cell(9, "image", ""))
case(CSV, "isic-meta-missing-lesion", ISIC, "ISIC_2019_Training_Metadata.csv:1", "missing column(s) lesion_id",
     setup=in_mini(lambda w: set_lines(isic_meta(w), [r.replace("lesion_id", "lesion") for r in
                                                      lines_of(isic_meta(w))])))
case(CSV, "isic-image-without-metadata", ISIC, "ISIC_2019_Training_GroundTruth.csv:8", "no row in",
     setup=in_mini(lambda w: set_lines(isic_meta(w), [r for r in lines_of(isic_meta(w)) if "ISIC_0000007" not in r])))
case(CSV, "isic-meta-duplicate", ISIC, "ISIC_2019_Training_Metadata.csv:16", "duplicate image",
     setup=in_mini(lambda w: set_lines(isic_meta(w), dup_line(2)(lines_of(isic_meta(w))))))
case(CSV, "label-map-unknown-column", [*ISIC, "--label-map", "{tmp}/map.yaml"], "map.yaml", "'FOO'",
     setup=lambda w: w.write("map.yaml", "FOO: mel\n"))
case(CSV, "label-map-unknown-class", [*ISIC, "--label-map", "{tmp}/map.yaml"], "map.yaml", "'melanoma'",
     setup=lambda w: w.write("map.yaml", "MEL: melanoma\n"))
case(CSV, "label-map-not-mapping", [*ISIC, "--label-map", "{tmp}/map.yaml"], "map.yaml", "mapping",
     setup=lambda w: w.write("map.yaml", "- MEL\n- NV\n"))
case(INPUT, "label-map-invalid-yaml", [*ISIC, "--label-map", "{tmp}/map.yaml"], "map.yaml", "cannot read",
     setup=lambda w: w.write("map.yaml", "MEL: [mel\n"))
case(INPUT, "label-map-missing", [*ISIC, "--label-map", "{tmp}/none.yaml"], "none.yaml", "cannot read")
case(CSV, "sites-missing-columns", [*BOTH, "--sites", "{tmp}/sites.csv"], "sites.csv:1", "site",
     setup=lambda w: w.write("sites.csv", "name,place\nISIC_0000001,bcn\n"))
case(CSV, "sites-blank-site", [*BOTH, "--sites", "{tmp}/sites.csv"], "sites.csv:3", "site",
     setup=lambda w: w.write("sites.csv", "image,site\nISIC_0000001,bcn\nISIC_0000002,\n"))
case(CSV, "sites-two-sites", [*BOTH, "--sites", "{tmp}/sites.csv"], "sites.csv", "two different sites",
     setup=lambda w: w.write("sites.csv", "image,site\nISIC_0000001,bcn\nISIC_0000001,msk\n"))
case(CSV, "sites-bad-center", [*BOTH, "--sites", "{tmp}/sites.csv"], "sites.csv:2", "center",
     setup=lambda w: w.write("sites.csv", "image,center\nISIC_0000001,99\n"))
case(INPUT, "sites-utf16", [*BOTH, "--sites", "{tmp}/sites.csv"], "sites.csv",
     setup=lambda w: w.write("sites.csv", "image,site\nISIC_0000001,bcn\n".encode("utf-16")))
SPLITS = [*BOTH, "--splits", "{tmp}/splits.csv"]
SPLIT_HEADER = "source,image_id,lesion_group,label,fold"


def split_rows(w: Work) -> list[str]:
    rows = [SPLIT_HEADER]
    for i, line in enumerate(lines_of(ham_meta(w))[1:]):
        lesion, image, dx = line.split(",")[:3]
        rows.append(f"ham,{image},ham:{lesion},{dx},{i % 2}")
    for i, line in enumerate(lines_of(truth(w))[1:]):
        image = line.split(",")[0]
        label = CLASSES[i % len(CLASSES)]
        rows.append(f"isic,{image},isic:BCN_{i:07d},{label},{i % 2}")
    return rows


def splits(change: Callable[[list[str]], list[str]]) -> Setup:
    return lambda w: set_lines(w.tmp / "splits.csv", change(split_rows(w)))


case(CSV, "splits-missing-fold", SPLITS, "splits.csv:1", "missing column(s) fold",
     setup=splits(lambda rows: [r.rsplit(",", 1)[0] for r in rows]))
case(CSV, "splits-missing-image", SPLITS, "splits.csv", "not in the split file", setup=splits(lambda r: r[:-1]))
case(CSV, "splits-fold-not-number", SPLITS, "splits.csv:3", "fold", setup=splits(
    lambda rows: [*rows[:2], rows[2].rsplit(",", 1)[0] + ",two", *rows[3:]]))
case(CSV, "splits-duplicate-row", SPLITS, "splits.csv:30", "ISIC_0024306",
     setup=splits(lambda rows: [*rows, rows[1]]))
case(CSV, "splits-lesion-two-folds", SPLITS, "splits.csv", "lesion",
     setup=splits(lambda rows: [*rows[:-1], rows[-1].replace("isic:BCN_0000013", "isic:BCN_0000012")]))
case(INPUT, "splits-utf16", SPLITS, "splits.csv",
     setup=lambda w: w.write("splits.csv", "\n".join(split_rows(w)).encode("utf-16")))
case(INPUT, "splits-binary", SPLITS, "splits.csv", setup=lambda w: w.write("splits.csv", bytes(range(256)) * 4))
SOURCE = [*HAM, "--source", "clinic={tmp}/clinic"]
case(INPUT, "source-no-labels", SOURCE, "labels.csv", "not found", setup=lambda w: (w.tmp / "clinic").mkdir())
case(CSV, "source-unknown-label", SOURCE, "labels.csv:3", "'melanoma'",
     setup=lambda w: w.write("clinic/labels.csv", "image,label\na.jpg,mel\nb.jpg,melanoma\n"))
case(CSV, "source-duplicate-image", SOURCE, "labels.csv:3", "duplicate image 'a.jpg'",
     setup=lambda w: w.write("clinic/labels.csv", "image,label\na.jpg,mel\na.jpg,nv\n"))
case(CSV, "source-missing-label", SOURCE, "labels.csv:1", "missing column(s) label",
     setup=lambda w: w.write("clinic/labels.csv", "image,dx\na.jpg,mel\n"))
case(CSV, "lesion-in-two-sources", SOURCE, "lesion 'HAM_0000001'", "sources",
     setup=lambda w: (w.write("clinic/labels.csv", "image,label,lesion_id\na.jpg,mel,HAM_0000001\n"),
                      w.write("clinic/a.jpg", _jpeg(1))))
case(IMAGE, "truncated-image", HAM, "ISIC_0024309.jpg", "cannot decode image",
     setup=in_mini(lambda w: truncate(w["ham"] / "HAM10000_images_part_1" / "ISIC_0024309.jpg", 0.4)))
case(IMAGE, "text-as-image", HAM, "ISIC_0024310.jpg", "cannot decode image",
     setup=in_mini(lambda w: (w["ham"] / "HAM10000_images_part_1" / "ISIC_0024310.jpg").write_text("text\n")))
case(IMAGE, "empty-image", HAM, "ISIC_0024311.jpg", "cannot decode image",
     setup=in_mini(lambda w: (w["ham"] / "HAM10000_images_part_1" / "ISIC_0024311.jpg").write_bytes(b"")))
case(IMAGE, "wide-image", HAM, "ISIC_0024312", "aspect ratio",
     setup=in_mini(lambda w: ((w["ham"] / "HAM10000_images_part_1" / "ISIC_0024312.jpg").unlink(),
                              (w["ham"] / "HAM10000_images_part_1" / "ISIC_0024312.png").write_bytes(_wide_png()))))
case(IMAGE, "missing-images", HAM, "2 of 14 labelled images have no image file", "--allow-missing",
     setup=in_mini(lambda w: [(w["ham"] / "HAM10000_images_part_1" / f"ISIC_{n:07d}.jpg").unlink()
                              for n in (24307, 24308)]))
case(IMAGE, "same-image-twice", HAM, "ISIC_0024313", "also found at",
     setup=in_mini(lambda w: w.write("in/HAM10000/extra/ISIC_0024313.jpg", _jpeg(3))))
case(OUTPUT, "out-is-file", [*HAM[:3], "--out", "{file}", *P], "--out", "afile", "is a file")
case(OUTPUT, "out-under-file", [*HAM[:3], "--out", "{under}", *P], "--out", "afile")
case(OUTPUT, "out-proc", [*HAM[:3], "--out", "{proc}", *P], "--out", "/proc")
case(OUTPUT, "out-sys", [*HAM[:3], "--out", "{sys}", *P], "--out", "/sys")
case(OUTPUT, "out-not-empty", [*HAM[:3], "--out", "{tmp}", *P], "exists and is not empty", "--overwrite")
case(APART, "out-is-ham", ["prepare", "--ham", "{ham}", "--out", "{ham}", "--overwrite", *P], "--out", "HAM10000",
     "delete the input", setup=Work.mini)
case(APART, "out-is-parent-of-ham", ["prepare", "--ham", "{ham}", "--out", "{tmp}/in", "--overwrite", *P],
     "--out", "delete the input", setup=Work.mini)
case(APART, "out-is-isic", ["prepare", "--isic", "{isic}", "--out", "{isic}", "--overwrite", *P], "--out",
     "ISIC2019", "delete the input", setup=Work.mini)
case(APART, "out-holds-label-map", [*HAM[:3], "--out", "{tmp}", "--label-map", "{tmp}/map.yaml", "--overwrite", *P],
     "--out", "map.yaml", "delete the input", setup=lambda w: w.write("map.yaml", "SCC: null\n"))
case(APART, "out-holds-source", [*HAM[:3], "--source", "clinic={tmp}/x/clinic", "--out", "{tmp}/x", "--overwrite",
                                 *P], "--out", "clinic", "delete the input",
     setup=lambda w: w.write("x/clinic/labels.csv", "image,label\na.jpg,mel\n"))
case(DATA, "add-cache-bad-manifest", "prepare --out {data} --color-constancy sog6", "manifest.csv:3", "label",
     setup=lambda w: (w.copy("data"), edit_cell(w["data"] / "manifest.csv", 3, "label", "melanoma")))
case(LOCK, "out-locked", HAM, "{out}", "in use by", "reliability test", lock="{out}")

# cv: --set, options, outputs, DATA_DIR, run folders, locks
CV = ["cv", "--config", "demo_b_joint", "--data", "{data}", "--out", "{out}", "--threads", "1", "--no-tensorboard",
      "--bootstrap", "20"]


def cv_set(id: str, item: str, *expect: str) -> None:
    case(SET, f"set-{id}", [*CV, f"--set={item}"], *expect)


cv_set("unknown-key", "epoch=3", "epoch", "Extra inputs")
cv_set("epochs-text", "epochs=abc", "epochs", "integer")
cv_set("epochs-negative", "epochs=-1", "epochs", "greater than or equal to 1")
cv_set("epochs-fraction", "epochs=1.5", "epochs")
cv_set("epochs-bool", "epochs=true", "epochs", "boolean")
cv_set("epochs-empty", "epochs=", "epochs")
cv_set("epochs-list", "epochs=[1, 2]", "epochs")
cv_set("lr-zero", "lr=0", "lr", "greater than 0")
cv_set("lr-text", "lr=fast", "lr")
cv_set("lr-inf", "lr=.inf", "lr")
cv_set("lr-nan", "lr=.nan", "lr")
cv_set("batch-size-zero", "batch_size=0", "batch_size")
cv_set("tta-7", "tta=7", "tta", "less than or equal to 4")
cv_set("sampler-unknown", "sampler=balanced", "sampler")
cv_set("amp-unknown", "amp=maybe", "amp")
cv_set("nested-unknown", "augment.blur=0.5", "augment.blur", "Extra inputs")
cv_set("nested-out-of-range", "augment.min_area=2", "augment.min_area")
cv_set("nested-not-augment", "model.depth=3", "model.depth=3", "only augment.<setting> may be nested")
cv_set("nested-empty-inner", "augment.=1", "augment.=1", "only augment.<setting> may be nested")
cv_set("no-equals", "epochs", "'epochs'", "expected key=value")
cv_set("empty-key", "=3", "'=3'", "expected key=value")
cv_set("invalid-yaml", "epochs=[1", "'epochs=[1'", "not valid YAML")
cv_set("train-sources-empty", "train_sources=[]", "train_sources")
cv_set("train-sources-unknown", "train_sources=[clinic]", "clinic")
cv_set("held-out-every-class", f"held_out_classes=[{','.join(CLASSES)}]", "held_out_classes")
cv_set("held-out-unknown-class", "held_out_classes=[melanoma]", "held_out_classes")
cv_set("val-fraction-0.6", "val_fraction=0.6", "val_fraction")
cv_set("seed-negative", "seed=-1", "seed")
cv_set("label-smoothing-1", "label_smoothing=1", "label_smoothing")
cv_set("patience-0", "patience=0", "patience")
cv_set("name-empty", "name=", "name")
cv_set("model-unknown", "model=resnet_does_not_exist", "model", "resnet_does_not_exist")
cv_set("compile-int", "compile=1", "compile")
cv_set("external-also-trained", "external_sources=[ham]", "external")
cv_set("protocol-unknown", "protocol=holdout", "protocol")
case(SET, "set-loso-too-few-sites", [*CV, "--set=protocol=loso", "--set=min_site_images=100000"], "loso", "sites")
cv_set("color-constancy-no-cache", "color_constancy=sog6", "sog6", "cache")
case(OPTION, "tta-7", [*CV, "--tta", "7"], "--tta", "7")
case(OPTION, "tta-0", [*CV, "--tta", "0"], "--tta", "0")
case(OPTION, "fold-9", [*CV, "--fold", "9"], "fold 9")
case(OPTION, "fold-negative", [*CV, "--fold", "-1"], "fold -1")
case(OPTION, "fold-not-int", [*CV, "--fold", "first"], "--fold", "'first'")
case(OPTION, "threads-negative", [*CV, "--threads", "-1"], "--threads", "-1")
case(OPTION, "bootstrap-0", [*CV, "--bootstrap", "0"], "--bootstrap", "0")
case(OPTION, "device-unknown", [*CV, "--device", "tpu"], "--device tpu")
case(OPTION, "missing-config", "cv --data {data} --out {out}", "--config")
case(OPTION, "config-unknown-preset", [*CV[:2], "paper_c", *CV[3:]], "paper_c", "presets")
case(INPUT, "config-invalid-yaml", ["cv", "--config", "{tmp}/c.yaml", *CV[3:]], "c.yaml", "invalid YAML",
     setup=lambda w: w.write("c.yaml", "name: [x\n"))
case(INPUT, "config-not-mapping", ["cv", "--config", "{tmp}/c.yaml", *CV[3:]], "c.yaml", "mapping",
     setup=lambda w: w.write("c.yaml", "- name\n- model\n"))
case(INPUT, "config-binary", ["cv", "--config", "{tmp}/c.yaml", *CV[3:]], "c.yaml",
     setup=lambda w: w.write("c.yaml", bytes(range(256))))
case(OPTION, "pretrained-path-missing", [*CV, "--pretrained-path", "{tmp}/w.safetensors"], "--pretrained-path",
     "w.safetensors")
case(OUTPUT, "out-is-file", [*CV[:5], "--out", "{file}", *CV[7:]], "--out", "afile")
case(OUTPUT, "out-under-file", [*CV[:5], "--out", "{under}", *CV[7:]], "--out", "afile")
case(OUTPUT, "out-proc", [*CV[:5], "--out", "{proc}", *CV[7:]], "--out", "/proc")


def data_copy(change: Callable[[Path], object]) -> Setup:
    def run(w: Work) -> None:
        change(w.copy("data"))

    return run


def manifest_cell(line: int, column: str, value: str) -> Setup:
    return data_copy(lambda d: edit_cell(d / "manifest.csv", line, column, value))


def manifest_lines(change: Callable[[list[str]], list[str]]) -> Setup:
    return data_copy(lambda d: set_lines(d / "manifest.csv", change(lines_of(d / "manifest.csv"))))


def first_with(column: str, value: str, data: Path, skip: int = 0) -> int:
    rows = lines_of(data / "manifest.csv")
    index = rows[0].split(",").index(column)
    return [i + 1 for i, r in enumerate(rows) if i and r.split(",")[index] == value][skip]


def lesion_in_two_folds(d: Path) -> None:
    """The first lesion with two images gets its second image moved to another fold."""
    rows = lines_of(d / "manifest.csv")
    header = rows[0].split(",")
    group, fold = header.index("lesion_group"), header.index("fold")
    seen: dict[str, int] = {}
    for i, row in enumerate(rows[1:], start=1):
        cells = row.split(",")
        if cells[group] in seen:
            cells[fold] = str((int(cells[fold]) + 1) % 5)
            rows[i] = ",".join(cells)
            break
        seen[cells[group]] = i
    set_lines(d / "manifest.csv", rows)


def lesion_in_two_sources(d: Path) -> None:
    """An ISIC row takes the lesion id of a HAM row (and its group, so only the cross-source check can see it)."""
    rows = lines_of(d / "manifest.csv")
    header = rows[0].split(",")
    source, lesion, group, fold = (header.index(c) for c in ("source", "lesion_id", "lesion_group", "fold"))
    ham = next(r.split(",") for r in rows[1:] if r.split(",")[source] == "ham")
    for i, row in enumerate(rows[1:], start=1):
        cells = row.split(",")
        if cells[source] == "isic":
            cells[lesion], cells[group], cells[fold] = ham[lesion], f"isic:{ham[lesion]}", cells[fold]
            rows[i] = ",".join(cells)
            break
    set_lines(d / "manifest.csv", rows)


case(DATA, "data-missing", [*CV[:3], "--data", "{tmp}/nodata", *CV[5:]], "nodata", "manifest.csv: not found")
case(DATA, "manifest-empty", CV, "manifest.csv", setup=data_copy(lambda d: (d / "manifest.csv").write_text("")))
case(DATA, "manifest-header-only", CV, "manifest.csv", "no images",
     setup=manifest_lines(lambda rows: rows[:1]))
case(DATA, "manifest-binary", CV, "manifest.csv",
     setup=data_copy(lambda d: (d / "manifest.csv").write_bytes(bytes(range(256)) * 16)))
case(DATA, "manifest-utf16", CV, "manifest.csv",
     setup=data_copy(lambda d: (d / "manifest.csv").write_bytes((d / "manifest.csv").read_text().encode("utf-16"))))
case(DATA, "manifest-missing-column", CV, "manifest.csv:1", "missing column(s) cache_index",
     setup=manifest_lines(lambda rows: [r.replace("cache_index", "index") for r in rows]))
case(DATA, "manifest-unknown-label", CV, "manifest.csv:4", "unknown label 'melanoma'",
     setup=manifest_cell(4, "label", "melanoma"))
case(DATA, "manifest-blank-label", CV, "manifest.csv:5", "unknown label ''", setup=manifest_cell(5, "label", ""))
case(DATA, "manifest-duplicate-image", CV, "manifest.csv", "duplicate image_id",
     setup=manifest_lines(lambda rows: [*rows, with_cell(rows, 1, "cache_index", str(len(rows)))]))
case(DATA, "manifest-duplicate-cache-index", CV, "manifest.csv:3", "duplicate cache_index",
     setup=manifest_cell(3, "cache_index", "0"))
case(DATA, "manifest-fold-text", CV, "manifest.csv:6", "fold 'two'", setup=manifest_cell(6, "fold", "two"))
case(DATA, "manifest-fold-negative", CV, "manifest.csv:7", "fold '-1'", setup=manifest_cell(7, "fold", "-1"))
case(DATA, "cache-index-out-of-range", CV, "images_32.npy", "manifest needs",
     setup=manifest_cell(8, "cache_index", "99999"))
case(DATA, "cache-index-negative", CV, "manifest.csv:9", "cache_index '-3'",
     setup=manifest_cell(9, "cache_index", "-3"))
case(DATA, "lesion-in-two-folds", CV, "manifest.csv", "lesion leakage", setup=data_copy(lesion_in_two_folds))
case(DATA, "lesion-in-two-sources", CV, "manifest.csv", "appears in sources", setup=data_copy(lesion_in_two_sources))
case(DATA, "cache-truncated", CV, "images_32.npy", setup=data_copy(lambda d: truncate(d / "images_32.npy", 0.5)))
case(DATA, "cache-missing", CV, "images_32.npy", "not found", setup=data_copy(lambda d: (d / "images_32.npy").unlink()))
case(DATA, "cache-not-npy", CV, "images_32.npy",
     setup=data_copy(lambda d: (d / "images_32.npy").write_text("not an array\n")))
case(DATA, "cache-wrong-size", CV, "images_32.npy", "shape",
     setup=data_copy(lambda d: edit_json(d / "dataset.json", lambda j: j.update(image_size=64))))
case(DATA, "dataset-json-missing", CV, "dataset.json", "not found",
     setup=data_copy(lambda d: (d / "dataset.json").unlink()))
case(DATA, "dataset-json-garbage", CV, "dataset.json", "cannot read JSON",
     setup=data_copy(lambda d: (d / "dataset.json").write_text("{not json")))
case(DATA, "dataset-json-list", CV, "dataset.json", "JSON object",
     setup=data_copy(lambda d: (d / "dataset.json").write_text("[1, 2]")))
case(DATA, "dataset-json-no-image-size", CV, "dataset.json", "'image_size'",
     setup=data_copy(lambda d: edit_json(d / "dataset.json", lambda j: j.pop("image_size"))))
case(DATA, "dataset-json-image-size-text", CV, "dataset.json", "image_size",
     setup=data_copy(lambda d: edit_json(d / "dataset.json", lambda j: j.update(image_size="big"))))


def started_run(w: Work) -> Path:
    """A copy of the finished run whose fold 0 is unfinished (its checkpoint kept): a run in progress."""
    run = w.copy("run")
    (run / "fold_0" / "predictions.csv").unlink()
    return run


def started(change: Callable[[Path], object] = lambda run: None) -> Setup:
    return lambda w: change(started_run(w))


CV_RUN = [*CV[:5], "--out", "{run}", *CV[7:], "--set=model=test_efficientnet", "--set=epochs=1",
          "--set=batch_size=32", "--set=eval_batch_size=128", "--set=lr=3e-3", "--set=channels_last=false",
          "--fold", "0"]
case(RUN, "other-data", [*CV_RUN[:3], "--data", "{tmp}/data2", *CV_RUN[5:]], "run.json", "was trained on",
     setup=chain(started(), lambda w: shutil.copytree(w.fx.data, w.tmp / "data2")))
case(RUN, "other-data-finished-run", [*CV_RUN[:3], "--data", "{tmp}/data2", *CV_RUN[5:]], "run.json",
     "was trained on", setup=lambda w: (w.copy("run"), shutil.copytree(w.fx.data, w.tmp / "data2")))
case(RUN, "other-config", [*CV_RUN, "--set=epochs=2"], "config.yaml", "different config", setup=started())
case(RUN, "other-config-finished-run", [*CV_RUN, "--set=epochs=2"], "config.yaml", "different config",
     setup=lambda w: w.copy("run"))
case(RUN, "config-yaml-garbage", CV_RUN, "config.yaml", setup=started(lambda r: (r / "config.yaml").write_text("a: [")))
case(RUN, "run-json-garbage", CV_RUN, "run.json", setup=started(lambda r: (r / "run.json").write_bytes(b"\x00\x01")))
case(RUN, "checkpoint-without-resume", CV_RUN, "fold_0", "--resume", setup=started())
case(RUN, "truncated-checkpoint", [*CV_RUN, "--resume"], "checkpoint", "cannot resume",
     setup=started(lambda r: truncate(r / "fold_0" / "checkpoint" / "model.safetensors", 0.5)))
case(RUN, "truncated-optimizer", [*CV_RUN, "--resume"], "checkpoint", "cannot resume",
     setup=started(lambda r: truncate(r / "fold_0" / "checkpoint" / "optimizer.pt", 0.5)))
case(RUN, "checkpoint-state-garbage", [*CV_RUN, "--resume"], "checkpoint", "cannot resume",
     setup=started(lambda r: (r / "fold_0" / "checkpoint" / "state.json").write_text('{"epoch": "one"}')))
case(RUN, "checkpoint-other-model", [*CV_RUN, "--resume"], "checkpoint", "cannot resume",
     setup=started(lambda r: shutil.copy(r / "fold_0" / "ood.safetensors",
                                         r / "fold_0" / "checkpoint" / "model.safetensors")))
case(LOCK, "fold-locked", CV_RUN, "fold_0", "in use by", "reliability test", setup=started(), lock="{run}/fold_0")

# pool
POOL = ["pool", "{run}", "--bootstrap", "20", "--no-tensorboard"]


def run_copy(change: Callable[[Path], object]) -> Setup:
    return lambda w: change(w.copy("run"))


def pred_cell(fold: int, line: int, column: str, value: str, name: str = "predictions.csv") -> Setup:
    return run_copy(lambda r: edit_cell(r / f"fold_{fold}" / name, line, column, value))


case(RUN, "run-missing", "pool {tmp}/norun --no-tensorboard", "norun", "no such run folder")
case(RUN, "not-a-run", "pool {tmp} --no-tensorboard", "config.yaml", "no such file")
case(RUN, "config-garbage", POOL, "config.yaml", setup=run_copy(lambda r: (r / "config.yaml").write_text("a: [")))
case(RUN, "run-json-missing", POOL, "run.json", "not found", setup=run_copy(lambda r: (r / "run.json").unlink()))
case(RUN, "run-json-folds-text", POOL, "run.json", "'folds'",
     setup=run_copy(lambda r: edit_json(r / "run.json", lambda j: j.update(folds="all"))))
case(RUN, "fold-unfinished", POOL, "fold(s) 2 not finished",
     setup=run_copy(lambda r: (r / "fold_2" / "predictions.csv").unlink()))
case(CSV, "fold-nan", POOL, "fold_2/predictions.csv:3", "not a finite number", setup=pred_cell(2, 3, "mel", "nan"))
case(CSV, "fold-inf", POOL, "fold_1/predictions.csv:4", "not a finite number", setup=pred_cell(1, 4, "nv", "inf"))
case(CSV, "fold-negative", POOL, "fold_3/predictions.csv:2", "negative", setup=pred_cell(3, 2, "bcc", "-0.5"))
case(CSV, "fold-not-summing", POOL, "fold_0/predictions.csv:5", "sum to", setup=pred_cell(0, 5, "df", "0.9"))
case(CSV, "fold-unknown-label", POOL, "fold_4/predictions.csv:6", "unknown label 'MEL'",
     setup=pred_cell(4, 6, "label", "MEL"))
case(CSV, "fold-blank-id", POOL, "fold_2/predictions.csv:7", "blank image_id", setup=pred_cell(2, 7, "image_id", ""))
case(CSV, "fold-missing-column", POOL, "fold_1/predictions.csv", "missing column(s) vasc",
     setup=run_copy(lambda r: set_lines(r / "fold_1" / "predictions.csv",
                                        [re.sub(r"\bvasc\b", "vascular", x, count=1)
                                         for x in lines_of(r / "fold_1" / "predictions.csv")])))
case(INPUT, "fold-binary", POOL, "fold_3/predictions.csv",
     setup=run_copy(lambda r: (r / "fold_3" / "predictions.csv").write_bytes(bytes(range(256)) * 8)))
case(INPUT, "fold-empty", POOL, "fold_4/predictions.csv",
     setup=run_copy(lambda r: (r / "fold_4" / "predictions.csv").write_text("")))
case(CSV, "image-in-two-folds", POOL, "predicted by two folds", setup=run_copy(lambda r: set_lines(
    r / "fold_1" / "predictions.csv",
    [*lines_of(r / "fold_1" / "predictions.csv"), lines_of(r / "fold_0" / "predictions.csv")[1]])))
case(CSV, "val-nan", POOL, "fold_1/val_predictions.csv:3", "not a finite number",
     setup=pred_cell(1, 3, "akiec", "nan", "val_predictions.csv"))
case(RUN, "val-missing", POOL, "fold_2/val_predictions.csv", "missing",
     setup=run_copy(lambda r: (r / "fold_2" / "val_predictions.csv").unlink()))
case(OPTION, "bootstrap-0", [*POOL, "--bootstrap", "0"], "--bootstrap", "0", setup=run_copy(lambda r: None))
case(OPTION, "seed-negative", [*POOL, "--seed", "-1"], "--seed", "-1", setup=run_copy(lambda r: None))
case(LOCK, "run-locked", POOL, "in use by", "reliability test", setup=run_copy(lambda r: None), lock="{run}")
case(CSV, "fold-nan-tensorboard-on", ["pool", "{run}", "--bootstrap", "20"], "fold_2/predictions.csv:3",
     "not a finite number", setup=pred_cell(2, 3, "mel", "nan"))

# predict
PRED = ["predict", "--model", "{run}", "{good}", "--out", "{out}.csv", "--threads", "1"]


def card_edit(change: Callable[[dict], object], fold: int = 1) -> Setup:
    return run_copy(lambda r: edit_json(r / f"fold_{fold}" / "model.json", change))


def card_case(id: str, change: Callable[[dict], object], *expect: str, where: str = "fold_1/model.json") -> None:
    for command, argv in (("predict", PRED), ("export", EXPORT), ("explain", EXPLAIN)):
        if command == "predict" or id in ("missing-sha256", "image-size-0", "classes-reordered"):
            case(RUN, f"card-{id}", argv, where, *expect, setup=card_edit(change))


EXPORT = ["export", "--model", "{run}", "--out", "{out}.onnx", "--threads", "1"]
EXPLAIN = ["explain", "--model", "{run}", "{good}", "--out", "{out}", "--threads", "1"]

case(RUN, "model-missing", [*PRED[:2], "{tmp}/norun", *PRED[3:]], "norun", "no such run folder")
case(RUN, "no-finished-folds", [*PRED[:2], "{tmp}", *PRED[3:]], "no finished folds")
case(OPTION, "no-model", ["predict", "{good}", "--out", "{out}.csv", *T1.split()], "--model RUN_DIR is required")
case(RUN, "weights-tampered", PRED, "fold_2/best.safetensors", "sha256 does not match",
     setup=run_copy(lambda r: flip_byte(r / "fold_2" / "best.safetensors")))
case(RUN, "weights-truncated-card-updated", PRED, "fold_3/best.safetensors", "does not fit",
     setup=run_copy(lambda r: (truncate(r / "fold_3" / "best.safetensors", 0.5), edit_json(
         r / "fold_3" / "model.json", lambda c: c.update(
             sha256=hashlib.sha256((r / "fold_3" / "best.safetensors").read_bytes()).hexdigest())))))
case(RUN, "weights-missing", PRED, "fold_4/best.safetensors", "missing",
     setup=run_copy(lambda r: (r / "fold_4" / "best.safetensors").unlink()))
case(RUN, "ood-tampered", PRED, "fold_0/ood.safetensors", "sha256",
     setup=run_copy(lambda r: flip_byte(r / "fold_0" / "ood.safetensors")))
case(RUN, "card-not-json", PRED, "fold_1/model.json", "cannot read JSON",
     setup=run_copy(lambda r: (r / "fold_1" / "model.json").write_bytes(b"\x89\x00 not json")))
case(RUN, "card-list", PRED, "fold_1/model.json", "JSON object",
     setup=run_copy(lambda r: (r / "fold_1" / "model.json").write_text("[]")))
card_case("missing-image-size", lambda c: c.pop("image_size"), "image_size")
card_case("missing-sha256", lambda c: c.pop("sha256"), "sha256")
card_case("image-size-0", lambda c: c.update(image_size=0), "image_size")
card_case("image-size-huge", lambda c: c.update(image_size=99999), "image_size")
card_case("image-size-text", lambda c: c.update(image_size="big"), "image_size")
card_case("classes-reordered", lambda c: c.update(classes=sorted(CLASSES, reverse=True)), "classes")
card_case("mean-two-channels", lambda c: c.update(mean=[0.5, 0.5]), "mean")
card_case("std-negative", lambda c: c.update(std=[0.2, -0.2, 0.2]), "std")
card_case("tta-9", lambda c: c.update(tta=9), "tta")
card_case("weights-path-escape", lambda c: c.update(weights="../../fold_0/best.safetensors"), "weights")
card_case("sha256-malformed", lambda c: c.update(sha256="xyz"), "sha256")
card_case("format-unknown", lambda c: c.update(format="other/2"), "format")
card_case("fold-negative", lambda c: c.update(fold=-1), "fold")
card_case("model-unknown", lambda c: c.update(model="resnet_does_not_exist"), "resnet_does_not_exist")
card_case("model-other-architecture", lambda c: c.update(model="resnet18"), "resnet18", "does not fit",
          where="fold_1/best.safetensors")
card_case("color-constancy-unknown", lambda c: c.update(color_constancy="retinex"), "color_constancy")
case(OPTION, "fold-9", [*PRED, "--fold", "9"], "fold_9")
case(OPTION, "tta-7", [*PRED, "--tta", "7"], "--tta", "7")
case(OPTION, "batch-size-0", [*PRED, "--batch-size", "0"], "--batch-size", "0")
case(OPTION, "max-pixels-0", [*PRED, "--max-pixels", "0"], "--max-pixels", "0")
case(OPTION, "threads-negative", [*PRED[:-1], "-1"], "--threads", "-1")
case(OPTION, "device-unknown", [*PRED, "--device", "tpu"], "--device tpu")
case(OPTION, "onnx-without-file", [*PRED, "--backend", "onnx"], "--onnx-model")
case(OPTION, "onnx-file-with-torch", [*PRED, "--onnx-model", "{onnx}"], "--onnx-model needs --backend onnx")
case(OPTION, "onnx-with-fold", [*PRED, "--backend", "onnx", "--onnx-model", "{onnx}", "--fold", "0"], "--fold")
case(OPTION, "onnx-calibrated", [*PRED, "--backend", "onnx", "--onnx-model", "{onnx}", "--calibrated"],
     "--calibrated")
case(RUN, "calibrated-without-calibration", [*PRED, "--calibrated"], "calibration.json", "not found",
     setup=run_copy(lambda r: (r / "calibration.json").unlink()))
ONNX = ["predict", "--backend", "onnx", "--onnx-model", "{onnx}", "{good}", "--out", "{out}.csv", *T1.split()]


def own_onnx(change: Callable[[Path], object]) -> Setup:
    def run(w: Work) -> None:
        target = w.tmp / "model.onnx"
        shutil.copy2(w.fx.onnx, target)
        shutil.copy2(w.fx.onnx.with_name("model.onnx.json"), w.tmp / "model.onnx.json")
        w.vars["onnx"] = target
        change(target)

    return run


case(INPUT, "onnx-missing", [*ONNX[:4], "{tmp}/none.onnx", *ONNX[5:]], "none.onnx", "no such ONNX file")
case(RUN, "onnx-tampered", ONNX, "model.onnx", "sha256 does not match", setup=own_onnx(flip_byte))
case(RUN, "onnx-sidecar-missing", ONNX, "model.onnx.json", "not found",
     setup=own_onnx(lambda p: p.with_name("model.onnx.json").unlink()))
case(RUN, "onnx-sidecar-classes", ONNX, "model.onnx.json", "classes",
     setup=own_onnx(lambda p: edit_json(p.with_name("model.onnx.json"), lambda s: s.update(classes=["a"]))))
case(RUN, "onnx-garbage-matching-sidecar", ONNX, "model.onnx", "onnxruntime cannot load",
     setup=own_onnx(lambda p: (p.write_bytes(b"not a graph"), edit_json(
         p.with_name("model.onnx.json"), lambda s: s.update(sha256=hashlib.sha256(b"not a graph").hexdigest())))))
case(RUN, "onnx-other-run", [*ONNX, "--model", "{run}"], "other weights",
     setup=run_copy(lambda r: edit_json(r / "fold_0" / "model.json", lambda c: c.update(sha256="0" * 64))))
case(INPUT, "folder-without-images", [*PRED[:3], "{img}/notes", *PRED[4:]], "notes", "no images")
case(INPUT, "list-missing", [*PRED[:3], "{tmp}/list.csv", *PRED[4:]], "list.csv", "no such image list")
case(INPUT, "list-no-column", [*PRED[:3], "{tmp}/list.csv", *PRED[4:]], "list.csv", "column",
     setup=lambda w: w.write("list.csv", "file\ngood.jpg\n"))
case(INPUT, "list-binary", [*PRED[:3], "{tmp}/list.csv", *PRED[4:]], "list.csv",
     setup=lambda w: w.write("list.csv", bytes(range(256)) * 4))
case(INPUT, "list-utf16", [*PRED[:3], "{tmp}/list.csv", *PRED[4:]], "list.csv",
     setup=lambda w: w.write("list.csv", "path\ngood.jpg\n".encode("utf-16")))
case(OUTPUT, "out-is-folder", [*PRED[:4], "--out", "{tmp}", *PRED[6:]], "--out", "is a folder")
case(OUTPUT, "out-under-file", [*PRED[:4], "--out", "{under}.csv", *PRED[6:]], "--out", "afile")
case(OUTPUT, "out-proc", [*PRED[:4], "--out", "{proc}.csv", *PRED[6:]], "--out", "/proc")
case(OUTPUT, "out-sys", [*PRED[:4], "--out", "{sys}.csv", *PRED[6:]], "--out", "/sys")
for name, bad in (("truncated", "truncated.jpg"), ("text", "text.jpg"), ("empty", "empty.jpg"),
                  ("wide", "wide.png"), ("missing", "absent.jpg")):
    case(IMAGE, f"some-failed-{name}", [*PRED[:4], f"{{img}}/{bad}", *PRED[4:]], bad, code=1, failed_images=1)
case(IMAGE, "some-failed-over-max-pixels", [*PRED[:4], "{img}/wide.png", *PRED[4:], "--max-pixels", "3100"],
     "wide.png", code=1, failed_images=1)

# export
case(RUN, "model-missing", [*EXPORT[:2], "{tmp}/norun", *EXPORT[3:]], "norun", "no such run folder")
case(RUN, "weights-tampered", EXPORT, "fold_2/best.safetensors", "sha256 does not match",
     setup=run_copy(lambda r: flip_byte(r / "fold_2" / "best.safetensors")))
case(OPTION, "opset-99", [*EXPORT, "--opset", "99"], "--opset", "99")
case(OPTION, "opset-0", [*EXPORT, "--opset", "0"], "--opset", "0")
case(OPTION, "opset-text", [*EXPORT, "--opset", "new"], "--opset", "'new'")
case(OPTION, "fold-9", [*EXPORT, "--fold", "9"], "fold_9")
case(OPTION, "threads-negative", [*EXPORT[:-1], "-1"], "--threads", "-1")
case(OUTPUT, "out-is-folder", [*EXPORT[:3], "--out", "{tmp}", *EXPORT[5:]], "--out", "is a folder")
case(OUTPUT, "out-under-file", [*EXPORT[:3], "--out", "{under}.onnx", *EXPORT[5:]], "--out", "afile")
case(OUTPUT, "out-proc", [*EXPORT[:3], "--out", "{proc}.onnx", *EXPORT[5:]], "--out", "/proc")

# evaluate
EVAL = ["evaluate", "--predictions", "{tmp}/pred.csv", "--out", "{out}", "--bootstrap", "20"]


def oof(w: Work) -> list[str]:
    return lines_of(w.fx.run / "oof_predictions.csv")


def pred_file(change: Callable[[list[str]], list[str]] = lambda rows: rows, **style) -> Setup:
    return lambda w: set_lines(w.tmp / "pred.csv", change(oof(w)), **style)


def pred_value(line: int, column: str, value: str) -> Setup:
    def run(w: Work) -> None:
        set_lines(w.tmp / "pred.csv", oof(w))
        edit_cell(w.tmp / "pred.csv", line, column, value)

    return run


case(INPUT, "missing", EVAL, "pred.csv", "no such file")
case(INPUT, "folder", [*EVAL[:2], "{tmp}", *EVAL[3:]], "{tmp}", "cannot read")
case(INPUT, "empty", EVAL, "pred.csv", setup=lambda w: w.write("pred.csv", ""))
case(INPUT, "header-only", EVAL, "pred.csv", "no prediction rows", setup=pred_file(lambda rows: rows[:1]))
case(INPUT, "binary", EVAL, "pred.csv", setup=lambda w: w.write("pred.csv", bytes(range(256)) * 8))
case(INPUT, "utf16", EVAL, "pred.csv", setup=lambda w: w.write("pred.csv", "\n".join(oof(w)).encode("utf-16")))
case(INPUT, "latin1", EVAL, "pred.csv",
     setup=lambda w: w.write("pred.csv", "\n".join(oof(w)).replace("ham,", "hàm,", 1).encode("latin-1")))
case(CSV, "junk-header", EVAL, "pred.csv:2", "cannot parse",
     setup=pred_file(lambda rows: ["# predictions of run b", *rows]))
case(CSV, "missing-column", EVAL, "pred.csv", "missing column(s) mel",
     setup=pred_file(lambda rows: [re.sub(r"\bmel\b", "melanoma", r, count=1) for r in rows]))
case(CSV, "nan", EVAL, "pred.csv:3", "probability mel is not a finite number ('nan')",
     setup=pred_value(3, "mel", "nan"))
case(CSV, "inf", EVAL, "pred.csv:4", "not a finite number", setup=pred_value(4, "nv", "inf"))
case(CSV, "minus-inf", EVAL, "pred.csv:5", "not a finite number", setup=pred_value(5, "nv", "-inf"))
case(CSV, "blank-probability", EVAL, "pred.csv:6", "not a finite number", setup=pred_value(6, "bkl", ""))
case(CSV, "text-probability", EVAL, "pred.csv:7", "not a finite number", setup=pred_value(7, "df", "high"))
case(CSV, "negative", EVAL, "pred.csv:8", "negative", setup=pred_value(8, "vasc", "-0.1"))
case(CSV, "not-summing", EVAL, "pred.csv:9", "sum to", setup=pred_value(9, "akiec", "0.9"))
case(CSV, "blank-id", EVAL, "pred.csv:10", "blank image_id", setup=pred_value(10, "image_id", " "))
case(CSV, "blank-source", EVAL, "pred.csv:11", "blank source", setup=pred_value(11, "source", ""))
case(CSV, "unknown-label", EVAL, "pred.csv:12", "unknown label 'melanoma'", setup=pred_value(12, "label", "melanoma"))
case(CSV, "upper-case-label", EVAL, "pred.csv:13", "unknown label 'MEL'", setup=pred_value(13, "label", "MEL"))
case(CSV, "duplicate-id", EVAL, "duplicates line 2", setup=pred_file(lambda rows: [*rows, rows[1]]))
case(CSV, "negative-age", EVAL, "pred.csv:2", "age '-3'", setup=pred_value(2, "age", "-3"))
case(CSV, "text-age", EVAL, "pred.csv:14", "age 'old'", setup=pred_value(14, "age", "old"))
case(CSV, "bom-crlf-nan", EVAL, "pred.csv:3", "not a finite number",
     setup=lambda w: (set_lines(w.tmp / "pred.csv", oof(w)), edit_cell(w.tmp / "pred.csv", 3, "mel", "NaN"),
                      set_lines(w.tmp / "pred.csv", lines_of(w.tmp / "pred.csv"), "\r\n", bom=True)))
case(CSV, "ragged-row", EVAL, "pred.csv", "line 4",
     setup=pred_file(lambda rows: [*rows[:3], rows[3] + ",1,2,3", *rows[4:]]))
case(CSV, "unclosed-quote", EVAL, "pred.csv",
     setup=pred_file(lambda rows: [*rows[:3], rows[3].replace(",", ',"', 1), *rows[4:]]))
case(CSV, "by-missing-column", [*EVAL, "--by", "sex"], "pred.csv", "sex",
     setup=pred_file(lambda rows: [",".join(r.split(",")[:11]) for r in rows]))
case(OPTION, "bootstrap-0", [*EVAL, "--bootstrap", "0"], "--bootstrap", "0", setup=pred_file())
case(OPTION, "bootstrap-text", [*EVAL, "--bootstrap", "many"], "--bootstrap", "'many'", setup=pred_file())
case(OPTION, "seed-negative", [*EVAL, "--seed", "-1"], "--seed", "-1", setup=pred_file())
case(OPTION, "by-unknown", [*EVAL, "--by", "colour"], "--by", "'colour'", setup=pred_file())
case(OUTPUT, "out-is-file", [*EVAL[:3], "--out", "{file}", *EVAL[5:]], "--out", "afile", setup=pred_file())
case(OUTPUT, "out-under-file", [*EVAL[:3], "--out", "{under}", *EVAL[5:]], "--out", "afile", setup=pred_file())
case(OUTPUT, "out-proc", [*EVAL[:3], "--out", "{proc}", *EVAL[5:]], "--out", "/proc", setup=pred_file())
case(OUTPUT, "out-sys", [*EVAL[:3], "--out", "{sys}", *EVAL[5:]], "--out", "/sys", setup=pred_file())

# report
REPORT = ["report", "{run}", "--out", "{out}"]
case(OPTION, "no-runs", "report --out {out}", "RUN_DIR")
case(RUN, "run-missing", "report {tmp}/norun --out {out}", "norun", "no such run folder")
case(RUN, "not-a-run", "report {img} --out {out}", "config.yaml", "no such file")
case(RUN, "metrics-missing", REPORT, "metrics.json", "not found",
     setup=run_copy(lambda r: (r / "metrics.json").unlink()))
case(RUN, "metrics-garbage", REPORT, "metrics.json", "cannot read JSON",
     setup=run_copy(lambda r: (r / "metrics.json").write_text("{")))
case(RUN, "metrics-no-sources", REPORT, "metrics.json", "'sources'",
     setup=run_copy(lambda r: edit_json(r / "metrics.json", lambda m: m.pop("sources"))))
case(RUN, "metrics-stale", REPORT, "metrics.json", "stale",
     setup=run_copy(lambda r: edit_json(r / "metrics.json", lambda m: m["sources"]["ham"]["macro_f1"].update(
         value=0.999))))
case(CSV, "oof-nan", REPORT, "oof_predictions.csv:3", "not a finite number",
     setup=run_copy(lambda r: edit_cell(r / "oof_predictions.csv", 3, "mel", "nan")))
case(RUN, "oof-missing", REPORT, "oof_predictions.csv", "no such file",
     setup=run_copy(lambda r: (r / "oof_predictions.csv").unlink()))
case(RUN, "config-missing-sampler", REPORT, "config.yaml", "sampler",
     setup=run_copy(lambda r: (r / "config.yaml").write_text("name: x\nmodel: y\ntrain_sources: [ham]\n")))
case(RUN, "config-garbage", REPORT, "config.yaml", "cannot read YAML",
     setup=run_copy(lambda r: (r / "config.yaml").write_text("name: [x\n")))
case(RUN, "run-json-parameters-text", REPORT, "run.json", "'parameters'",
     setup=run_copy(lambda r: edit_json(r / "run.json", lambda j: j.update(parameters="many"))))
case(RUN, "history-garbage", REPORT, "fold_2/history.csv",
     setup=run_copy(lambda r: (r / "fold_2" / "history.csv").write_bytes(bytes(range(256)) * 4)))
case(RUN, "history-missing-column", REPORT, "fold_2/history.csv", "val_macro_f1",
     setup=run_copy(lambda r: (r / "fold_2" / "history.csv").write_text("epoch,train_loss\n1,0.5\n")))
case(RUN, "calibration-garbage", REPORT, "calibration.json", "cannot read JSON",
     setup=run_copy(lambda r: (r / "calibration.json").write_text("{")))
case(RUN, "same-run-twice", "report {run} {run} --out {out}", "is also the name of")
case(OPTION, "reference-source-unknown", [*REPORT, "--reference-source", "clinic"], "'clinic'")
case(OPTION, "by-unknown", [*REPORT, "--by", "colour"], "--by", "'colour'")
case(OPTION, "ablation-and-runs", [*REPORT, "--ablation", "{tmp}"], "--ablation")
case(RUN, "ablation-missing", "report --ablation {tmp}/noabl --out {out}", "noabl")
case(OUTPUT, "out-is-file", "report {run} --out {file}", "--out", "afile")
case(OUTPUT, "out-under-file", "report {run} --out {under}", "--out", "afile")
case(OUTPUT, "out-proc", "report {run} --out {proc}", "--out", "/proc")
case(OUTPUT, "out-not-empty", "report {run} --out {tmp}", "exists and is not empty", "--overwrite")

# ablate
ABL = ["ablate", "--config", "demo_b_joint", "--data", "{data}", "--out", "{out}", "--threads", "1",
       "--bootstrap", "20", "--list-jobs"]


def planned(w: Work) -> None:
    from crossderm.train import ablation

    with contextlib.redirect_stdout(io.StringIO()):
        plan = ablation.make_plan("demo_b_joint", w.fx.data, w.tmp / "abl", ["sampler=uniform,class_balanced"],
                                  overrides=["epochs=1"])
        ablation.write_plan(plan)


case(OPTION, "vary-without-config", "ablate --data {data} --vary sampler=uniform,class_balanced --out {out}",
     "--config")
case(RUN, "no-plan", "ablate --out {tmp} --list-jobs", "ablation.json", "no ablation planned")
case(RUN, "plan-garbage", "ablate --out {tmp} --list-jobs", "ablation.json", "cannot read JSON",
     setup=lambda w: w.write("ablation.json", "{"))
case(RUN, "plan-wrong-format", "ablate --out {tmp} --list-jobs", "ablation.json", "format",
     setup=lambda w: w.write("ablation.json", '{"format": "other"}'))
case(RUN, "plan-missing-fields", "ablate --out {tmp} --list-jobs", "ablation.json", "plan format",
     setup=lambda w: w.write("ablation.json", '{"format": "crossderm-ablation/1"}'))
case(OPTION, "vary-no-values", [*ABL, "--vary", "sampler"], "--vary 'sampler'")
case(OPTION, "vary-empty-value", [*ABL, "--vary", "sampler=uniform,"], "--vary 'sampler=uniform,'")
case(OPTION, "vary-fixed-key", [*ABL, "--vary", "name=a,b"], "--vary 'name=a,b'")
case(OPTION, "vary-unknown-key", [*ABL, "--vary", "epoch=1,2"], "epoch")
case(OPTION, "vary-bad-value", [*ABL, "--vary", "epochs=1,0"], "epochs")
case(OPTION, "vary-repeated-value", [*ABL, "--vary", "sampler=uniform,uniform"], "listed twice")
case(OPTION, "vary-one-value", [*ABL, "--vary", "sampler=uniform"], "nothing to compare")
case(SET, "set-unknown-key", [*ABL, "--vary", "sampler=uniform,class_balanced", "--set", "epoch=1"], "epoch")
case(SET, "set-and-vary", [*ABL, "--vary", "sampler=uniform,class_balanced", "--set", "sampler=uniform"], "sampler",
     "both")
case(OPTION, "job-out-of-range", "ablate --out {tmp}/abl --job 99 --threads 1", "--job 99", setup=planned)
case(OPTION, "bootstrap-0", [*ABL[:-3], "--bootstrap", "0", "--list-jobs", "--vary", "sampler=uniform,class_balanced"],
     "--bootstrap", "0")
case(OPTION, "threads-negative", [*ABL[:7], "--threads", "-1", "--list-jobs", "--vary",
                                   "sampler=uniform,class_balanced"],
     "--threads", "-1")
case(OUTPUT, "out-under-file", [*ABL[:5], "--out", "{under}", *ABL[7:], "--vary", "sampler=uniform,class_balanced"],
     "--out", "afile")
case(OUTPUT, "out-proc", [*ABL[:5], "--out", "{proc}", *ABL[7:], "--vary", "sampler=uniform,class_balanced"],
     "--out", "/proc")
case(DATA, "data-bad-manifest", [*ABL, "--vary", "sampler=uniform,class_balanced"], "manifest.csv:4",
     "unknown label", setup=manifest_cell(4, "label", "melanoma"))

# serve (startup only; uploads are tested in tests/serve)
SERVE = ["serve", "--model", "{run}", "--threads", "1"]
case(OPTION, "port-70000", [*SERVE, "--port", "70000"], "--port", "70000")
case(OPTION, "port-negative", [*SERVE, "--port", "-1"], "--port", "-1")
case(OPTION, "port-text", [*SERVE, "--port", "http"], "--port", "'http'")
case(OPTION, "threads-negative", [*SERVE[:3], "--threads", "-1"], "--threads", "-1")
case(OPTION, "max-pixels-0", [*SERVE, "--max-pixels", "0"], "--max-pixels")
case(OPTION, "max-pixels-over-bomb-limit", [*SERVE, "--max-pixels", str(10**10)], "--max-pixels")
case(OPTION, "timeout-0", [*SERVE, "--timeout-s", "0"], "--timeout-s")
case(OPTION, "max-upload-negative", [*SERVE, "--max-upload-mb", "-1"], "--max-upload-mb")
case(OPTION, "max-memory-0", [*SERVE, "--max-memory-mb", "0"], "--max-memory-mb")
case(OPTION, "max-work-nan", [*SERVE, "--max-work-s", "nan"], "--max-work-s")
case(OPTION, "allow-host-bad", [*SERVE, "--allow-host", "user@evil"], "--allow-host 'user@evil'")
case(RUN, "model-missing", "serve --model {tmp}/norun --threads 1", "norun", "no such run folder")
case(RUN, "model-tampered", SERVE, "fold_2/best.safetensors", "sha256 does not match",
     setup=run_copy(lambda r: flip_byte(r / "fold_2" / "best.safetensors")))

# explain
case(RUN, "model-missing", [*EXPLAIN[:2], "{tmp}/norun", *EXPLAIN[3:]], "norun", "no such run folder")
case(RUN, "weights-tampered", EXPLAIN, "fold_2/best.safetensors", "sha256 does not match",
     setup=run_copy(lambda r: flip_byte(r / "fold_2" / "best.safetensors")))
for name, bad, why in (("missing", "absent.jpg", "no such file"), ("text", "text.jpg", "not a supported image"),
                       ("truncated", "truncated.jpg", "cannot read the image header"), ("empty", "empty.jpg", "image"),
                       ("wide", "wide.png", "aspect ratio")):
    case(IMAGE, f"image-{name}", [*EXPLAIN[:4], f"{{img}}/{bad}", *EXPLAIN[4:]], bad, why)
case(IMAGE, "over-max-pixels", [*EXPLAIN, "--max-pixels", "100"], "good.jpg", "limit is 100")
case(OPTION, "max-pixels-0", [*EXPLAIN, "--max-pixels", "0"], "--max-pixels", "0")
case(OPTION, "class-unknown", [*EXPLAIN, "--class", "melanoma"], "--class", "'melanoma'")
case(OPTION, "threads-negative", [*EXPLAIN[:-1], "-1"], "--threads", "-1")
case(OPTION, "device-unknown", [*EXPLAIN, "--device", "tpu"], "--device tpu")
case(OPTION, "same-image-id", [*EXPLAIN[:4], "{img}/good.jpg", *EXPLAIN[4:]], "'good'")
case(OUTPUT, "out-is-file", [*EXPLAIN[:4], "--out", "{file}", *EXPLAIN[6:]], "--out", "afile")
case(OUTPUT, "out-under-file", [*EXPLAIN[:4], "--out", "{under}", *EXPLAIN[6:]], "--out", "afile")
case(OUTPUT, "out-proc", [*EXPLAIN[:4], "--out", "{proc}", *EXPLAIN[6:]], "--out", "/proc")

# demo: every option is checked before the synthetic data are written
DEMO = ["demo", "--out", "{out}", "--threads", "1"]
case(OPTION, "bootstrap-0", [*DEMO, "--bootstrap", "0"], "--bootstrap", "0")
case(OPTION, "threads-negative", [*DEMO[:3], "--threads", "-1"], "--threads", "-1")
case(OPTION, "image-size-0", [*DEMO, "--image-size", "0"], "--image-size", "0")
case(OPTION, "image-size-huge", [*DEMO, "--image-size", "99999"], "--image-size", "99999")
case(OPTION, "epochs-0", [*DEMO, "--epochs", "0"], "--epochs", "0")
case(OPTION, "epochs-negative", [*DEMO, "--epochs", "-2"], "--epochs", "-2")
case(OPTION, "ham-lesions-3", [*DEMO, "--ham-lesions", "3"], "HAM")
case(OPTION, "device-unknown", [*DEMO, "--device", "tpu"], "--device tpu")
case(OUTPUT, "out-under-file", ["demo", "--out", "{under}", *T1.split()], "--out", "afile")
case(OUTPUT, "out-proc", ["demo", "--out", "{proc}", *T1.split()], "--out", "/proc")


# ---- the test ----------------------------------------------------------------------------------------------------


def test_the_table_is_large_and_unique() -> None:
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids)), sorted({i for i in ids if ids.count(i) > 1})
    assert len(CASES) >= 150
    assert {c.command for c in CASES} == {
        "download", "synth", "prepare", "cv", "pool", "predict", "export", "evaluate", "report", "ablate", "serve",
        "explain", "demo",
    }


@contextlib.contextmanager
def held_lock(path: Path | None) -> Iterator[None]:
    if path is None:
        yield
        return
    with exclusive_lock(path, "reliability test"):
        yield


def run_cli(argv: list[str]) -> tuple[int | str, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code: int | str = main(argv)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 2
        except BaseException:  # noqa: BLE001 (the case fails below, showing it)
            traceback.print_exc(file=err)
            code = "raised"
    return code, out.getvalue(), err.getvalue()


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, fx: Fixtures, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in case.env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr("crossderm.download.http.RETRY_WAIT_S", 0.0)
    if case.command == "serve":  # a serve that gets past its checks would listen for ever: make that a failure
        import uvicorn

        def listen(*_: object, **__: object) -> None:
            raise AssertionError("serve got past its startup checks")

        monkeypatch.setattr(uvicorn.Server, "run", listen)
    w = Work(fx, tmp_path)
    if case.setup is not None:
        case.setup(w)
    names = {key: str(value) for key, value in w.vars.items()}
    argv = [part.format(**names) for part in case.argv]
    watched = [tmp_path, *fx.shared]
    before = snapshot(watched)
    with held_lock(Path(case.lock.format(**names)) if case.lock else None):
        code, out, err = run_cli(argv)
    after = snapshot(watched)
    shown = f"exit {code}\n--- stdout\n{out[-3000:]}\n--- stderr\n{err[-3000:]}"
    assert "Traceback" not in out + err, shown
    assert code == case.code, shown
    lines = err.strip().splitlines()
    expected = [e.format(**names) for e in case.expect]
    if case.failed_images:
        assert len(lines) == case.failed_images and all(line.startswith("failed: ") for line in lines), shown
        assert all(any(e in line for line in lines) for e in expected), shown
        output = Path(argv[argv.index("--out") + 1])
        added = {k for k in after if k not in before}
        assert added == {f"0/{output.relative_to(tmp_path)}"}, sorted(added)
        assert {k: v for k, v in after.items() if k in before} == before
        assert output.read_text().count(",error,") == case.failed_images
        return
    assert len(lines) == 1, shown
    assert lines[0].startswith(f"crossderm {case.command}: error: "), shown
    for part in expected:
        assert part in lines[0], f"{part!r} not in the message\n{shown}"
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    assert not changed, f"created or changed: {changed}\n{shown}"


def test_families_are_counted() -> None:
    """Every case belongs to one of the families docs/reliability.md counts."""
    assert {c.family for c in CASES} <= {INPUT, CSV, OPTION, SET, OUTPUT, RUN, DATA, APART, LOCK, IMAGE}


if __name__ == "__main__":  # python tests/reliability/test_bad_inputs.py: the counts per command and family
    from collections import Counter

    counts = Counter((c.command, c.family) for c in CASES)
    for (command, family), n in sorted(counts.items()):
        print(f"{command:9} {family:60} {n}")
    print(len(CASES), "cases", file=sys.stderr)

"""The layers point only down: foundations -> models | evaluate -> train | predict -> report | serve | cli.

Checked on the source itself (every ``crossderm`` import, top-level or inside a function), and by importing
the web app in a fresh process, which must not pull in scikit-learn or the training stack.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import crossderm

PACKAGE = Path(crossderm.__file__).parent
FOUNDATION = {"errors", "fsutil", "labels", "defaults", "runtime", "runfolder", "datafolder", "imaging", "configs",
              "colour", "patient", "csvtable"}
# layer -> the layers it may import (besides itself)
ALLOWED: dict[str, set[str]] = {
    "foundation": set(),
    "models": {"foundation"},
    "evaluate": {"foundation"},
    "split": {"foundation"},
    "prepare": {"foundation", "split"},
    "synth": {"foundation", "prepare"},
    "download": {"foundation", "prepare"},
    "train": {"foundation", "models", "evaluate", "split"},
    "predict": {"foundation", "models", "evaluate"},
    "report": {"foundation", "evaluate"},
    "serve": {"foundation", "models", "evaluate", "predict"},
    "api": {"foundation", "models", "evaluate", "split", "prepare", "synth", "download", "train", "predict", "report"},
    # the package's own __init__: re-exports crossderm.api, imported lazily (module __getattr__)
    "facade": {"foundation", "api"},
    "cli": set(ALLOWED_ALL := {"foundation", "models", "evaluate", "split", "prepare", "synth", "download", "train",
                               "predict", "report", "serve", "api"}),
}


def layer_of(module: str) -> str:
    """``crossderm.train.fold`` -> ``train``; top-level foundation modules -> ``foundation``."""
    parts = module.split(".")
    if len(parts) == 2 and parts[1] == "__init__":
        return "facade"  # the file crossderm/__init__.py; importing `crossderm` itself (__version__) is foundation
    if len(parts) == 1:
        return "foundation"
    if parts[1] == "__main__":
        return "cli"
    if parts[1] in FOUNDATION:
        return "foundation"
    return parts[1]


def imports_of(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("crossderm"):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("crossderm")}
    return found


def modules() -> list[tuple[str, Path]]:
    return [
        (".".join(("crossderm", *path.relative_to(PACKAGE).with_suffix("").parts)), path)
        for path in sorted(PACKAGE.rglob("*.py"))
    ]


def test_every_module_belongs_to_a_known_layer() -> None:
    assert {layer_of(name) for name, _ in modules()} <= set(ALLOWED)


@pytest.mark.parametrize(("name", "path"), modules(), ids=lambda value: value if isinstance(value, str) else "")
def test_imports_point_down(name: str, path: Path) -> None:
    layer = layer_of(name)
    wrong = sorted(m for m in imports_of(path) if layer_of(m) not in ALLOWED[layer] | {layer})
    assert not wrong, f"{name} ({layer}) imports {wrong}"


def test_the_web_app_does_not_import_training_or_scikit_learn() -> None:
    probe = (
        "import sys, crossderm.serve.app; "
        "print(sorted({m.split('.')[0] if m.startswith('sklearn') else m for m in sys.modules "
        "if m.startswith(('sklearn', 'crossderm.train', 'crossderm.prepare', 'crossderm.split'))}))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_checker_sees_a_wrong_import(tmp_path: Path) -> None:
    module = tmp_path / "engine.py"
    module.write_text("def f():\n    from crossderm.predict.ensemble import Ensemble\n")
    assert imports_of(module) == {"crossderm.predict.ensemble"}
    assert layer_of("crossderm.predict.ensemble") not in ALLOWED["train"]

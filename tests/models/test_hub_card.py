"""The Hugging Face-style model card README.md: written by pool and export, loads in huggingface_hub.ModelCard
(a local file: no network), and its numbers are the run's metrics.json."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from crossderm.cli import main
from crossderm.errors import CrossdermError
from crossderm.models.hub_card import CARD_MARKER, write_model_card

hub = pytest.importorskip("huggingface_hub")

METRIC_KEYS = {"f1": "macro_f1", "accuracy": "accuracy", "balanced_accuracy": "balanced_accuracy",
               "roc_auc": "macro_auc"}


def _copy(run: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("checkpoint"))
    return copy


def _cell(entry: dict) -> str:
    return f"{entry['value']:.3f} [{entry['ci_low']:.3f}, {entry['ci_high']:.3f}]"


def test_pool_writes_a_card_that_loads_with_the_metrics_and_their_cis(synth_run: Path) -> None:
    path = synth_run / "README.md"
    metrics = json.loads((synth_run / "metrics.json").read_text())
    card = hub.ModelCard.load(path)  # a local path: read from disk, nothing uploaded or fetched
    data = card.data.to_dict()
    assert data["library_name"] == "crossderm" and data["license"] == "cc-by-nc-4.0"
    assert data["datasets"] == ["HAM10000", "ISIC-2019"]
    assert {"dermoscopy", "research-only", "timm"} <= set(data["tags"])
    assert data["pipeline_tag"] == "image-classification"
    assert card.data.model_name == "demo_b_joint"

    datasets = {"HAM10000": "ham", "ISIC-2019": "isic"}
    seen = set()
    for result in card.data.eval_results:
        source = metrics["sources"][datasets[result.dataset_type]]
        entry = source[METRIC_KEYS[result.metric_type]]
        assert result.metric_value == entry["value"]
        assert (result.metric_args["ci_low"], result.metric_args["ci_high"]) == (entry["ci_low"], entry["ci_high"])
        assert result.metric_args["n_images"] == source["n"] and result.metric_args["ci_level"] == 0.95
        assert result.metric_args["n_resamples"] == metrics["bootstrap"]["n_resamples"]
        seen.add((result.dataset_type, result.metric_type))
    assert len(seen) == 2 * len(METRIC_KEYS)

    text = card.text
    assert "Research use only, not a diagnosis." in text and "## Intended use" in text
    assert "## Known limits" in text and "crossderm.load_predictor" in text
    gap = metrics["gaps"]["ham - isic"]["macro_f1"]
    assert f"(gap ham - isic: {_cell(gap)})" in text  # the cross-site drop, quoted from the run's numbers
    assert "**Synthetic data:** trained and tested on `crossderm synth` images" in text  # the generator's marker


def test_the_per_site_table_matches_metrics_json(synth_run: Path) -> None:
    metrics = json.loads((synth_run / "metrics.json").read_text())
    text = (synth_run / "README.md").read_text()
    section = text.split("### Per site", 1)[1].split("\n## ", 1)[0]
    rows = {m.group(1): m.groups()[1:] for m in re.finditer(r"^\| (\w+/\w+) \| (\d+) \| ([^|]+) \| ([^|]+) \|$",
                                                             section, re.M)}
    assert set(rows) == set(metrics["sites"])
    for key, cell in metrics["sites"].items():
        n, f1, accuracy = rows[key]
        assert int(n) == cell["n"]
        if cell.get("too_few"):
            assert f1.strip() == f"too few (n = {cell['n']})"
        else:
            assert (f1.strip(), accuracy.strip()) == (_cell(cell["macro_f1"]), _cell(cell["accuracy"]))
    summary = metrics.get("site_summary")
    if summary:
        assert f"| mean over sites | | {_cell(summary['mean_macro_f1'])} |" in section


def test_a_run_without_sites(synth_run: Path, tmp_path: Path) -> None:
    run = _copy(synth_run, tmp_path)
    metrics = json.loads((run / "metrics.json").read_text())
    for key in ("sites", "site_summary"):
        metrics.pop(key, None)
    (run / "metrics.json").write_text(json.dumps(metrics))
    card = hub.ModelCard.load(write_model_card(run))
    assert "### Per site" not in card.text and len(card.data.eval_results) == 2 * len(METRIC_KEYS)


def test_export_writes_a_card_beside_the_onnx_file(synth_run: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "onnx" / "model.onnx"
    out.parent.mkdir()
    assert main(["export", "--model", str(synth_run), "--out", str(out), "--fold", "0"]) == 0
    card = hub.ModelCard.load(out.parent / "README.md")
    assert "model.onnx" in card.text and "--backend onnx" in card.text
    assert f"wrote the model card {out.parent / 'README.md'}" in capsys.readouterr().out


def test_an_unrelated_readme_is_never_overwritten(synth_run: Path, tmp_path: Path, capsys) -> None:
    folder = tmp_path / "release"
    folder.mkdir()
    (folder / "README.md").write_text("# my notes\n")
    assert main(["export", "--model", str(synth_run), "--out", str(folder / "derm.onnx"), "--fold", "0"]) == 0
    assert (folder / "README.md").read_text() == "# my notes\n"
    assert CARD_MARKER in (folder / "derm.README.md").read_text()
    assert "is not crossderm's: left as it was" in capsys.readouterr().out

    run = _copy(synth_run, tmp_path)
    (run / "README.md").write_text("# run notes\n")
    assert write_model_card(run) == run / "model.README.md"
    assert (run / "README.md").read_text() == "# run notes\n"
    with pytest.raises(CrossdermError, match="not written by crossderm"):
        write_model_card(run, run / "README.md")
    assert write_model_card(run, run / "model.README.md") == run / "model.README.md"  # its own card: rewritten

"""The Hugging Face-style model card ``README.md`` of a run: YAML front matter + the Markdown a reader needs.

Written by ``crossderm pool`` (and ``cv`` when its last fold finishes) into ``RUN_DIR/README.md``, and by
``crossderm export`` beside the ONNX file. It loads in ``huggingface_hub.ModelCard`` (tested), which this module
does not need: the front matter is plain YAML. Everything comes from the run folder's own files
(:mod:`crossderm.runfolder`): ``config.yaml``, ``run.json``, ``fold_<k>/model.json``, ``metrics.json``,
``calibration.json``, and the data folder's ``dataset.json`` / ``audit.json`` when it is still where ``run.json``
says; nothing is recomputed, so every number in the card is a number of the run.

Front matter (the Hub's model-card metadata spec):

* ``library_name: crossderm``. Not ``timm``: the Hub's timm snippet loads ``config.json`` + ``model.safetensors``
  from the repository root, while a run is a fold ensemble (``fold_<k>/best.safetensors`` + ``model.json``), our
  fusion models exist only once crossderm registers them, and inference needs crossderm's decoding and TTA. The
  architecture is a timm model, so ``timm`` is a tag.
* ``license``: the licence of the *training data*: HAM10000 and ISIC 2019 are CC BY-NC 4.0, so the weights
  inherit ``cc-by-nc-4.0``; ``unknown`` when a training source's licence is not known to crossderm.
* ``model-index``: one result per test source (dataset type = the dataset id), metrics macro-F1 (``f1``,
  average macro), accuracy, balanced accuracy and one-vs-rest macro AUC (``roc_auc``), each with its 95 %
  bootstrap CI in ``args`` (``ci_low``, ``ci_high``, ``ci_level``, ``n_resamples``, ``n_images``) and in its name.

A README.md in the target folder that crossderm did not write (no :data:`CARD_MARKER`) is never overwritten:
:func:`card_path_beside` then names ``<stem>.README.md`` instead.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from crossderm.datafolder import AUDIT_JSON, DATASET_INFO, SYNTHETIC_MARKER
from crossderm.defaults import CI_LEVEL
from crossderm.errors import CrossdermError
from crossderm.fsutil import atomic_write_text
from crossderm.labels import CLASSES
from crossderm.models.card import ModelCard, read_card
from crossderm.runfolder import HUB_CARD, RunFolder

CARD_MARKER = "<!-- crossderm model card"
# Written beside a synthetic download by crossderm.api.synthesize (so by `crossderm demo`); the generator's own
# files mimic the official downloads exactly, so without it a card cannot tell synthetic data from real.
LIBRARY = "crossderm"
TASK = "image-classification"
RESEARCH_ONLY = "Research use only, not a diagnosis."


@dataclass(frozen=True)
class Dataset:
    id: str  # for `datasets:` and model-index dataset.type
    name: str
    licence: str | None  # Hub licence id; None: unknown
    citation: str


DATASETS = {
    "ham": Dataset("HAM10000", "HAM10000", "cc-by-nc-4.0",
                   "Tschandl P, Rosendahl C, Kittler H. The HAM10000 dataset, a large collection of multi-source "
                   "dermatoscopic images of common pigmented skin lesions. Sci Data 5, 180161 (2018). "
                   "https://doi.org/10.1038/sdata.2018.161"),
    "isic": Dataset("ISIC-2019", "ISIC 2019 training set without its HAM10000 images", "cc-by-nc-4.0",
                    "ISIC 2019 challenge training data (BCN_20000, HAM10000, MSK): Codella NCF et al., "
                    "arXiv:1710.05006 (2017); Hernandez-Perez C et al., BCN20000, Sci Data 11, 641 (2024). "
                    "https://challenge.isic-archive.com/data/#2019"),
}
# metrics.json key -> (Hub metric type, display name, compute args)
METRICS = {
    "macro_f1": ("f1", "macro-F1", {"average": "macro"}),
    "accuracy": ("accuracy", "accuracy", {}),
    "balanced_accuracy": ("balanced_accuracy", "balanced accuracy", {}),
    "macro_auc": ("roc_auc", "macro AUC, one-vs-rest", {"average": "macro", "multi_class": "ovr"}),
}
PROTOCOLS = {
    "cv": "lesion-grouped stratified {folds}-fold cross-validation per source (all images of a lesion in one "
          "fold); each test image is predicted once, by the model that did not train on its fold (out-of-fold)",
    "loso": "leave-one-site-out: one model per held-out site, trained on every other site, tested on that site",
    "site-matrix": "site matrix: one model per training site, tested on every other site",
}


def card_path_beside(folder: Path, stem: str) -> Path:
    """``folder/README.md``, unless it exists and crossderm did not write it: then ``folder/<stem>.README.md``."""
    readme = Path(folder) / HUB_CARD
    if readme.is_file() and not written_by_crossderm(readme):
        return readme.with_name(f"{stem}.{HUB_CARD}")
    return readme


def written_by_crossderm(path: Path) -> bool:
    try:
        return CARD_MARKER in path.read_text(errors="replace")
    except OSError:
        return False


def write_model_card(run_dir: str | Path, out: str | Path | None = None, onnx: dict[str, Any] | None = None) -> Path:
    """Write the run's model card to ``out`` (default ``RUN_DIR/README.md``, or ``RUN_DIR/model.README.md`` when a
    README.md not written by crossderm is there); return the path. ``onnx``: the sidecar of an exported ONNX file,
    described in the card (``crossderm export``). A foreign README.md at ``out`` itself is refused."""
    run = RunFolder(run_dir).require()
    path = Path(out) if out is not None else card_path_beside(run.path, "model")
    if path.is_file() and not written_by_crossderm(path):
        raise CrossdermError(f"{path}: exists and was not written by crossderm; refusing to overwrite it")
    atomic_write_text(path, render_model_card(run, onnx))
    return path


def render_model_card(run: RunFolder, onnx: dict[str, Any] | None = None) -> str:
    config, info, metrics = run.read_config(), run.read_run_info(), run.read_metrics()
    cards = [read_card(f.model_card) for f in run.folds() if f.model_card.is_file()]
    if not cards:
        raise CrossdermError(f"{run.path}: no finished folds (fold_<k>/model.json); nothing to describe")
    data = _data_folder(info)
    synthetic = _synthetic(data[0]) if data else None
    front = front_matter(config, cards[0], metrics, synthetic)
    body = [
        f"# {config['name']}: 7-class dermoscopic lesion classifier (crossderm)",
        "",
        f"{CARD_MARKER}: written by crossderm.models.hub_card from this run's files; regenerated by "
        "`crossderm pool` and `crossderm export` -->",
        "",
        f"> **{RESEARCH_ONLY}** This model has not been clinically validated; its output must not guide the "
        "care of any patient.",
        "",
        *_description(config, info, cards, run, onnx),
        *_intended_use(),
        *_training(config, info, data, synthetic),
        *_results(metrics),
        *_limits(config, metrics, synthetic),
        *_usage(run, onnx),
        *_citation(config),
    ]
    text = yaml.safe_dump(front, sort_keys=False, allow_unicode=True, width=1000)
    return f"---\n{text}---\n\n" + "\n".join(body).rstrip() + "\n"


def front_matter(config: dict, card: ModelCard, metrics: dict, synthetic: bool | None) -> dict[str, Any]:
    train = list(config.get("train_sources", []))
    licences = {DATASETS[s].licence if s in DATASETS else None for s in train}
    tags = [LIBRARY, TASK, "dermatology", "dermoscopy", "skin-lesion-classification", "medical-imaging",
            "cross-dataset", "research-only", "timm", card.model.lower(), f"protocol-{config.get('protocol', 'cv')}"]
    if synthetic:
        tags.append("synthetic-data")
    return {
        "library_name": LIBRARY,
        "pipeline_tag": TASK,
        "license": licences.pop() if len(licences) == 1 and None not in licences else "unknown",
        "tags": tags,
        "datasets": [_dataset(s).id for s in train],
        "metrics": [hub for hub, _, _ in METRICS.values()],
        "model-index": [{"name": config["name"], "results": [
            _result(source, section, config, metrics) for source, section in metrics["sources"].items()
        ]}],
    }


def _result(source: str, section: dict, config: dict, metrics: dict) -> dict[str, Any]:
    boot = metrics.get("bootstrap", {})
    external = source in config.get("external_sources", [])
    split = "external (mean of the fold models)" if external else "out-of-fold"
    entries = []
    for key, (hub, name, args) in METRICS.items():
        entry = section.get(key) or {}
        if entry.get("value") is None:
            continue
        ci = entry.get("ci_low") is not None and entry.get("ci_high") is not None
        label = f"{name} ({_ci_text(boot)} {entry['ci_low']:.3f}-{entry['ci_high']:.3f})" if ci else name
        entries.append({"type": hub, "name": label, "value": entry["value"], "args": {
            **args, "ci_low": entry.get("ci_low"), "ci_high": entry.get("ci_high"),
            "ci_level": boot.get("ci", CI_LEVEL), "n_resamples": boot.get("n_resamples"), "n_images": section["n"],
        }})
    dataset = _dataset(source)
    return {
        "task": {"type": TASK, "name": "7-class dermoscopic skin-lesion classification"},
        "dataset": {"type": dataset.id, "name": f"{dataset.name} ({split})", "split": split},
        "metrics": entries,
    }


def _dataset(source: str) -> Dataset:
    return DATASETS.get(source, Dataset(source, source, None, f"{source}: a dataset of your own (`--source`)"))


def _ci_text(boot: dict) -> str:
    return f"{round(100 * boot.get('ci', CI_LEVEL))}% CI"


def _value(entry: dict | None, digits: int = 3) -> str:
    if not entry or entry.get("value") is None:
        return "n/a"
    if entry.get("ci_low") is None or entry.get("ci_high") is None:
        return f"{entry['value']:.{digits}f}"
    return f"{entry['value']:.{digits}f} [{entry['ci_low']:.{digits}f}, {entry['ci_high']:.{digits}f}]"


def _data_folder(info: dict) -> tuple[dict, dict | None] | None:
    """dataset.json (and audit.json) of the run's DATA_DIR when still there."""
    folder = Path(info.get("data", ""))
    try:
        dataset = json.loads((folder / DATASET_INFO).read_text())
    except (OSError, ValueError):
        return None
    try:
        audit = json.loads((folder / AUDIT_JSON).read_text())
    except (OSError, ValueError):
        audit = None
    return dataset, audit


def _synthetic(dataset: dict) -> bool | None:
    """True when an input folder of dataset.json (or its parent) holds :data:`SYNTHETIC_MARKER`; None: unknown."""
    inputs = dataset.get("inputs") or {}
    folders = [inputs.get(k) for k in ("ham", "isic")] + [s.partition("=")[2] for s in inputs.get("sources") or []]
    for folder in (Path(f) for f in folders if f):
        if (folder / SYNTHETIC_MARKER).is_file() or (folder.parent / SYNTHETIC_MARKER).is_file():
            return True
    return None


def _description(config: dict, info: dict, cards: list[ModelCard], run: RunFolder, onnx: dict | None) -> list[str]:
    card = cards[0]
    calibration = run.read_calibration()
    lines = [
        "## Model description", "",
        f"- **Architecture:** `{card.model}` (timm name; crossderm's fusion models are registered in timm's registry), "
        f"{card.parameters:,} parameters, {len(CLASSES)} classes: {', '.join(CLASSES)}.",
        f"- **Input:** RGB, shorter side resized to {card.image_size} px and centre-cropped to {card.image_size} x "
        f"{card.image_size} (`crossderm.imaging`), scaled to [0, 1] and normalised with mean {card.mean} and std "
        f"{card.std}" + (f", after `{colour}` colour constancy." if (colour := getattr(card, "color_constancy", "none"))
                         not in (None, "none") else "."),
        f"- **Test-time augmentation:** {card.tta} flip view(s) (identity, horizontal, vertical, both), "
        "probabilities averaged.",
        f"- **Ensemble:** {len(cards)} fold model(s) ({', '.join(f'fold_{c.fold}' for c in cards)}), softmax "
        "probabilities averaged over folds.",
        f"- **Pretrained:** {'yes' if config.get('pretrained') else 'no, trained from scratch'}.",
    ]
    if calibration:
        lines.append("- **Calibration:** per-fold temperatures in `calibration.json` (optional, "
                     "`load_predictor(..., calibrated=True)`).")
    if onnx:
        lines.append(f"- **ONNX export:** `{onnx['onnx_file']}` (opset {onnx['opset']}, folds {onnx['folds']}, "
                     f"sha256 `{onnx['sha256']}`); TTA runs outside the graph.")
    lines += ["", "| fold | job | best epoch | val macro-F1 | weights sha256 |", "|--:|:--|--:|--:|:--|"]
    jobs = info.get("jobs", {})
    lines += [f"| {c.fold} | {jobs.get(str(c.fold), '')} | {c.best_epoch} | {c.val_score:.3f} | `{c.sha256[:16]}…` |"
              for c in cards]
    return [*lines, ""]


def _intended_use() -> list[str]:
    return [
        "## Intended use", "",
        f"**{RESEARCH_ONLY}** Intended for research on dermoscopic image classification and on how classifiers "
        "generalise across datasets and acquisition sites (reproducing and extending Rashid et al., 2026). Out of "
        "scope: any clinical or screening use, self-diagnosis, images that are not dermoscopic, lesions outside the "
        "seven classes, and commercial use (the training data are licensed non-commercially).", "",
    ]


def _training(config: dict, info: dict, data: tuple[dict, dict | None] | None, synthetic: bool | None) -> list[str]:
    protocol = config.get("protocol", "cv")
    folds = data[0].get("folds", "k") if data else "k"
    lines = ["## Training data and protocol", "", "| source | role | dataset | licence | images |",
             "|:--|:--|:--|:--|--:|"]
    images = (data[1] or {}).get("images", {}) if data else {}
    roles: dict[str, list[str]] = {}
    for key in ("train_sources", "test_sources", "external_sources"):
        for source in config.get(key, []):
            roles.setdefault(source, []).append(key.split("_")[0])
    for source, role in roles.items():
        dataset = _dataset(source)
        n = images.get(source, {}).get("total", "")
        lines.append(f"| {source} | {', '.join(role)} | {dataset.name} | {dataset.licence or 'unknown'} | {n} |")
    sites = sorted((data[1] or {}).get("sites", {})) if data else []
    synthetic_text = ("**synthetic** images from `crossderm synth` (official file layouts, generated lesions)"
                      if synthetic else "unknown: the run does not record whether its images were real or "
                      "synthetic (no `crossderm-synth.json` beside the inputs named in the data folder's "
                      "`dataset.json`)")
    lines += [
        "",
        f"- **Sites:** {', '.join(sites) if sites else 'not recorded (no site column or data folder not found)'}.",
        f"- **Protocol:** {PROTOCOLS.get(protocol, protocol).format(folds=folds)}; model selection on a "
        f"lesion-grouped {config.get('val_fraction', 0.1):.0%} inner validation split of the training images, "
        "never the test fold.",
        f"- **Sampler:** `{config.get('sampler')}`; **epochs:** {config.get('epochs')}; **batch size:** "
        f"{config.get('batch_size')}; **lr:** {config.get('lr')} (AdamW, warm-up + cosine); **label smoothing:** "
        f"{config.get('label_smoothing')}; **seed:** {config.get('seed')}.",
        f"- **Data:** {synthetic_text}.",
        f"- **Environment:** crossderm {info.get('environment', {}).get('crossderm', '?')}, torch "
        f"{info.get('environment', {}).get('torch', '?')}, git {info.get('environment', {}).get('git_revision')}.",
        "",
    ]
    return lines


def _results(metrics: dict) -> list[str]:
    boot = metrics.get("bootstrap", {})
    ci = _ci_text(boot)
    lines = ["## Results", "",
             f"Out-of-fold predictions of this run, {ci} percentile bootstrap over images "
             f"({boot.get('n_resamples')} resamples, seed {boot.get('seed')}); from `metrics.json`.", "",
             "| test source | n | macro-F1 | accuracy | balanced accuracy | macro AUC |", "|:--|--:|:--|:--|:--|:--|"]
    for source, s in metrics["sources"].items():
        lines.append(f"| {source} | {s['n']} | {_value(s.get('macro_f1'))} | {_value(s.get('accuracy'))} | "
                     f"{_value(s.get('balanced_accuracy'))} | {_value(s.get('macro_auc'))} |")
    if metrics.get("gaps"):
        lines += ["", "### Generalisation gap", "", "| gap | macro-F1 | accuracy | balanced accuracy |",
                  "|:--|:--|:--|:--|"]
        lines += [f"| {name} | {_value(g.get('macro_f1'))} | {_value(g.get('accuracy'))} | "
                  f"{_value(g.get('balanced_accuracy'))} |" for name, g in metrics["gaps"].items()]
    sites = metrics.get("sites") or {}
    if sites:
        lines += ["", "### Per site", "", "| site | n | macro-F1 | accuracy |", "|:--|--:|:--|:--|"]
        for key, cell in sites.items():
            if cell.get("too_few"):
                lines.append(f"| {key} | {cell['n']} | too few (n = {cell['n']}) | too few |")
            else:
                lines.append(f"| {key} | {cell['n']} | {_value(cell.get('macro_f1'))} | "
                             f"{_value(cell.get('accuracy'))} |")
        summary = metrics.get("site_summary")
        if summary:
            worst = summary["worst_site"]
            lines += [f"| mean over sites | | {_value(summary['mean_macro_f1'])} | |",
                      f"| worst site: {worst['site']} | | {_value(worst['macro_f1'])} | |",
                      f"| minimum over sites (per resample) | | {_value(summary['min_macro_f1'])} | |"]
    return [*lines, ""]


def _limits(config: dict, metrics: dict, synthetic: bool | None) -> list[str]:
    lines = ["## Known limits", ""]
    sources = metrics["sources"]
    for name, gap in (metrics.get("gaps") or {}).items():
        ref, other, entry = gap["reference"], gap["other"], gap.get("macro_f1") or {}
        if entry.get("value") is None:
            continue
        point = {s: _value({"value": sources[s]["macro_f1"]["value"]}) for s in (ref, other)}
        measured = f"macro-F1 {point[ref]} on {ref} vs {point[other]} on {other} (gap {name}: {_value(entry)})"
        low, high = entry.get("ci_low"), entry.get("ci_high")
        if entry["value"] > 0:
            verdict = "a cross-site drop" + (" whose CI includes 0" if low is not None and low <= 0 else "")
        else:
            verdict = f"no drop measured ({other} scored at least as well)" + (
                "; the CI includes 0" if high is not None and high >= 0 else "")
        lines.append(f"- **Cross-site performance:** {measured}: {verdict}.")
    summary = metrics.get("site_summary")
    if summary:
        worst = summary["worst_site"]
        lines.append(f"- **Weakest site:** {worst['site']} macro-F1 {_value(worst['macro_f1'])} against a mean over "
                     f"sites of {_value(summary['mean_macro_f1'])}.")
    too_few = [k for k, c in (metrics.get("sites") or {}).items() if c.get("too_few")]
    if too_few:
        lines.append(f"- **Sites too small to score** (under 30 images): {', '.join(too_few)}.")
    for source, s in sources.items():
        absent = [c for c in CLASSES if c not in s.get("classes_present", CLASSES)]
        if absent:
            lines.append(f"- **Classes absent from the {source} test set:** {', '.join(absent)}: no per-class "
                         "result for them there, and the macro averages of that source skip them.")
    if synthetic:
        lines.append("- **Synthetic data:** trained and tested on `crossderm synth` images; these numbers say "
                     "nothing about real dermoscopy.")
    else:
        lines.append("- **Real or synthetic data:** unknown (see Training data).")
    lines += [
        "- Seven classes only (ISIC 2019's SCC is folded into akiec by the default label map; no 'unknown' class): "
        "every image gets one of the seven, even when it shows none of them.",
        "- Dermoscopic images of the sources above only (public sets such as HAM10000 and ISIC 2019 hold few images "
        "of darker skin). Not validated prospectively, on other devices or on other populations.",
        "",
    ]
    return lines


def _usage(run: RunFolder, onnx: dict | None) -> list[str]:
    lines = ["## How to use", "", "```python", "import crossderm", "",
             f'predictor = crossderm.load_predictor("{run.path}")  # the run folder: fold_<k>/ + model.json',
             'table = predictor.predict(["lesion.jpg"])  # paths, folders, PIL images or uint8 arrays',
             'print(table[["image_id", "predicted", *predictor.classes]])', "```", "",
             f"Command line: `crossderm predict --model {run.path} images/ --out pred.csv`."]
    if onnx:
        lines.append(f"ONNX: `crossderm predict --backend onnx --onnx-model {onnx['onnx_file']} images/ --out "
                     "pred.csv` (the sidecar `.onnx.json` must sit beside it).")
    return [*lines, ""]


def _citation(config: dict) -> list[str]:
    sources = list(dict.fromkeys(config.get("train_sources", []) + config.get("test_sources", [])
                                 + config.get("external_sources", [])))
    lines = ["## Citation", "",
             "Protocol: Rashid et al., *Multi-source training on cross-dataset in dermoscopic skin cancer "
             "classification* (2026). Data:"]
    lines += [f"- {_dataset(s).citation}" for s in sources]
    return lines

"""How well the out-of-distribution scores find what the model never saw: AUROC with bootstrap CIs.

Two questions, each with a positive set (should score high) and an in-distribution set:
- "is this image from a held-out site?" (leave-one-site-out runs): per held-out site, its test images against
  the inner-validation images of the same job (seen sites, same model, never trained on);
- "is this image of a class held out of training?" (ISIC 2019's UNK-like case, ``held_out_classes``): the
  test images of those classes against the other test images.
AUROC 0.5 = the score cannot tell them apart. The CI resamples images (positives and negatives together),
computed exactly like the per-class AUROC CIs of ``crossderm evaluate``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from crossderm.defaults import OOD_COLUMNS
from crossderm.evaluate.metrics import bootstrap_auc, interval, ovr_auc
from crossderm.evaluate.predictions import source_rng


def auroc(scores: np.ndarray, is_ood: np.ndarray, n_resamples: int, rng: np.random.Generator) -> dict[str, Any]:
    """AUROC of ``scores`` for ``is_ood`` with its percentile-bootstrap CI (None where undefined)."""
    y = np.asarray(is_ood, dtype=np.int64)
    if y.min() == y.max() or not np.isfinite(scores).all():
        return {"value": None, "ci_low": None, "ci_high": None}
    two = np.column_stack([-scores, scores])
    point = float(ovr_auc(y, two)[1])
    return interval(point, bootstrap_auc(y, two, n_resamples, rng)[:, 1])


def _cell(frame: pd.DataFrame, is_ood: np.ndarray, n_resamples: int, seed: int, key: str) -> dict[str, Any]:
    cell: dict[str, Any] = {"n_ood": int(is_ood.sum()), "n_in_distribution": int((~is_ood).sum())}
    for score in OOD_COLUMNS:
        if score in frame.columns:
            values = pd.to_numeric(frame[score], errors="coerce").to_numpy(dtype=np.float64)
            cell[score] = auroc(values, is_ood, n_resamples, source_rng(seed, f"ood:{key}:{score}"))
    return cell


def held_out_site_auroc(
    tested: pd.DataFrame, validation: dict[int, pd.DataFrame], jobs: dict[int, str], n_resamples: int, seed: int
) -> dict[str, Any]:
    """Per leave-one-site-out job: its held-out site's test images vs its own inner-validation images."""
    cells = {}
    for fold, site in jobs.items():
        ood = tested[tested["fold"] == fold]
        both = pd.concat([ood, validation[fold]], ignore_index=True)
        cells[site] = _cell(both, np.arange(len(both)) < len(ood), n_resamples, seed, site)
    mean = {score: float(np.mean([c[score]["value"] for c in cells.values() if c.get(score, {}).get("value")
                                  is not None])) for score in OOD_COLUMNS if any(score in c for c in cells.values())}
    return {"sites": cells, "mean_auroc": mean}


def held_out_class_auroc(tested: pd.DataFrame, classes: Sequence[str], n_resamples: int, seed: int) -> dict[str, Any]:
    """Test images of the classes held out of training vs every other test image."""
    is_ood = tested["label"].isin(classes).to_numpy()
    return {"classes": list(classes), **_cell(tested, is_ood, n_resamples, seed, "+".join(classes))}


def render_ood(ood: dict[str, Any]) -> list[str]:
    """metrics.md lines for the OOD section."""

    def fmt(entry: dict[str, Any] | None) -> str:
        if not entry or entry.get("value") is None:
            return "n/a"
        return f"{entry['value']:.3f} [{entry['ci_low']:.3f}, {entry['ci_high']:.3f}]"

    lines = ["", "## Out-of-distribution scores (AUROC, 95% CI)", "",
             "| question | n OOD | n in-distribution | " + " | ".join(OOD_COLUMNS) + " |", "|:--|--:|--:|" + ":--|" * 3]
    for site, cell in (ood.get("held_out_site") or {}).get("sites", {}).items():
        lines.append(f"| held-out site {site} | {cell['n_ood']} | {cell['n_in_distribution']} | "
                     + " | ".join(fmt(cell.get(s)) for s in OOD_COLUMNS) + " |")
    if ood.get("held_out_class"):
        cell = ood["held_out_class"]
        lines.append(f"| held-out class {'+'.join(cell['classes'])} | {cell['n_ood']} | {cell['n_in_distribution']} | "
                     + " | ".join(fmt(cell.get(s)) for s in OOD_COLUMNS) + " |")
    return lines

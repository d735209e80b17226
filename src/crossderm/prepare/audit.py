"""The leakage / overlap audit written next to every manifest (``audit.json`` and ``audit.md``).

It answers what a reviewer asks before trusting a cross-dataset number: how many HAM10000 images were
removed from ISIC 2019 and by which rule, what was dropped or missing, how classes spread over sources and
folds, how many images each lesion has, and whether any near-identical images (perceptual hash) sit in
two sources or two folds, where they would leak.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from crossderm.labels import CLASSES
from crossderm.prepare.sources import SourceReport
from crossderm.split.folds import fold_table

EXAMPLES = 10


def near_duplicate_pairs(hashes: np.ndarray, max_distance: int, block: int = 1024) -> np.ndarray:
    """All pairs ``i < j`` whose 64-bit hashes differ in at most ``max_distance`` bits, as rows (i, j, distance).

    Blocked all-pairs XOR + popcount: 25k images take about a second and bounded memory.
    """
    hashes = np.ascontiguousarray(hashes, dtype=np.uint64)
    found: list[np.ndarray] = []
    for start in range(0, len(hashes), block):
        rows = hashes[start : start + block]
        distance = np.bitwise_count(rows[:, None] ^ hashes[None, start:])
        i, j = np.nonzero(distance <= max_distance)
        keep = j > i
        i, j = i[keep], j[keep]
        found.append(np.stack([i + start, j + start, distance[i, j]], axis=1))
    return np.concatenate(found) if found else np.zeros((0, 3), dtype=np.int64)


def confirm_pairs(cache: np.ndarray, pairs: np.ndarray, min_correlation: float, chunk: int = 512) -> np.ndarray:
    """Keep candidate pairs whose grey-level images correlate at least ``min_correlation``.

    pHash alone is weak on dermoscopy (a dark blob on skin): at Hamming 2-8 most candidate pairs are
    different lesions (grey correlation ~0.8), while true duplicates correlate above 0.99. Returns rows
    (i, j, hamming, correlation x 1000).
    """
    kept: list[np.ndarray] = []
    for start in range(0, len(pairs), chunk):
        block = pairs[start : start + chunk]
        a, b = (_grey_unit(cache[np.sort(block[:, k])])[np.argsort(np.argsort(block[:, k]))] for k in (0, 1))
        correlation = (a * b).sum(axis=1)
        keep = correlation >= min_correlation
        kept.append(np.column_stack([block[keep], np.round(correlation[keep] * 1000).astype(np.int64)]))
    return np.concatenate(kept) if kept else np.zeros((0, 4), dtype=np.int64)


def _grey_unit(images: np.ndarray) -> np.ndarray:
    grey = images.astype(np.float32).mean(axis=-1).reshape(len(images), -1)
    grey -= grey.mean(axis=1, keepdims=True)
    return grey / np.maximum(np.linalg.norm(grey, axis=1, keepdims=True), 1e-6)


def _leaking_pairs(table: pd.DataFrame, pairs: np.ndarray) -> pd.DataFrame:
    """Near-duplicates that cross a source or a fold boundary; same-lesion views are expected and skipped."""
    a, b = table.iloc[pairs[:, 0]].reset_index(drop=True), table.iloc[pairs[:, 1]].reset_index(drop=True)
    frame = pd.DataFrame(
        {
            "image_a": a["image_id"],
            "source_a": a["source"],
            "fold_a": a["fold"],
            "image_b": b["image_id"],
            "source_b": b["source"],
            "fold_b": b["fold"],
            "hamming": pairs[:, 2],
            "correlation": pairs[:, 3] / 1000,
        }
    )
    cross_source = frame["source_a"] != frame["source_b"]
    cross_fold = ~cross_source & (frame["fold_a"] != frame["fold_b"])
    frame["kind"] = np.where(cross_source, "cross_source", np.where(cross_fold, "cross_fold", "same_fold"))
    return (
        frame[frame["kind"] != "same_fold"]
        .sort_values(["correlation", "image_a"], ascending=[False, True])
        .reset_index(drop=True)
    )


def _images_per_lesion(table: pd.DataFrame) -> dict[str, dict]:
    out = {}
    for source, part in table.groupby("source"):
        sizes = part.groupby("lesion_group").size()
        with_id = part[part["lesion_id"] != ""]
        out[source] = {
            "images": len(part),
            "lesion_groups": int(sizes.size),
            "images_with_lesion_id": len(with_id),
            "lesions": int(with_id["lesion_id"].nunique()),
            "mean_images_per_group": round(float(sizes.mean()), 3),
            "max_images_per_group": int(sizes.max()),
            "groups_by_size": {str(k): int(v) for k, v in sizes.value_counts().sort_index().items()},
        }
    return out


def _site_counts(table: pd.DataFrame) -> dict[str, dict[str, int]]:
    """Images per ``source/site`` x class (the sites the per-site and leave-one-site-out evaluations use)."""
    return _counts(table.assign(source=table["source"] + "/" + table["site"]))


def _counts(table: pd.DataFrame) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for source, part in table.groupby("source"):
        counts = part["label"].value_counts()
        out[source] = {c: int(counts.get(c, 0)) for c in CLASSES}
        out[source]["total"] = len(part)
    return out


def build_audit(
    labelled: pd.DataFrame,
    kept: pd.DataFrame,
    reports: dict[str, SourceReport],
    pairs: np.ndarray,
    max_distance: int,
    min_correlation: float,
) -> dict:
    """``labelled``: every harmonised row with its fold; ``kept``: the rows whose image was cached."""
    missing = labelled[labelled["path"] == ""]
    leaks = _leaking_pairs(kept, pairs)
    folds = fold_table(kept)
    return {
        "sources": {
            name: {
                "metadata_files": r.metadata_files,
                "metadata_rows": r.rows,
                **({"overlap_removed": r.removed} if r.removed else {}),
                **({"dropped_unmapped_labels": r.dropped_labels} if r.removed or r.dropped_labels else {}),
                **({"sites_from_file": r.sites_from_file} if r.sites_from_file else {}),
            }
            for name, r in reports.items()
        },
        "labelled_images": _counts(labelled),
        "missing_images": {
            "total": len(missing),
            "per_source": {k: int(v) for k, v in missing["source"].value_counts().items()},
            "examples": missing["image_id"].head(EXAMPLES).tolist(),
        },
        "images": _counts(kept),
        "sites": _site_counts(kept),
        "metadata_missing": {
            column: {source: int((part[column] == "").sum()) for source, part in kept.groupby("source")}
            for column in ("age", "sex", "anatom_site")
        },
        "per_fold": {
            f"{source}/{label}": {str(f): int(n) for f, n in row.items()} for (source, label), row in folds.iterrows()
        },
        "lesions": _images_per_lesion(kept),
        "lesion_grouping": {
            "check": "passed",
            "groups": int(labelled["lesion_group"].nunique()),
            "rule": "lesion_id, or the image itself when it has none; no group spans two folds",
        },
        "near_duplicates": {
            "method": "64-bit pHash of the cached image (imagehash.phash) as candidates, "
            "confirmed by grey-level correlation",
            "max_hamming": max_distance,
            "min_correlation": min_correlation,
            "pairs": len(pairs),
            "cross_source": int((leaks["kind"] == "cross_source").sum()),
            "cross_fold": int((leaks["kind"] == "cross_fold").sum()),
            "examples": leaks.head(EXAMPLES).to_dict(orient="records"),
        },
    }


def render_audit(audit: dict) -> str:
    """The human-readable audit (Markdown), also printed by ``crossderm prepare``."""
    lines = ["# crossderm data audit", ""]
    for name, info in audit["sources"].items():
        lines.append(f"- **{name}**: {info['metadata_rows']} metadata rows ({', '.join(info['metadata_files'])})")
        removed = info.get("overlap_removed")
        if removed:
            lines.append(
                f"  - removed {removed['ham_images_removed']} HAM10000 images from ISIC 2019 "
                f"(by HAM image id {removed['by_ham_image_id']}, by `HAM_` lesion prefix "
                f"{removed['by_ham_lesion_prefix']}, by id range {removed['by_ham_id_range']})"
            )
        if "dropped_unmapped_labels" in info:
            lines.append(f"  - dropped by the label map: {info['dropped_unmapped_labels'] or 'none'}")
        if info.get("sites_from_file"):
            lines.append(f"  - site taken from the --sites file for {info['sites_from_file']} images")
    lines += ["", "## Labelled images after harmonisation (metadata)", "", _table(audit["labelled_images"])]
    missing = audit["missing_images"]
    lines += ["", f"## Missing image files: {missing['total']}", ""]
    if missing["total"]:
        lines.append(f"per source {missing['per_source']}; e.g. {', '.join(missing['examples'])} (dropped)")
    lines += ["", "## Images cached", "", _table(audit["images"]), "", "## Images per fold", ""]
    per_fold = pd.DataFrame(audit["per_fold"]).T
    lines += ["```", per_fold.to_string(), "```", "", "## Lesions", ""]
    for source, info in audit["lesions"].items():
        lines.append(
            f"- {source}: {info['images']} images in {info['lesion_groups']} lesion groups "
            f"(mean {info['mean_images_per_group']}, max {info['max_images_per_group']} images per group; "
            f"{info['images_with_lesion_id']} images carry a lesion id)"
        )
    lines += ["", "## Images per site and class", "", _table(audit["sites"]), "", "## Missing metadata (images)", ""]
    lines += ["```", pd.DataFrame(audit["metadata_missing"]).to_string(), "```"]
    grouping = audit["lesion_grouping"]
    lines += ["", f"## Lesion grouping: {grouping['check']} ({grouping['groups']} groups; {grouping['rule']})"]
    dup = audit["near_duplicates"]
    lines += [
        "",
        f"## Near-duplicates (pHash Hamming <= {dup['max_hamming']}, grey correlation >= {dup['min_correlation']})",
        "",
        f"{dup['pairs']} pairs; {dup['cross_source']} cross a source, "
        f"{dup['cross_fold']} cross a fold (same-lesion views in one fold are expected).",
    ]
    if dup["examples"]:
        lines += ["", "```", pd.DataFrame(dup["examples"]).to_string(index=False), "```"]
    return "\n".join(lines) + "\n"


def _table(counts: dict[str, dict[str, int]]) -> str:
    frame = pd.DataFrame(counts).T
    return "```\n" + frame.to_string() + "\n```"

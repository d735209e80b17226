"""What ``GET /api/model`` says about the served model: identity, folds, metrics with CIs, inputs and limits.

Built in the model worker, which has the ensemble loaded, and sent to the server once in its ready message; the
server never loads a model itself.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from crossderm import __version__
from crossderm.evaluate.metrics import HEADLINE_METRICS
from crossderm.labels import CLASS_DESCRIPTIONS, CLASSES
from crossderm.patient import ANATOM_SITES, MAX_AGE, METADATA_FIELDS, SEXES
from crossderm.runfolder import RunFolder
from crossderm.serve.limits import ServeLimits

if TYPE_CHECKING:
    from crossderm.predict.ensemble import Ensemble


def metadata_inputs(used: bool) -> dict[str, Any]:
    """Whether the model reads patient metadata, the form fields ``POST /api/predict`` takes for it and their
    values (blank = missing); a model that does not use them ignores the fields."""
    return {
        "used": used,
        "fields": list(METADATA_FIELDS),
        "vocabulary": {"age": {"min": 0, "max": MAX_AGE, "unit": "years"}, "sex": list(SEXES),
                       "anatom_site": list(ANATOM_SITES)},
    }


def provenance(ensemble: Ensemble, limits: ServeLimits) -> dict[str, Any]:
    """What the page shows about the model: identity, size, folds and the run's metrics with 95 % CIs."""
    from crossderm.predict.gradcam import MIN_GRID, target_layer_names

    folder = RunFolder(ensemble.run_dir)
    run = folder.read_run_info() if folder.run_info.is_file() else {}
    metrics = folder.read_metrics() if folder.metrics.is_file() else {}
    card = ensemble.card
    sources = {
        name: {"n": summary.get("n"), **{key: summary.get(key) for key in HEADLINE_METRICS}}
        for name, summary in (metrics.get("sources") or {}).items()
    }
    gaps = {
        name: {key: gap.get(key) for key in HEADLINE_METRICS} for name, gap in (metrics.get("gaps") or {}).items()
    }
    environment = run.get("environment", {})
    return {
        "experiment": card.experiment,
        "run": ensemble.run_dir.name,
        "model": card.model,
        "parameters": card.parameters,
        "folds": ensemble.folds,
        "image_size": ensemble.image_size,
        "tta_views": card.tta,
        "classes": [{"id": c, "name": CLASS_DESCRIPTIONS[c]} for c in CLASSES],
        "metadata": metadata_inputs(ensemble.needs_metadata),
        "metrics": sources or None,
        "gaps": gaps or None,
        "bootstrap": metrics.get("bootstrap"),
        "trained_with": {key: environment.get(key) for key in ("crossderm", "git_revision", "torch")},
        "gradcam": {
            "layers": target_layer_names(ensemble.members[0].model, ensemble.image_size),
            "min_grid": MIN_GRID,
            "folds_averaged": len(ensemble.members),
        },
        "served_by": f"crossderm {__version__}",
        "limits": asdict(limits),
    }

"""crossderm: cross-dataset training and evaluation of dermoscopic skin-lesion classifiers.

The pipeline, one subpackage per stage: ``prepare`` (official files -> harmonised manifest + image cache),
``split`` (lesion-grouped folds), ``train`` (models, samplers, engine, cross-validation),
``predict`` (TTA inference), ``evaluate`` (metrics with bootstrap CIs) and ``report``.

The Python API (:mod:`crossderm.api`, see ``docs/api.md``) is re-exported here and imported on first use, so
``import crossderm`` loads neither torch nor pandas::

    import crossderm
    predictor = crossderm.load_predictor("runs/b")
    table = predictor.predict(["lesion.jpg"])
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = [
    "Predictor", "__version__", "cross_validate", "evaluate_predictions", "load_predictor", "pool", "prepare_data",
    "presets", "synthesize", "write_model_card", "write_report",
]
API = frozenset(__all__) - {"__version__"}  # the names of crossderm.api re-exported here (tested to agree)

if TYPE_CHECKING:
    from crossderm.api import (
        Predictor,
        cross_validate,
        evaluate_predictions,
        load_predictor,
        pool,
        prepare_data,
        presets,
        synthesize,
        write_model_card,
        write_report,
    )


def __getattr__(name: str) -> Any:
    if name in API:
        from crossderm import api

        value = getattr(api, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'crossderm' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *API})

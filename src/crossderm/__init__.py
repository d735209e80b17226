"""crossderm: cross-dataset training and evaluation of dermoscopic skin-lesion classifiers.

The pipeline, one subpackage per stage: ``prepare`` (official files -> harmonised manifest + image cache),
``split`` (lesion-grouped folds), ``train`` (models, samplers, engine, cross-validation),
``predict`` (TTA inference), ``evaluate`` (metrics with bootstrap CIs) and ``report``.
"""

__version__ = "0.1.0"

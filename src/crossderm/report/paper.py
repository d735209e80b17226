"""The paper's published numbers (``published/*.yaml``), validated, and what the report derives from them.

They are data, not code, so a corrected or added number is a YAML edit. Gaps, gap reductions and gains of
the paper are differences of published point values: no CI, as the paper gives none for them.
"""

from __future__ import annotations

from importlib.resources import files

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from crossderm.errors import CrossdermError
from crossderm.evaluate.metrics import HEADLINE_METRICS

PUBLISHED_FILE = "rashid2026.yaml"


class PublishedValue(BaseModel):
    """One published metric; the CI bounds only where the paper reports them."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    value: float
    ci_low: float | None = None
    ci_high: float | None = None


class PublishedExperiment(BaseModel):
    """One experiment of the paper: its setup and, per test source, the metrics it publishes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    model: str
    parameters_m: float
    train_sources: list[str] = Field(min_length=1)
    sampler: str | None
    test: dict[str, dict[str, PublishedValue]]

    @field_validator("test")
    @classmethod
    def _known_metrics(cls, test: dict[str, dict[str, PublishedValue]]) -> dict[str, dict[str, PublishedValue]]:
        for source, metrics in test.items():
            unknown = sorted(set(metrics) - set(HEADLINE_METRICS))
            if unknown:
                known = ", ".join(HEADLINE_METRICS)
                raise ValueError(f"{source}: unknown metric(s) {', '.join(unknown)} (known: {known})")
        return test

    def publishes(self, source: str) -> bool:
        return bool(self.test.get(source))

    def published(self, source: str, metric: str) -> dict[str, float | None] | None:
        """``{value, ci_low, ci_high}`` as in metrics.json, None where not published."""
        entry = self.test.get(source, {}).get(metric)
        return None if entry is None else entry.model_dump()

    def point(self, source: str, metric: str) -> float | None:
        entry = self.test.get(source, {}).get(metric)
        return None if entry is None else entry.value

    def gap(self, reference: str, other: str, metric: str) -> float | None:
        """Published reference - other, where both points are published."""
        ref, oth = self.point(reference, metric), self.point(other, metric)
        return None if ref is None or oth is None else ref - oth


class Publication(BaseModel):
    """A published paper: how its rows are labelled, and its experiments (the first is the baseline)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    citation: str
    label: str
    experiments: list[PublishedExperiment] = Field(min_length=1)


def load_publication(name: str = PUBLISHED_FILE) -> Publication:
    """Read and validate a file shipped in ``crossderm/report/published``; a bad file is a one-line error."""
    resource = files("crossderm.report").joinpath("published", name)
    try:
        return Publication.model_validate(yaml.safe_load(resource.read_text(encoding="utf-8")))
    except (OSError, yaml.YAMLError) as exc:
        raise CrossdermError(f"{resource}: cannot read published numbers ({' '.join(str(exc).split())})") from None
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise CrossdermError(f"{resource}: {where}: {first['msg']}") from None


def reduction(
    baseline: PublishedExperiment, other: PublishedExperiment, reference: str, source: str, metric: str
) -> dict[str, float | None] | None:
    """Published gap of ``baseline`` - gap of ``other`` and its % of the baseline gap; None if not derivable."""
    gap_base, gap_other = baseline.gap(reference, source, metric), other.gap(reference, source, metric)
    if gap_base is None or gap_other is None:
        return None
    value = gap_base - gap_other
    return {"value": value, "relative": 100 * value / gap_base if gap_base != 0 else None}


def gain(baseline: PublishedExperiment, other: PublishedExperiment, source: str, metric: str) -> float | None:
    """Published other - baseline on one source, where both are published."""
    base, oth = baseline.point(source, metric), other.point(source, metric)
    return None if base is None or oth is None else oth - base

"""Ablations: one config run in several variants over the same folds, then one paired table (``crossderm ablate``).

``--vary KEY=V1,V2,...`` (repeatable) names the factors. One factor at a time by default: the baseline takes
every key at its first value, and each other value of a key is one variant (the other keys at their baseline
value); ``grid`` = the full product. A variant is named after what it changes (``baseline``,
``color_constancy-sog6``, ``color_constancy-sog6+sampler-site_balanced``; file-name safe) and runs in
``DIR/<variant>/``, an ordinary run folder (``report``, ``predict``, ``serve`` work on it).

``DIR/ablation.json`` records the plan (baseline, variants and their resolved configs, data, protocol, jobs);
a second call with a different plan for the same DIR is refused. A job is one (variant, fold) pair: they are
independent, so they run in turn here (:func:`run_all`), or each as its own job of a scheduler (``--job I`` per
Slurm array task, :func:`submit_missing` through ``submitit``); :func:`pool_all` then pools every variant (cv's
``pool``) and writes ``DIR/ablation_results.json`` and ``DIR/ablation.md``
(:mod:`crossderm.evaluate.ablation_stats`). Finished folds are skipped; ``resume`` continues a crashed fold
from its checkpoint.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from crossderm.defaults import BOOTSTRAP_SEED, CI_LEVEL, N_BOOTSTRAP, REFERENCE_SOURCE
from crossderm.errors import CrossdermError
from crossderm.evaluate.ablation_stats import PLAN_FILE, RESULTS_FILE, TABLE_FILE, ablation_results, render_markdown
from crossderm.fsutil import atomic_write_json, atomic_write_text, read_json
from crossderm.runfolder import RunFolder
from crossderm.train.config import ExperimentConfig, build_config, load_config, training_settings

PLAN_FORMAT = 1
BASELINE = "baseline"
SUBMITIT_FOLDER = "submitit"
FIXED_KEYS = ("name", "description")  # set per variant by the plan
UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class Variant:
    """One variant: its name, the value of every varied key (as written), and its resolved config."""

    name: str
    overrides: dict[str, str]
    config: dict[str, Any]


@dataclass(frozen=True)
class AblationJob:
    """Job ``index`` of the plan: one fold of one variant."""

    index: int
    variant: str
    fold: int
    name: str


@dataclass(frozen=True)
class AblationPlan:
    out: Path
    config: str
    data: str
    protocol: str
    grid: bool
    vary: list[tuple[str, list[str]]]
    overrides: list[str]
    variants: list[Variant]
    jobs: list[AblationJob]

    @property
    def baseline(self) -> str:
        return self.variants[0].name

    @property
    def path(self) -> Path:
        return self.out / PLAN_FILE

    def variant(self, name: str) -> Variant:
        return next(v for v in self.variants if v.name == name)

    def run_dir(self, variant: str) -> Path:
        return self.out / variant

    def experiment(self, variant: str) -> ExperimentConfig:
        return build_config(self.variant(variant).config, f"{self.path}: variant {variant}")

    def finished(self, job: AblationJob) -> bool:
        return RunFolder(self.run_dir(job.variant)).fold(job.fold).finished

    def missing(self) -> list[AblationJob]:
        return [job for job in self.jobs if not self.finished(job)]

    def to_json(self) -> dict[str, Any]:
        return {
            "format": PLAN_FORMAT,
            "config": self.config,
            "data": self.data,
            "protocol": self.protocol,
            "grid": self.grid,
            "vary": [[key, values] for key, values in self.vary],
            "overrides": self.overrides,
            "baseline": self.baseline,
            "variants": [asdict(v) for v in self.variants],
            "jobs": [asdict(j) for j in self.jobs],
        }

    @classmethod
    def from_json(cls, out: Path, raw: dict[str, Any]) -> AblationPlan:
        try:
            return cls(
                out=Path(out), config=raw["config"], data=raw["data"], protocol=raw["protocol"], grid=raw["grid"],
                vary=[(key, list(values)) for key, values in raw["vary"]], overrides=list(raw["overrides"]),
                variants=[Variant(**v) for v in raw["variants"]], jobs=[AblationJob(**j) for j in raw["jobs"]],
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise CrossdermError(f"{Path(out) / PLAN_FILE}: not an ablation plan ({exc})") from None


def split_values(text: str) -> list[str]:
    """``a,b,[c,d]`` -> ``["a", "b", "[c,d]"]``: commas inside brackets or braces belong to a YAML value."""
    values, depth, current = [], 0, ""
    for char in text:
        depth += char in "[{"
        depth -= char in "]}"
        if char == "," and depth == 0:
            values.append(current.strip())
            current = ""
        else:
            current += char
    return [*values, current.strip()]


def parse_vary(items: Sequence[str]) -> list[tuple[str, list[str]]]:
    """``KEY=V1,V2,...`` items -> [(key, values)], in the order given; every problem is a one-line error."""
    factors: list[tuple[str, list[str]]] = []
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        values = split_values(text) if sep else []
        if not key or not values or any(not v for v in values):
            raise CrossdermError(f"--vary {item!r}: expected KEY=V1,V2,... (e.g. --vary color_constancy=none,sog6)")
        if key in FIXED_KEYS:
            raise CrossdermError(f"--vary {item!r}: {key} is set per variant by ablate; vary a setting")
        if key in (k for k, _ in factors):
            raise CrossdermError(f"--vary {key}: given twice; list all its values in one --vary")
        if len(set(values)) != len(values):
            raise CrossdermError(f"--vary {item!r}: a value is listed twice")
        factors.append((key, values))
    if not factors:
        raise CrossdermError("give at least one --vary KEY=V1,V2,...")
    return factors


def safe_name(text: str) -> str:
    return UNSAFE.sub("_", text).strip("_") or "_"


def _combinations(factors: list[tuple[str, list[str]]], grid: bool) -> list[dict[str, str]]:
    """Baseline first, then the variants (one factor at a time, or every combination)."""
    baseline = {key: values[0] for key, values in factors}
    if grid:
        return [dict(zip(baseline, combo, strict=True)) for combo in itertools.product(*(v for _, v in factors))]
    return [baseline, *({**baseline, key: value} for key, values in factors for value in values[1:])]


def _variant_name(combo: dict[str, str], baseline: dict[str, str]) -> str:
    changed = [f"{safe_name(key)}-{safe_name(value)}" for key, value in combo.items() if value != baseline[key]]
    return "+".join(changed) or BASELINE


def make_plan(
    config: str | Path, data_dir: str | Path, out: str | Path, vary: Sequence[str], grid: bool = False,
    overrides: Sequence[str] = (),
) -> AblationPlan:
    """The plan of an ablation; every variant's config is validated, and all must test the same images."""
    from crossderm.datafolder import load_dataset
    from crossderm.train.protocols import job_images, jobs

    factors = parse_vary(vary)
    fixed = {item.partition("=")[0].strip() for item in overrides}
    both = [key for key, _ in factors if key in fixed]
    if both:
        raise CrossdermError(f"{both[0]} is given both with --set and --vary; give it once")
    combos = _combinations(factors, grid)
    if len(combos) < 2:
        raise CrossdermError("nothing to compare: give some --vary KEY a second value")
    variants: list[Variant] = []
    for combo in combos:
        name = _variant_name(combo, combos[0])
        if any(v.name == name for v in variants):
            raise CrossdermError(f"two variants would both be named {name!r}; use values that differ in letters "
                                 "or digits")
        resolved = load_config(config, [*overrides, *(f"{k}={v}" for k, v in combo.items())])
        settings = ", ".join(f"{k}={v}" for k, v in combo.items())
        described = {
            **resolved.to_dict(), "name": f"{resolved.name}-{name}",
            "description": f"ablation variant {name} ({settings})" + (f"; {resolved.description}"
                                                                        if resolved.description else ""),
        }
        variants.append(Variant(name, dict(combo), build_config(described, f"variant {name}").to_dict()))
    for i, a in enumerate(variants):
        same = [b.name for b in variants[i + 1:] if _settings(a.config) == _settings(b.config)]
        if same:
            raise CrossdermError(f"variants {a.name} and {same[0]} resolve to the same settings; drop one value")

    data = load_dataset(data_dir)
    experiments = [build_config(v.config, v.name) for v in variants]
    base_jobs = jobs(data.manifest, experiments[0])
    for variant, experiment in zip(variants, experiments, strict=True):
        data.open_cache(experiment.color_constancy)  # a missing sog6 cache fails here, before any training
        if variant is variants[0]:
            continue
        own = jobs(data.manifest, experiment)
        same = [(j.fold, j.name) for j in own] == [(j.fold, j.name) for j in base_jobs] and all(
            (job_images(data.manifest, experiment, j).test == job_images(data.manifest, experiments[0], j).test).all()
            for j in own
        )
        if not same:
            raise CrossdermError(
                f"variant {variant.name} tests other images than the baseline (its jobs or test sets differ): the "
                "paired comparison needs the same test images, so vary settings other than protocol, "
                "test_sources, external_sources or min_site_images"
            )
    plan_jobs = [
        AblationJob(index, variant.name, job.fold, job.name)
        for index, (variant, job) in enumerate(itertools.product(variants, base_jobs))
    ]
    config_text = str(Path(config).absolute()) if Path(config).suffix in (".yaml", ".yml") else str(config)
    return AblationPlan(
        out=Path(out), config=config_text, data=str(Path(data_dir).absolute()), protocol=experiments[0].protocol,
        grid=grid, vary=factors, overrides=list(overrides), variants=variants, jobs=plan_jobs,
    )


def _settings(config: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.items() if k not in FIXED_KEYS}


def _identity(plan: dict[str, Any], jobs: bool = True) -> dict[str, Any]:
    """What makes two plans the same ablation (how the config was spelled does not); without ``jobs`` and the
    variants' ``only_folds``: the same ablation on possibly other folds."""
    keys = ("data", "protocol", "baseline", "variants", *(("jobs",) if jobs else ()))
    identity = json.loads(json.dumps({key: plan.get(key) for key in keys}))
    if not jobs and isinstance(identity.get("variants"), list):
        identity["variants"] = [{**v, "config": training_settings(v["config"])} if isinstance(v, dict)
                                and isinstance(v.get("config"), dict) else v for v in identity["variants"]]
    return identity


def _extends(existing: dict[str, Any], plan: dict[str, Any]) -> bool:
    """``plan`` is ``existing`` on more folds (``only_folds`` widened or dropped): its finished jobs carry over."""
    def job_keys(raw: dict[str, Any]) -> set[tuple[Any, Any]]:
        return {(j.get("variant"), j.get("fold")) for j in raw.get("jobs") or [] if isinstance(j, dict)}

    return _identity(existing, jobs=False) == _identity(plan, jobs=False) and job_keys(existing) < job_keys(plan)


def write_plan(plan: AblationPlan) -> AblationPlan:
    """Record the plan in ``DIR/ablation.json``; a different plan already there is refused."""
    if plan.path.is_file():
        existing = read_json(plan.path, "")
        if _extends(existing, plan.to_json()):
            atomic_write_json(plan.path, plan.to_json())  # job numbers follow the wider plan from now on
        elif _identity(existing) != _identity(plan.to_json()):
            names = [v.get("name") for v in existing.get("variants", [])]
            raise CrossdermError(
                f"{plan.path}: this ablation folder was made with a different plan (variants {', '.join(names)}; "
                f"now {', '.join(v.name for v in plan.variants)}, or other settings or data); use a new --out"
            )
        return plan
    atomic_write_json(plan.path, plan.to_json())
    return plan


def read_plan(out: str | Path) -> AblationPlan:
    path = Path(out) / PLAN_FILE
    raw = read_json(path, "no ablation planned there yet: give --config, --data and --vary")
    if raw.get("format") != PLAN_FORMAT:
        raise CrossdermError(f"{path}: plan format {raw.get('format')!r}, expected {PLAN_FORMAT}")
    return AblationPlan.from_json(Path(out), raw)


def run_job(
    plan: AblationPlan, index: int, resume: bool = False, device: str = "auto", n_bootstrap: int = N_BOOTSTRAP,
    reference_source: str = REFERENCE_SOURCE,
) -> bool:
    """Run job ``index`` (one fold of one variant) through ``run_cv``; False if it was already finished.

    The variant's run folder is pooled when its last fold finishes, as ``cv --fold k`` does.
    """
    from crossderm.train.cv import run_cv

    if not 0 <= index < len(plan.jobs):
        raise CrossdermError(f"--job {index}: the plan has {len(plan.jobs)} jobs (0 to {len(plan.jobs) - 1})")
    job = plan.jobs[index]
    if plan.finished(job):
        print(f"job {index} ({job.variant}, {job.name}): already done")
        return False
    print(f"job {index} of {len(plan.jobs)}: variant {job.variant}, {job.name}")
    run_cv(plan.experiment(job.variant), Path(plan.data), plan.run_dir(job.variant), folds=[job.fold],
           resume=resume, device=device, n_bootstrap=n_bootstrap, reference_source=reference_source)
    return True


def run_job_in(out: str, index: int, resume: bool, device: str, n_bootstrap: int, reference_source: str) -> bool:
    """:func:`run_job` with the plan read from ``out``: what a scheduler's worker process runs."""
    return run_job(read_plan(out), index, resume, device, n_bootstrap, reference_source)


def run_all(
    plan: AblationPlan, resume: bool = False, device: str = "auto", n_bootstrap: int = N_BOOTSTRAP,
    reference_source: str = REFERENCE_SOURCE,
) -> list[int]:
    """Run every missing job in turn; the indices of those run."""
    missing = plan.missing()
    if not missing:
        print(f"all {len(plan.jobs)} jobs already done")
    for job in missing:
        run_job(plan, job.index, resume, device, n_bootstrap, reference_source)
    return [job.index for job in missing]


def submit_missing(
    plan: AblationPlan, parameters: dict[str, Any], cluster: str | None = None, resume: bool = False,
    device: str = "auto", n_bootstrap: int = N_BOOTSTRAP, reference_source: str = REFERENCE_SOURCE,
) -> list[int]:
    """Submit every missing job with ``submitit.AutoExecutor`` (logs in ``DIR/submitit``) and wait for all.

    ``parameters``: the executor's (``timeout_min``, ``slurm_partition``, ...); ``cluster``: None = detect
    (Slurm when available, else local processes), or "slurm", "local", "debug" (in this process).
    """
    try:
        import submitit
    except ImportError:
        raise CrossdermError("--submitit needs the submitit package: pip install submitit") from None
    missing = plan.missing()
    if not missing:
        print(f"all {len(plan.jobs)} jobs already done")
        return []
    executor = submitit.AutoExecutor(folder=plan.out / SUBMITIT_FOLDER, cluster=cluster)
    executor.update_parameters(name=f"crossderm-ablate-{plan.out.name}", **parameters)
    indices = [job.index for job in missing]
    n = len(indices)
    submitted = executor.map_array(run_job_in, [str(plan.out)] * n, indices, [resume] * n, [device] * n,
                                   [n_bootstrap] * n, [reference_source] * n)
    print(f"submitted {n} jobs ({executor.cluster}): " + ", ".join(str(j.job_id) for j in submitted[:5])
          + (", ..." if n > 5 else ""))
    failed = []
    for index, job in zip(indices, submitted, strict=True):
        try:
            job.result()
        except Exception as exc:  # submitit's FailedJobError / UncompletedJobError, or the job's own error
            failed.append(f"job {index} ({job.paths.stderr}): {' '.join(str(exc).split())[:200]}")
    if failed:
        raise CrossdermError(f"{len(failed)} of {n} submitted jobs failed; first: {failed[0]}")
    return indices


def _pooled(run: RunFolder, n_bootstrap: int, seed: int, reference_source: str) -> bool:
    """The run's pooled files are there, newer than every fold's predictions, with these bootstrap settings."""
    outputs = [run.oof_predictions, run.metrics, run.calibration]
    if not all(p.is_file() for p in outputs):
        return False
    metrics = run.read_metrics()
    setup = metrics.get("bootstrap") or {}
    if (setup.get("n_resamples"), setup.get("seed"), metrics.get("reference_source")) != (
        n_bootstrap, seed, reference_source
    ):
        return False
    newest = max(run.fold(k).predictions.stat().st_mtime for k in run.expected_folds())
    return min(p.stat().st_mtime for p in outputs) >= newest


def pool_all(
    plan: AblationPlan, n_bootstrap: int = N_BOOTSTRAP, seed: int = BOOTSTRAP_SEED,
    reference_source: str = REFERENCE_SOURCE,
) -> dict[str, Any]:
    """Pool every variant over the plan's folds (unless already pooled with these settings), then write
    ``DIR/ablation_results.json`` and ``DIR/ablation.md``; returns the results."""
    from crossderm.evaluate.predictions import load_predictions
    from crossderm.train.cv import record_scope
    from crossderm.train.pooling import pool

    missing = plan.missing()
    if missing:
        first = missing[0]
        raise CrossdermError(
            f"{plan.out}: {len(missing)} of {len(plan.jobs)} jobs not finished (e.g. job {first.index}: "
            f"{first.variant}, {first.name}); run them (`crossderm ablate --out {plan.out} --job I`), then pool"
        )
    predictions, metrics = {}, {}
    for variant in plan.variants:
        run = RunFolder(plan.run_dir(variant.name))
        rescoped = record_scope(run, plan.experiment(variant.name), Path(plan.data))
        if rescoped or not _pooled(run, n_bootstrap, seed, reference_source):
            print(f"pooling {variant.name}")
            pool(run.path, n_bootstrap=n_bootstrap, seed=seed, reference_source=reference_source)
        predictions[variant.name] = load_predictions(run.oof_predictions)
        metrics[variant.name] = run.read_metrics()
    results = ablation_results(plan.baseline, predictions, metrics, n_bootstrap, seed, CI_LEVEL, reference_source)
    plan_json = plan.to_json()
    results = {"plan": {k: plan_json[k] for k in ("config", "data", "protocol", "grid", "vary", "overrides")},
               "run_dirs": {v.name: v.name for v in plan.variants}, **results}
    atomic_write_json(plan.out / RESULTS_FILE, results)
    atomic_write_text(plan.out / TABLE_FILE, render_markdown(results, plan_json))
    return results


def job_command(plan_args: Sequence[str], index: int) -> str:
    """One shell line running job ``index``: ``crossderm ablate <plan_args> --job I``."""
    import shlex

    return shlex.join(["crossderm", "ablate", *plan_args, "--job", str(index)])

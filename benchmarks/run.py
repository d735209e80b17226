"""Run every benchmark, print its figures and write ``benchmarks/results.json``.

Benchmarks: input pipeline, training step, TTA, bootstrap, training beside a competing process
(contention), plus ``bench_backends`` when that module is present, then the whole-protocol projection from
the measured training and inference rates.
Each benchmark times its two sides in the same run, rounds interleaved, so their ratio is comparable even
on a busy machine; absolute rates on a shared CPU are noisy. ``--quick``: small sizes, about a minute on
2 cores (plus a one-off ~15 s to generate the JPEGs); without it realistic sizes (224 px cache, several
minutes). Run as ``python benchmarks/run.py [--quick] [--only NAME ...]`` from the repository root.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import common
import projection

from crossderm.fsutil import atomic_write_json

RESULTS = Path(__file__).resolve().parent / "results.json"
BENCHMARKS = ("bench_input_pipeline", "bench_train_step", "bench_tta", "bench_bootstrap", "bench_contention",
              "bench_backends")


def available() -> list[str]:
    """The benchmark modules present here (``bench_backends`` is optional)."""
    return [name for name in BENCHMARKS if importlib.util.find_spec(name) is not None]


def measured_rates(results: dict[str, dict[str, Any]]) -> projection.Rates:
    """Training images/s as the loader feeds it, inference images/s with 1 and 4 views."""
    train, tta = results["train_step"], results["tta"]
    small = "" if train["model"] == projection.CONVNEXT_TINY else " (the benchmark model, far smaller than the paper's)"
    return projection.Rates(
        f"measured: {train['model']} at {train['image_size']} px, batch {train['batch_size']}, "
        f"on {train['device']}{small}",
        train["model"],
        train["loader_images_per_s"],
        tta["views1_images_per_s"],
        tta["views4_images_per_s"],
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, about a minute on 2 CPU cores")
    parser.add_argument("--only", nargs="+", choices=[n.removeprefix("bench_") for n in BENCHMARKS],
                        help="run only these benchmarks (the projection needs train_step and tta)")
    parser.add_argument("--out", type=Path, default=RESULTS, help=f"results file (default {RESULTS.name})")
    args = parser.parse_args(argv)
    names = [n for n in available() if args.only is None or n.removeprefix("bench_") in args.only]
    started = time.perf_counter()
    machine_before = common.machine()
    results: dict[str, dict[str, Any]] = {}
    for name in names:
        module = importlib.import_module(name)
        t0 = time.perf_counter()
        result = module.run(args.quick)
        result.setdefault("target", None)  # a benchmark without a stated target still has the key
        result["seconds"] = round(time.perf_counter() - t0, 1)
        results[result["name"]] = result
        print(module.describe(result), flush=True)
    if {"train_step", "tta"} <= results.keys():
        rates = measured_rates(results)
        results["projection"] = projection.projections(rates, common.auto_device())
        print(projection.describe(results["projection"]))
    machine_after = common.machine()
    report = {
        "generated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "mode": "quick" if args.quick else "full",
        "seconds": round(time.perf_counter() - started, 1),
        "machine": {**machine_before, "load_average_1m_after": machine_after.get("load_average_1m")},
        "benchmarks": list(results.values()),
    }
    atomic_write_json(args.out, report)
    print(f"wrote {args.out} ({report['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

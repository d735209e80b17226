"""The paper's protocol on the real public sample in ../shared/data, at CPU scale.

prepare (HAM10000 sample + non-HAM ISIC 2019 sample, missing images dropped and counted) -> experiment (a)
HAM-only and (b) joint source-balanced, 5-fold lesion-grouped CV with 4-view TTA -> report. Small models
and small images: this checks the pipeline and the direction of the effect on real dermoscopy, not the
paper's figures (those need pretrained ConvNeXt/EfficientNet at 224 px on a GPU).

    python benchmarks/real_data_protocol.py --out benchmarks/_work/real [--image-size 64] [--epochs 6]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from crossderm.prepare.pipeline import PrepareConfig, prepare
from crossderm.report.build import write_report
from crossderm.train.config import load_config
from crossderm.train.cv import run_cv

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=SHARED)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/_work/real"))
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--model-a", default="crossderm_fusion_test")
    parser.add_argument("--model-b", default="crossderm_fusion_test")
    args = parser.parse_args()

    started = time.perf_counter()
    prepared = args.out / "prepared"
    if not (prepared / "manifest.csv").is_file():
        prepare(
            PrepareConfig(
                out=prepared,
                ham=args.data / "HAM10000",
                isic=args.data / "ISIC2019",
                image_size=args.image_size,
                allow_missing=True,
                overwrite=True,
            )
        )
    runs = []
    for preset, model in (("demo_a_ham_only", args.model_a), ("demo_b_joint", args.model_b)):
        config = load_config(preset, [f"epochs={args.epochs}", f"model={model}", f"name=real_{preset}"])
        run_cv(config, prepared, args.out / "runs" / config.name, resume=True)
        runs.append(args.out / "runs" / config.name)
    summary = write_report(runs, args.out / "report", overwrite=True)
    print(json.dumps(summary, indent=2))
    print(f"wall time {time.perf_counter() - started:.0f} s; report in {args.out / 'report'}")


if __name__ == "__main__":
    main()

"""Options several commands share, declared and checked once (bootstrap, seed, reference source, threads)."""

from __future__ import annotations

import argparse
import math

from crossderm.defaults import (
    BOOTSTRAP_SEED,
    GROUPINGS,
    MAX_IMAGE_SIZE,
    MIN_GROUP_IMAGES,
    MIN_IMAGE_SIZE,
    N_BOOTSTRAP,
    REFERENCE_SOURCE,
)
from crossderm.errors import CrossdermError


def add_bootstrap_options(parser: argparse.ArgumentParser, seed: bool = True, reference: bool = True) -> None:
    parser.add_argument("--bootstrap", type=int, default=N_BOOTSTRAP, help="bootstrap resamples of the images")
    if seed:
        parser.add_argument("--seed", type=int, default=BOOTSTRAP_SEED, help="bootstrap seed (non-negative)")
    if reference:
        parser.add_argument("--reference-source", default=REFERENCE_SOURCE, metavar="SOURCE",
                            help="the generalisation gap is this source minus each other test source")


def check_bootstrap_options(args: argparse.Namespace) -> None:
    """Refused before any work, so a typo never costs a training run."""
    if args.bootstrap < 1:
        raise CrossdermError(f"--bootstrap must be at least 1, got {args.bootstrap}")
    if getattr(args, "seed", 0) < 0:
        raise CrossdermError(f"--seed must be non-negative, got {args.seed}")


def add_group_option(parser: argparse.ArgumentParser, help: str) -> None:
    """``--by GROUP`` (repeatable): per-site / subgroup evaluation (crossderm.evaluate.groups)."""
    parser.add_argument(
        "--by",
        action="append",
        choices=GROUPINGS,
        default=None,
        metavar="GROUP",
        help=f"{help} One of {', '.join(GROUPINGS)}; repeat for several. Groups of fewer than {MIN_GROUP_IMAGES} "
        "images are shown as too few; blank values form the group 'missing'.",
    )


def add_threads_option(parser: argparse.ArgumentParser) -> None:
    """``--threads N``, applied by ``crossderm.runtime.configure_threads`` first thing in the command's ``run``."""
    parser.add_argument(
        "--threads",
        type=_threads,
        default=0,
        metavar="N|adaptive",
        help="torch CPU threads; 0 = auto: the CPUs this process may use (affinity mask, cgroup CPU quota, "
        "SLURM_CPUS_PER_TASK; OMP_NUM_THREADS when set), reproducible; adaptive: auto less the CPUs other "
        "processes keep busy at the start (faster beside other jobs, not bit-reproducible across runs)",
    )


def _threads(value: str) -> int | str:
    from crossderm.runtime import ADAPTIVE

    if value == ADAPTIVE:
        return value
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a count or {ADAPTIVE}, got {value!r}") from None


def count(minimum: int = 0, maximum: int | None = None):  # noqa: ANN201 (an argparse type)
    """argparse type: a whole number in [minimum, maximum], checked before any work."""

    def parse(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            number = None
        if number is None or number < minimum or (maximum is not None and number > maximum):
            upper = f" and <= {maximum}" if maximum is not None else ""
            raise argparse.ArgumentTypeError(f"expected a whole number >= {minimum}{upper}, got {value!r}")
        return number

    return parse


def image_size(value: str) -> int:
    """argparse type: the side (px) of the cached square images."""
    return count(MIN_IMAGE_SIZE, MAX_IMAGE_SIZE)(value)


def number(minimum: float = 0.0, maximum: float | None = None, above: bool = False):  # noqa: ANN201
    """argparse type: a finite number >= minimum (> with ``above``) and <= maximum."""

    def parse(value: str) -> float:
        try:
            x = float(value)
        except ValueError:
            x = math.nan
        low_ok = x > minimum if above else x >= minimum
        if not (math.isfinite(x) and low_ok and (maximum is None or x <= maximum)):
            bound = f"{'>' if above else '>='} {minimum:g}" + (f" and <= {maximum:g}" if maximum is not None else "")
            raise argparse.ArgumentTypeError(f"expected a finite number {bound}, got {value!r}")
        return x

    return parse

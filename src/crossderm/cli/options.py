"""Options several commands share, declared and checked once (bootstrap, seed, reference source)."""

from __future__ import annotations

import argparse

from crossderm.defaults import BOOTSTRAP_SEED, N_BOOTSTRAP, REFERENCE_SOURCE
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

"""``crossderm ablate``: one config in several variants over the same folds, and the paired table of their
differences per test site (crossderm.train.ablation)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from crossderm.cli.options import add_bootstrap_options, add_threads_option, check_bootstrap_options
from crossderm.defaults import N_BOOTSTRAP, REFERENCE_SOURCE

EPILOG = """examples:
  crossderm ablate --config demo_b_joint --data prepared --out runs/abl \\
      --vary color_constancy=none,sog6 --vary sampler=uniform,site_balanced
  crossderm ablate --config demo_b_joint --data prepared --out runs/abl --vary sampler=uniform,site_balanced \\
      --vary augment.illuminant=0,0.5 --grid                       # all 4 combinations
  crossderm ablate ... --resume                                     # after a crash: continue from checkpoints

On a cluster, one (variant, fold) job per Slurm array task, then pool:
  N=$(crossderm ablate ... --list-jobs | wc -l)
  sbatch --array=0-$((N-1)) --wrap 'crossderm ablate ... --job $SLURM_ARRAY_TASK_ID'
  crossderm ablate ... --pool
or, with submitit installed (pip install submitit), submit, wait and pool in one call:
  crossderm ablate ... --submitit --slurm-partition gpu --timeout-min 240 --gpus-per-node 1

One factor at a time by default: the baseline takes each --vary key at its first value, and every other value
is one variant (the other keys at baseline). Each variant is an ordinary run folder OUT/<variant>/;
OUT/ablation.md is the table (per variant and test site: n, macro-F1, balanced accuracy with CIs, and the
paired CI of the difference from the baseline; then mean-site, worst-site and gap rows), also in
OUT/ablation_results.json. `crossderm report --ablation OUT --out REPORT` renders it with a plot.
"""


def register(subparsers: argparse._SubParsersAction, formatter_class: type) -> None:
    parser = subparsers.add_parser(
        "ablate",
        help="run a config in several variants over the same folds; paired table of the differences per site",
        description="Plan variants of a config (--vary KEY=V1,V2,...), train each through the same folds or "
        "leave-one-site-out jobs (in turn here, or one job per (variant, fold) on a scheduler), pool them and "
        "write the paired comparison of every variant with the baseline. Without an action flag: run every "
        "missing job in turn, then pool.",
        epilog=EPILOG,
        formatter_class=formatter_class,
    )
    parser.add_argument("--config", help="preset name or YAML file (with --data and --vary: plans the ablation)")
    parser.add_argument("--data", type=Path, help="DATA_DIR made by `crossderm prepare`")
    parser.add_argument("--out", type=Path, required=True, help="ablation folder: ablation.json, one run per variant")
    parser.add_argument("--vary", action="append", default=[], metavar="KEY=V1,V2,...",
                        help="a setting and its values, the first the baseline's (repeatable; nested: augment.x)")
    parser.add_argument("--grid", action="store_true", help="every combination of the values, not one at a time")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a setting for every variant, e.g. --set epochs=5")
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--list-jobs", action="store_true",
                        help="print one `crossderm ablate ... --job I` line per job")
    action.add_argument("--job", type=int, metavar="I", help="run job I only (a Slurm array task)")
    action.add_argument("--pool", action="store_true", help="pool every variant and write the table")
    action.add_argument("--submitit", action="store_true",
                        help="submit every missing job with submitit, wait, then pool (pip install submitit)")
    parser.add_argument("--resume", action="store_true", help="continue interrupted folds from their checkpoints")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    add_threads_option(parser)
    add_bootstrap_options(parser)
    group = parser.add_argument_group("submitit (with --submitit)")
    group.add_argument("--submitit-cluster", choices=("slurm", "local", "debug"), default=None,
                       help="executor; default: Slurm when available, else local processes")
    group.add_argument("--slurm-partition", help="Slurm partition")
    group.add_argument("--timeout-min", type=int, default=None, help="time limit of each job, minutes")
    group.add_argument("--gpus-per-node", type=int, default=None, help="GPUs per job")
    group.add_argument("--cpus-per-task", type=int, default=None, help="CPUs per job")
    group.add_argument("--mem-gb", type=float, default=None, help="memory per job, GB")
    group.add_argument("--array-parallelism", type=int, default=None, help="most jobs running at once (Slurm)")
    parser.set_defaults(handler=run)


def plan_arguments(args: argparse.Namespace) -> list[str]:
    """The options that name the plan (absolute paths), for the printed job lines."""
    config = args.config
    if config is not None and Path(config).suffix in (".yaml", ".yml"):
        config = str(Path(config).absolute())
    out = ["--out", str(args.out.absolute())]
    if config is not None:
        out = ["--config", config, "--data", str(args.data.absolute()), *out]
        out += [part for item in args.vary for part in ("--vary", item)]
        out += ["--grid"] if args.grid else []
        out += [part for item in args.overrides for part in ("--set", item)]
    out += ["--bootstrap", str(args.bootstrap)] if args.bootstrap != N_BOOTSTRAP else []
    out += ["--reference-source", args.reference_source] if args.reference_source != REFERENCE_SOURCE else []
    out += ["--device", args.device] if args.device != "auto" else []
    return out


def submitit_parameters(args: argparse.Namespace) -> dict:
    names = {"slurm_partition": "slurm_partition", "timeout_min": "timeout_min", "gpus_per_node": "gpus_per_node",
             "cpus_per_task": "cpus_per_task", "mem_gb": "mem_gb", "array_parallelism": "slurm_array_parallelism"}
    return {key: getattr(args, attr) for attr, key in names.items() if getattr(args, attr) is not None}


def run(args: argparse.Namespace) -> int:
    from crossderm.errors import CrossdermError
    from crossderm.fsutil import check_writable_folder
    from crossderm.runtime import configure_threads
    from crossderm.train import ablation

    configure_threads(args.threads)
    check_bootstrap_options(args)
    check_writable_folder(args.out, "--out")
    planning = {"--config": args.config, "--data": args.data, "--vary": args.vary or None}
    given = [name for name, value in planning.items() if value is not None]
    if given and len(given) < len(planning):
        raise CrossdermError(f"{', '.join(given)} without {', '.join(n for n in planning if n not in given)}: "
                             "give all three to plan an ablation, or none to use the plan in --out")
    if not given and (args.grid or args.overrides):
        raise CrossdermError("--grid and --set belong to a plan: give them with --config, --data and --vary")
    if given:
        plan = ablation.write_plan(ablation.make_plan(args.config, args.data, args.out, args.vary, args.grid,
                                                      args.overrides))
    else:
        plan = ablation.read_plan(args.out)
    options = {"resume": args.resume, "device": args.device, "n_bootstrap": args.bootstrap,
               "reference_source": args.reference_source}
    if args.list_jobs:
        arguments = plan_arguments(args)
        for job in plan.jobs:
            print(ablation.job_command(arguments, job.index))
        array = ablation.job_command(arguments, 0).rsplit(" ", 1)[0] + " $SLURM_ARRAY_TASK_ID"
        folds = len(plan.jobs) // len(plan.variants)
        print(f"# {len(plan.jobs)} jobs ({len(plan.variants)} variants x {folds} folds); as a Slurm array: "
              f"sbatch --array=0-{len(plan.jobs) - 1} --wrap '{array}', then the same line with --pool instead of "
              "--job", file=sys.stderr)
        return 0
    if args.job is not None:
        ablation.run_job(plan, args.job, **options)
        return 0
    if args.submitit:
        ablation.submit_missing(plan, submitit_parameters(args), cluster=args.submitit_cluster, **options)
    elif not args.pool:
        ablation.run_all(plan, **options)
    ablation.pool_all(plan, n_bootstrap=args.bootstrap, seed=args.seed, reference_source=args.reference_source)
    print(f"wrote {plan.out}/ablation.md and ablation_results.json")
    return 0

"""Randomised kill -9 sweep over ``prepare``, ``cv``, ``pool``, ``export`` and ``predict`` on tiny synthetic data.

Each command is first run uninterrupted (its reference: the digest of its outputs, and the destination of each of
its ``os.replace`` calls, i.e. its kill points). Then, for each kill point, the command is run again from the same
starting state and SIGKILLed (``tests/reliability/kill_runner.py``) at the n-th ``os.replace`` (every atomic write
and both renames of every folder replacement: cv's checkpoints, prepare's DATA_DIR) or, for ``cv`` and
``prepare``, after a random time (mid-epoch, mid-decoding), then rerun (``--resume`` for cv). The point passes
when the rerun's outputs are byte-identical to the reference (the digest rules of ``tests/reliability/test_kill.py``:
training timings and run.json aside) and no stray file is left (staging folders, ``.old`` backups, ``.tmp`` files).

Points are drawn with ``--seed`` (each command its own stream): the replace indices in a random order without
repetition, the times uniformly in [15 %, 95 %] of the reference's wall time. Commands take turns, one point
each, until every command has had ``--points`` points or the ``--minutes`` budget (setup included) would be
exceeded (a point already started runs to its end). A table per command is printed (and written to ``--json``);
the exit status is 1 if any point failed, 2 if the budget let no point run. Wall times count waiting for the CPU
too: each point also reports the CPU seconds its two runs used.

  python benchmarks/kill_sweep.py                         # 10-minute budget, 20 points per command
  python benchmarks/kill_sweep.py --seed 3 --points 100 --minutes 60 --json sweep.json
  python benchmarks/kill_sweep.py --commands cv --points 50 --minutes 30

The synthetic inputs (download, DATA_DIR, a finished 5-fold run) are built once under ``--work``
(``benchmarks/_work/kill_sweep/inputs``, reused by later sweeps; ``--fresh`` rebuilds them), or given with
``--inputs`` (the slow test passes the session fixtures there). Every point runs under ``--work``/cases.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import resource
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "reliability"))

from killing import (  # noqa: E402  (the shared helpers of the fault-injection tests)
    KILLED,
    TINY,
    crossderm,
    digest,
    make_prepared,
    make_run,
    make_synth_raw,
    replace_calls,
    strays,
)

WORK = Path(__file__).resolve().parent / "_work" / "kill_sweep"
COMMANDS = ("prepare", "cv", "pool", "export", "predict")
TIMED = ("prepare", "cv")  # also killed at random times (the others spend their time in one step between writes)
TIME_RANGE = (0.15, 0.95)  # of the reference's wall time


@dataclass
class Case:
    """One command: how to reset its folder, its arguments, and what it checks."""

    name: str
    folder: Path  # holds every output of the command, nothing else: digested and searched for strays
    args: list[str]
    outputs: Path  # what is digested (inside ``folder``)
    reset: Callable[[], None]
    resume: list[str] = field(default_factory=list)  # added to the rerun after a kill
    absent_or_complete: bool = False  # after the kill, ``outputs`` is either absent or identical to the reference
    reference: dict[str, str] = field(default_factory=dict)
    calls: list[str] = field(default_factory=list)
    seconds: float = 0.0


@dataclass
class Point:
    kind: str  # "replace" or "time"
    value: float
    label: str = ""
    ok: bool = False
    killed: bool = False
    reason: str = ""
    seconds: float = 0.0
    cpu_s: float = 0.0  # of the killed run and the rerun: the wall time also counts waiting for a loaded CPU

    def name(self) -> str:
        where = f"replace {int(self.value)}" if self.kind == "replace" else f"time {self.value:.2f}s"
        return f"{where} ({self.label})" if self.label else where


def last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:200] if lines else ""


def visible(outputs: Path) -> dict[str, str]:
    """The digest of ``outputs`` without the hidden files a killed writer leaves (``.tmp``, staging folders)."""
    if not outputs.exists():
        return {}
    return {k: v for k, v in digest(outputs).items() if not any(part.startswith(".") for part in Path(k).parts)}


def build_inputs(work: Path, fresh: bool) -> Path:
    inputs = work / "inputs"
    if fresh or not (inputs / "READY").is_file():
        from crossderm.runtime import configure_threads

        shutil.rmtree(inputs, ignore_errors=True)
        inputs.mkdir(parents=True)
        configure_threads(1)
        started = time.perf_counter()
        make_synth_raw(inputs / "raw")
        make_prepared(inputs / "raw", inputs / "data")
        make_run(inputs / "data", inputs / "run")
        (inputs / "READY").write_text(f"built in {time.perf_counter() - started:.0f} s\n")
    return inputs


def fresh_folder(folder: Path, populate: Callable[[], None] | None = None) -> Callable[[], None]:
    def reset() -> None:
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        if populate is not None:
            populate()

    return reset


def make_cases(inputs: Path, cases: Path) -> dict[str, Case]:
    raw, data, run = inputs / "raw", inputs / "data", inputs / "run"
    images = [str(p) for p in sorted((raw / "HAM10000").rglob("*.jpg"))[:6]]
    made = {}
    folder = cases / "prepare"
    made["prepare"] = Case(
        "prepare", folder, ["prepare", "--ham", str(raw / "HAM10000"), "--isic", str(raw / "ISIC2019"),
                            "--image-size", "32", "--workers", "1", "--out", str(folder / "data")],
        folder / "data", fresh_folder(folder), absent_or_complete=True)
    folder = cases / "cv"
    made["cv"] = Case(
        "cv", folder, ["cv", "--config", "demo_b_joint", "--data", str(data), "--out", str(folder / "run"),
                       "--fold", "0", *TINY],
        folder / "run", fresh_folder(folder), resume=["--resume"])
    folder = cases / "pool"  # pooled in place: its files name their own paths, so always the same folder
    made["pool"] = Case(
        "pool", folder, ["pool", str(folder / "run"), "--bootstrap", "50", "--no-tensorboard"], folder / "run",
        fresh_folder(folder, lambda: shutil.copytree(run, cases / "pool" / "run")))
    folder = cases / "export"
    made["export"] = Case(
        "export", folder, ["export", "--model", str(run), "--out", str(folder / "out" / "model.onnx"),
                           "--threads", "1"],
        folder / "out", fresh_folder(folder))
    folder = cases / "predict"
    made["predict"] = Case(
        "predict", folder, ["predict", "--model", str(run), *images, "--threads", "1",
                            "--out", str(folder / "out" / "pred.csv")],
        folder / "out", fresh_folder(folder), absent_or_complete=True)
    return made


def reference(case: Case) -> None:
    case.reset()
    started = time.perf_counter()
    calls = replace_calls(*case.args)
    case.seconds = time.perf_counter() - started
    case.reference = digest(case.outputs)
    left = strays(case.folder)
    assert not left, f"{case.name}: the uninterrupted run left {left}"
    base = str(case.folder) + os.sep
    case.calls = [re.sub(r"\.staging-[^/]*", ".staging-*", c.removeprefix(base)) for c in calls]


def plan(case: Case, points: int, seed: int) -> list[Point]:
    rng = random.Random(f"{seed}:{case.name}")
    replaces = [Point("replace", i, case.calls[i - 1]) for i in rng.sample(range(1, len(case.calls) + 1),
                                                                            len(case.calls))]
    if case.name not in TIMED:
        return replaces[:points]
    times = [Point("time", round(rng.uniform(*TIME_RANGE) * case.seconds, 2)) for _ in range(points)]
    mixed = [p for pair in zip(times, replaces + [None] * points, strict=False) for p in pair if p is not None]
    return mixed[:points]


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_point(case: Case, point: Point) -> None:
    started, cpu = time.perf_counter(), children_cpu()
    case.reset()
    killed = crossderm(*case.args, kill=(point.kind, point.value))
    point.killed = killed.returncode == KILLED
    try:
        if not point.killed and not (point.kind == "time" and killed.returncode == 0):
            point.reason = f"killed run exited {killed.returncode}: {last_line(killed.stderr)}"
            return
        if case.absent_or_complete and visible(case.outputs) not in ({}, case.reference):
            point.reason = f"after the kill: a partial output is in place ({', '.join(visible(case.outputs))})"
            return
        rerun = crossderm(*case.args, *case.resume)
        if rerun.returncode != 0:
            point.reason = f"rerun exited {rerun.returncode}: {last_line(rerun.stderr)}"
            return
        left = strays(case.folder)
        if left:
            point.reason = f"stray files: {', '.join(str(p.relative_to(case.folder)) for p in left[:5])}"
            return
        got = digest(case.outputs) if case.outputs.exists() else {}
        if got != case.reference:
            differ = sorted(k for k in set(got) | set(case.reference) if got.get(k) != case.reference.get(k))
            point.reason = f"outputs differ: {', '.join(differ[:5])}{' ...' if len(differ) > 5 else ''}"
            return
        point.ok = True
    finally:
        point.seconds, point.cpu_s = time.perf_counter() - started, children_cpu() - cpu


def table(cases: dict[str, Case], done: dict[str, list[Point]], wall: float) -> str:
    rows = ["| command | kill points (os.replace) | points tried | killed | identical | failed | seconds (CPU s) |",
            "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, case in cases.items():
        points = done[name]
        timed = sum(p.kind == "time" for p in points)
        tried = f"{len(points)} ({len(points) - timed} replace, {timed} time)" if name in TIMED else str(len(points))
        failed = [p for p in points if not p.ok]
        rows.append(f"| {name} | {len(case.calls)} | {tried} | {sum(p.killed for p in points)} | "
                    f"{sum(p.ok for p in points)} | {len(failed)} | {sum(p.seconds for p in points):.0f} "
                    f"({sum(p.cpu_s for p in points):.0f}) |")
    lines = ["\n".join(rows), f"wall time {wall:.0f} s"]
    for name in cases:
        for p in done[name]:
            if not p.ok:
                lines.append(f"FAILED {name} {p.name()}: {p.reason}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--points", type=int, default=20, help="at most this many kill points per command")
    parser.add_argument("--minutes", type=float, default=10.0, help="wall-time budget, setup included")
    parser.add_argument("--commands", nargs="+", choices=COMMANDS, default=list(COMMANDS))
    parser.add_argument("--work", type=Path, default=WORK, help="inputs are kept here, each point runs here")
    parser.add_argument("--fresh", action="store_true", help="rebuild the synthetic inputs")
    parser.add_argument("--inputs", type=Path, help="use these inputs (raw/, data/, run/ as built here; never "
                        "written) instead of building them under --work")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)

    started, load_before = time.perf_counter(), os.getloadavg()[0]
    deadline = started + args.minutes * 60
    inputs = args.inputs or build_inputs(args.work, args.fresh)
    setup_inputs = time.perf_counter() - started
    cases = make_cases(inputs, args.work / "cases")
    cases = {name: cases[name] for name in COMMANDS if name in args.commands}
    skipped = []
    for name, case in list(cases.items()):
        if time.perf_counter() > deadline:  # on a starved CPU the references alone may spend the budget
            skipped.append(name)
            del cases[name]
            continue
        reference(case)
        print(f"reference {case.name}: {len(case.calls)} os.replace calls, {case.seconds:.1f} s", flush=True)
    setup = time.perf_counter() - started
    plans = {name: plan(case, args.points, args.seed) for name, case in cases.items()}
    done: dict[str, list[Point]] = {name: [] for name in cases}
    # a point costs about a killed run and a rerun (twice the reference) plus resetting its folder
    cost = {name: 2 * case.seconds + 1 for name, case in cases.items()}
    while any(plans.values()):
        progressed = False
        for name, case in cases.items():
            if not plans[name] or time.perf_counter() + cost[name] > deadline:
                continue
            point = plans[name].pop(0)
            run_point(case, point)
            done[name].append(point)
            progressed = True
            print(f"{name:8s} {point.name():70s} {'ok' if point.ok else 'FAILED: ' + point.reason} "
                  f"({point.seconds:.1f} s, CPU {point.cpu_s:.1f} s)", flush=True)
        if not progressed:
            break
    wall = time.perf_counter() - started
    print()
    print(f"seed {args.seed}, at most {args.points} points per command, budget {args.minutes:g} min; setup "
          f"{setup:.0f} s (inputs {setup_inputs:.0f} s); load average {load_before:.1f} before, "
          f"{os.getloadavg()[0]:.1f} after")
    print(table(cases, done, wall))
    if skipped:
        print(f"not run (the budget was spent before their reference): {', '.join(skipped)}")
    failed = sum(not p.ok for points in done.values() for p in points)
    if args.json:
        args.json.write_text(json.dumps({
            "seed": args.seed, "points_per_command": args.points, "minutes": args.minutes,
            "wall_s": round(wall, 1), "setup_s": round(setup, 1), "failed": failed, "skipped": skipped,
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                        "load_average_before": load_before,
                        "load_average_after": os.getloadavg()[0]},
            "commands": {name: {"kill_points": case.calls, "reference_s": round(case.seconds, 1),
                                "points": [{"point": p.name(), "ok": p.ok, "killed": p.killed, "reason": p.reason,
                                            "seconds": round(p.seconds, 1), "cpu_s": round(p.cpu_s, 1)}
                                           for p in done[name]]}
                         for name, case in cases.items()},
        }, indent=1) + "\n")
    tried = sum(len(points) for points in done.values())
    return 1 if failed else 2 if not tried else 0  # 2: the budget let no point run, nothing was checked


if __name__ == "__main__":
    raise SystemExit(main())

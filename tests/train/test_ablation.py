"""``crossderm ablate``: plans, a tiny end-to-end ablation (all-in-one, job by job, resumed, submitit), the report."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pandas as pd
import pytest

from crossderm.cli import main
from crossderm.errors import CrossdermError
from crossderm.runfolder import RunFolder
from crossderm.train.ablation import make_plan, parse_vary, read_plan, split_values, write_plan

TINY = ["--set", "model=test_efficientnet", "--set", "epochs=1", "--set", "batch_size=32",
        "--set", "channels_last=false"]
SAMPLERS = ["--vary", "sampler=uniform,site_balanced"]
VARIANTS = ["baseline", "sampler-site_balanced"]
FOLDS = 5


def plan_args(synth_prepared: Path, out: Path) -> list[str]:
    return ["ablate", "--config", "demo_b_joint", "--data", str(synth_prepared), "--out", str(out), *SAMPLERS, *TINY,
            "--bootstrap", "50", "--threads", "1"]


# ---- plans ---------------------------------------------------------------------------------------------------

def test_one_factor_at_a_time(synth_prepared: Path, tmp_path: Path) -> None:
    vary = ["color_constancy=none", "sampler=uniform,site_balanced,class_balanced", "augment.illuminant=0,0.5"]
    plan = make_plan("demo_b_joint", synth_prepared, tmp_path / "a", vary)
    assert [v.name for v in plan.variants] == [
        "baseline", "sampler-site_balanced", "sampler-class_balanced", "augment.illuminant-0.5"
    ]
    assert plan.variants[0].overrides == {"color_constancy": "none", "sampler": "uniform", "augment.illuminant": "0"}
    assert plan.variant("augment.illuminant-0.5").config["augment"]["illuminant"] == 0.5
    assert plan.variant("augment.illuminant-0.5").config["sampler"] == "uniform"  # the others at baseline
    assert plan.variant("sampler-class_balanced").config["name"] == "demo_b_joint-sampler-class_balanced"
    assert len(plan.jobs) == 4 * FOLDS
    assert [(j.index, j.variant, j.fold) for j in plan.jobs[FOLDS - 1 : FOLDS + 1]] == [
        (FOLDS - 1, "baseline", FOLDS - 1), (FOLDS, "sampler-site_balanced", 0)
    ]


def test_grid(synth_prepared: Path, tmp_path: Path) -> None:
    plan = make_plan("demo_b_joint", synth_prepared, tmp_path / "g",
                     ["sampler=uniform,site_balanced", "augment.illuminant=0,0.5"], grid=True)
    assert [v.name for v in plan.variants] == [
        "baseline", "augment.illuminant-0.5", "sampler-site_balanced", "sampler-site_balanced+augment.illuminant-0.5"
    ]
    assert plan.variants[-1].config["sampler"] == "site_balanced"
    assert plan.variants[-1].config["augment"]["illuminant"] == 0.5


def test_names_are_file_name_safe() -> None:
    assert split_values("[ham],[ham,isic]") == ["[ham]", "[ham,isic]"]
    assert parse_vary(["train_sources=[ham],[ham,isic]"]) == [("train_sources", ["[ham]", "[ham,isic]"])]


@pytest.mark.parametrize(
    ("vary", "extra", "message"),
    [
        (["sampler"], [], "expected KEY=V1,V2"),
        (["sampler=uniform,"], [], "expected KEY=V1,V2"),
        (["sampler=uniform,uniform"], [], "listed twice"),
        (["sampler=uniform", "sampler=site_balanced"], [], "given twice"),
        (["name=a,b"], [], "set per variant"),
        (["sampler=uniform"], [], "nothing to compare"),
        (["sampler=uniform,site_balanced"], ["sampler=uniform"], "both with --set and --vary"),
        (["sampler=uniform,typo"], [], "sampler"),
        (["epochs=1,1.0"], [], "same settings"),
        (["test_sources=[ham,isic],[ham]"], [], "tests other images"),
        (["color_constancy=none,sog6"], [], "--color-constancy sog6"),
    ],
)
def test_bad_plans_are_refused(synth_prepared: Path, tmp_path: Path, vary: list[str], extra: list[str],
                               message: str) -> None:
    with pytest.raises(CrossdermError, match=message):
        make_plan("demo_b_joint", synth_prepared, tmp_path / "x", vary, overrides=extra)


def test_a_changed_plan_is_refused(synth_prepared: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "abl"
    write_plan(make_plan("demo_b_joint", synth_prepared, out, ["sampler=uniform,site_balanced"]))
    again = write_plan(make_plan("demo_b_joint", synth_prepared, out, ["sampler=uniform,site_balanced"]))
    assert read_plan(out).to_json() == again.to_json()
    for vary in (["sampler=uniform,class_balanced"], ["sampler=uniform,site_balanced", "augment.illuminant=0,1"]):
        with pytest.raises(CrossdermError, match="different plan.*use a new --out"):
            write_plan(make_plan("demo_b_joint", synth_prepared, out, vary))
    code = main(["ablate", "--config", "demo_b_joint", "--data", str(synth_prepared), "--out", str(out),
                 "--vary", "sampler=uniform,site_balanced", "--set", "epochs=2", "--list-jobs"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "different plan" in err


def test_partial_plan_options_and_missing_plan(synth_prepared: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture) -> None:
    assert main(["ablate", "--config", "demo_b_joint", "--out", str(tmp_path / "a"), "--list-jobs"]) == 2
    assert "without --data, --vary" in capsys.readouterr().err
    assert main(["ablate", "--out", str(tmp_path / "a"), "--pool"]) == 2
    assert "give --config, --data and --vary" in capsys.readouterr().err


# ---- end to end ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ablated(synth_prepared: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The all-in-one run: every job in turn, then pooled."""
    out = tmp_path_factory.mktemp("ablate") / "all"
    assert main(plan_args(synth_prepared, out)) == 0
    return out


def results_files(out: Path) -> tuple[dict, str]:
    return json.loads((out / "ablation_results.json").read_text()), (out / "ablation.md").read_text()


def fold_mtimes(out: Path) -> dict[str, float]:
    return {str(p): p.stat().st_mtime for p in sorted(out.glob("*/fold_*/*"))}


def test_variants_are_run_folders_predicting_the_same_images(ablated: Path) -> None:
    assert sorted(p.name for p in ablated.iterdir() if p.is_dir()) == VARIANTS
    images = []
    for variant in VARIANTS:
        run = RunFolder(ablated / variant)
        assert run.read_metrics()["bootstrap"]["n_resamples"] == 50
        assert run.read_config()["name"] == f"demo_b_joint-{variant}"
        oof = pd.read_csv(run.oof_predictions).sort_values(["source", "image_id"])
        images.append(oof[["source", "image_id", "label", "site"]].reset_index(drop=True))
    pd.testing.assert_frame_equal(images[0], images[1])


def test_the_table_deltas_are_the_variants_differences(ablated: Path) -> None:
    results, table = results_files(ablated)
    own = {v: RunFolder(ablated / v).read_metrics() for v in VARIANTS}
    baseline, variant = own["baseline"], own["sampler-site_balanced"]
    assert results["baseline"] == "baseline" and results["variants"] == VARIANTS
    checked = 0
    for section in ("sources", "sites"):
        for key, entry in results[section].items():
            if baseline[section][key].get("too_few"):
                assert entry["sampler-site_balanced"]["too_few"]
                continue
            for metric in ("macro_f1", "balanced_accuracy"):
                delta = entry["sampler-site_balanced"]["delta"][metric]
                expected = variant[section][key][metric]["value"] - baseline[section][key][metric]["value"]
                assert delta["value"] == pytest.approx(expected, abs=1e-12)
                assert delta["ci_low"] <= delta["value"] <= delta["ci_high"]
                assert entry["baseline"][metric] == baseline[section][key][metric]
                checked += 1
            assert f"| site {key} | sampler-site_balanced |" in table or section == "sources"
    assert checked >= 2 * 4  # both sources and at least two sites with enough images
    summary = results["site_summary"]["sampler-site_balanced"]
    for key in ("mean_macro_f1", "min_macro_f1"):
        expected = variant["site_summary"][key]["value"] - baseline["site_summary"][key]["value"]
        assert summary["delta"][key]["value"] == pytest.approx(expected, abs=1e-12)
    gap = results["gaps"]["ham - isic"]["sampler-site_balanced"]["delta"]["macro_f1"]["value"]
    expected = variant["gaps"]["ham - isic"]["macro_f1"]["value"] - baseline["gaps"]["ham - isic"]["macro_f1"]["value"]
    assert gap == pytest.approx(expected, abs=1e-12)
    assert "| mean over sites | sampler-site_balanced |" in table and "| gap ham - isic | baseline |" in table


def test_a_second_call_trains_nothing(ablated: Path, synth_prepared: Path, capsys: pytest.CaptureFixture) -> None:
    before, files = fold_mtimes(ablated), results_files(ablated)
    assert main(plan_args(synth_prepared, ablated)) == 0
    out = capsys.readouterr().out
    assert "all 10 jobs already done" in out and "pooling" not in out and "epoch" not in out
    assert fold_mtimes(ablated) == before
    assert results_files(ablated) == files


def test_list_jobs(ablated: Path, synth_prepared: Path, capsys: pytest.CaptureFixture) -> None:
    assert main([*plan_args(synth_prepared, ablated), "--list-jobs"]) == 0
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert len(lines) == 2 * FOLDS
    for index, line in enumerate(lines):
        assert line.startswith("crossderm ablate --config demo_b_joint --data ") and line.endswith(f"--job {index}")
        assert f"--out {ablated}" in line and "--vary sampler=uniform,site_balanced" in line
        assert "--set epochs=1" in line and "--bootstrap 50" in line
    assert "sbatch --array=0-9" in captured.err and "$SLURM_ARRAY_TASK_ID" in captured.err
    assert main(["ablate", "--out", str(ablated), "--list-jobs"]) == 0  # the plan in --out
    assert capsys.readouterr().out.splitlines()[3] == f"crossderm ablate --out {ablated} --job 3"


def test_jobs_one_by_one_then_pool_give_the_same_results(
    ablated: Path, synth_prepared: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "jobs"
    assert main([*plan_args(synth_prepared, out), "--list-jobs"]) == 0
    commands = capsys.readouterr().out.splitlines()
    assert main(["ablate", "--out", str(out), "--pool"]) == 2
    assert "10 of 10 jobs not finished" in capsys.readouterr().err
    assert main(["ablate", "--out", str(out), "--job", "10"]) == 2
    assert "the plan has 10 jobs" in capsys.readouterr().err
    for index, command in enumerate(commands):
        if index % 2:  # every other job through the printed full command, the rest with only --out
            argv = [*command.split()[1:], "--threads", "1"]  # the thread count is the machine's, not the plan's
        else:
            argv = ["ablate", "--out", str(out), "--job", str(index), "--bootstrap", "50", "--threads", "1"]
        assert main(argv) == 0
    capsys.readouterr()
    assert main(["ablate", "--out", str(out), "--job", "0"]) == 0
    assert "job 0 (baseline, fold 0): already done" in capsys.readouterr().out
    assert main(["ablate", "--out", str(out), "--pool", "--bootstrap", "50"]) == 0
    assert results_files(out) == results_files(ablated)


def test_a_crashed_fold_resumes(ablated: Path, synth_prepared: Path, tmp_path: Path,
                                capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "crashed"
    shutil.copytree(ablated, out)
    (out / "sampler-site_balanced" / "fold_2" / "predictions.csv").unlink()  # its checkpoint is still there
    assert main(plan_args(synth_prepared, out)) == 2
    assert "pass --resume" in capsys.readouterr().err
    assert main([*plan_args(synth_prepared, out), "--resume"]) == 0
    captured = capsys.readouterr().out
    assert "job 7 of 10" in captured and "job 6 of 10" not in captured and "resuming after epoch 1" in captured
    assert results_files(out) == results_files(ablated)


def test_submitit(ablated: Path, synth_prepared: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
                  monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "submitit"
    shutil.copytree(ablated, out)
    shutil.rmtree(out / "baseline" / "fold_4")
    with monkeypatch.context() as patch:
        patch.setitem(sys.modules, "submitit", None)  # as if not installed
        assert main(["ablate", "--out", str(out), "--submitit"]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "pip install submitit" in err
    pytest.importorskip("submitit")
    assert main(["ablate", "--out", str(out), "--submitit", "--submitit-cluster", "debug", "--timeout-min", "10",
                 "--bootstrap", "50", "--threads", "1"]) == 0
    assert "submitted 1 jobs (debug)" in capsys.readouterr().out
    assert (out / "submitit").is_dir()
    assert results_files(out) == results_files(ablated)


def test_the_report_renders_the_ablation(ablated: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    report = tmp_path / "report"
    assert main(["report", "--ablation", str(ablated), "--out", str(report)]) == 0
    assert "ablation sampler-site_balanced - baseline: mean-site macro-F1" in capsys.readouterr().out
    markdown = (report / "report.md").read_text()
    assert "## Ablation: every variant against baseline (protocol cv)" in markdown
    assert "| site ham/vidir_molemax | sampler-site_balanced |" in markdown
    assert "figures/ablation_delta_macro_f1.png" in markdown
    assert (report / "figures" / "ablation_delta_macro_f1.png").read_bytes().startswith(b"\x89PNG")
    assert "Ablation: every variant against baseline" in (report / "report.html").read_text()
    summary = json.loads((report / "summary.json").read_text())
    assert list(summary["experiments"]) == [f"demo_b_joint-{v}" for v in VARIANTS]
    assert summary["ablation"]["sites"] == results_files(ablated)[0]["sites"]
    assert main(["report", str(ablated / "baseline"), "--ablation", str(ablated), "--out", str(tmp_path / "r2")]) == 2
    assert "not both" in capsys.readouterr().err
    assert main(["report", "--ablation", str(tmp_path), "--out", str(tmp_path / "r3")]) == 2
    assert "ablation.json: not found" in capsys.readouterr().err
    stale = tmp_path / "stale"
    shutil.copytree(ablated, stale)
    results = json.loads((stale / "ablation_results.json").read_text())
    results["sources"]["ham"]["sampler-site_balanced"]["macro_f1"]["value"] += 0.01
    (stale / "ablation_results.json").write_text(json.dumps(results))
    assert main(["report", "--ablation", str(stale), "--out", str(tmp_path / "r4")]) == 2
    assert "differ from its metrics.json" in capsys.readouterr().err


def test_an_ablation_on_one_fold_pairs_that_folds_images_says_so_and_extends_to_all_folds(
    synth_prepared: Path, ablated: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "one_fold"
    assert main([*plan_args(synth_prepared, out), "--set", "only_folds=[3]"]) == 0
    assert "only_folds [3]: these metrics cover the test images of those folds only" in capsys.readouterr().out
    assert [job.fold for job in read_plan(out).jobs] == [3, 3]  # one job per variant
    manifest = pd.read_csv(synth_prepared / "manifest.csv")
    fold3 = manifest[manifest["fold"] == 3]
    for variant in VARIANTS:
        run = RunFolder(out / variant)
        assert run.read_run_info()["folds"] == [3] and [f.path.name for f in run.folds()] == ["fold_3"]
        oof = pd.read_csv(run.oof_predictions)
        assert sorted(oof["image_id"]) == sorted(fold3["image_id"]) and (oof["fold"] == 3).all()
    assert RunFolder(out / "baseline").read_metrics()["sources"]["ham"]["n"] == int((fold3["source"] == "ham").sum())
    _, table = results_files(out)
    assert "only_folds=[3]" in table and "**Partial evaluation**" in table
    # the same command without only_folds keeps fold 3 of each variant and trains the other four
    kept = {p: p.stat().st_mtime_ns for p in out.glob("*/fold_3/*")}
    assert main(plan_args(synth_prepared, out)) == 0
    assert {p: p.stat().st_mtime_ns for p in out.glob("*/fold_3/*")} == kept
    assert len(read_plan(out).jobs) == len(VARIANTS) * FOLDS
    extended, table = results_files(out)
    full, _ = results_files(ablated)  # the same ablation run on all folds at once: the same numbers
    assert extended["sources"] == full["sources"] and extended["sites"] == full["sites"]
    assert "Partial evaluation" not in table
    # narrowing it again is another plan
    assert main([*plan_args(synth_prepared, out), "--set", "only_folds=[3]"]) == 2
    assert "made with a different plan" in capsys.readouterr().err


def test_an_extended_ablation_pools_every_fold_of_a_variant_whose_folds_were_already_there(
    synth_prepared: Path, ablated: Path, tmp_path: Path
) -> None:
    """The baseline's other folds taken from an identical earlier run: no job rewrites its run.json, and the
    table must still pair all five folds (it refused with 'predict different ham images' before)."""
    out = tmp_path / "reused"
    assert main([*plan_args(synth_prepared, out), "--set", "only_folds=[3]"]) == 0
    for fold in (0, 1, 2, 4):
        shutil.copytree(ablated / "baseline" / f"fold_{fold}", out / "baseline" / f"fold_{fold}")
    assert main(plan_args(synth_prepared, out)) == 0
    assert RunFolder(out / "baseline").read_run_info()["folds"] == list(range(FOLDS))
    assert "only_folds" not in (out / "baseline" / "config.yaml").read_text().replace("only_folds: null", "")
    extended, _ = results_files(out)
    full, _ = results_files(ablated)
    assert extended["sources"] == full["sources"] and extended["sites"] == full["sites"]

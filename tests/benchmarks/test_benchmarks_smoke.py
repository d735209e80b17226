"""The benchmarks run at a tiny size and report what they document; no timing is asserted (shared CPU)."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import bench_input_pipeline  # noqa: E402
import bench_train_step  # noqa: E402
import bench_tta  # noqa: E402
import gpu_check  # noqa: E402
import projection  # noqa: E402
import run  # noqa: E402
from common import TINY, Prepared, best_rates  # noqa: E402

CPU = torch.device("cpu")


def _positive(result: dict, *keys: str) -> None:
    for key in keys:
        assert math.isfinite(result[key]) and result[key] > 0, (key, result[key])


def test_input_pipeline_reports_both_loaders(synth_prepared: Path) -> None:
    result = bench_input_pipeline.measure(synth_prepared, TINY, CPU)
    _positive(result, "crossderm_batches_per_s", "crossderm_no_augment_batches_per_s", "conventional_batches_per_s")
    assert result["conventional_workers"] == 1
    assert result["image_size"] == 32 and result["batch_size"] == TINY.batch_size
    assert "speed-up" in bench_input_pipeline.describe(result)


def test_conventional_loader_yields_normalised_batches_of_the_cache_size(synth_prepared: Path) -> None:
    data = Prepared.open(synth_prepared)
    loader = bench_input_pipeline.jpeg_loader(data, 32, (0.5,) * 3, (0.25,) * 3, 4, 10, 0, False, seed=0)
    batches = list(bench_input_pipeline.jpeg_batches(loader, CPU))
    assert [len(labels) for _, labels in batches] == [4, 4, 2]
    images = torch.cat([images for images, _ in batches])
    assert images.shape == (10, 3, 32, 32) and images.is_contiguous(memory_format=torch.channels_last)
    assert images.min() >= -2.0 - 1e-6 and images.max() <= 2.0 + 1e-6  # (x - 0.5) / 0.25 for x in [0, 1]


def test_train_step_ratio_is_loader_over_memory(synth_prepared: Path) -> None:
    result = bench_train_step.measure(synth_prepared, TINY, CPU)
    _positive(result, "memory_images_per_s", "loader_images_per_s")
    assert result["model"] == TINY.model and not result["bf16_autocast"]


def test_training_steps_change_the_model(synth_prepared: Path) -> None:
    data = Prepared.open(synth_prepared)
    model = bench_train_step.bench_model(TINY.model, CPU)
    before = [p.detach().clone() for p in model.parameters()]
    feed = bench_train_step.crossderm_feed(data.batches(4, CPU, model), steps=2)
    rates = bench_train_step.step_rates(bench_train_step.Stepper(model, CPU), {"loader": feed}, 2, 1, 1)
    assert rates["loader"] > 0
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_tta_ratio_is_four_view_over_one_view_time(synth_prepared: Path) -> None:
    result = bench_tta.measure(synth_prepared, TINY, CPU)
    _positive(result, "views1_images_per_s", "views4_images_per_s")


def test_best_rates_keeps_each_measures_best_round() -> None:
    values = {"a": iter([1.0, 3.0, 2.0]), "b": iter([5.0, 4.0, 6.0])}
    assert best_rates({k: (lambda it=it: next(it)) for k, it in values.items()}, 3) == {"a": 3.0, "b": 6.0}


def test_protocol_counts_follow_the_paper_presets() -> None:
    a = projection.protocol_counts("paper_a_ham_only_fusion")
    b = projection.protocol_counts("paper_b_joint_convnext_tiny")
    assert (a["epochs"], b["epochs"], a["tta_views"]) == (30, 30, 4)
    assert a["train_images_per_epoch"] + a["val_images_per_epoch"] == 8012  # 4/5 of 10,015
    assert b["train_images_per_epoch"] + b["val_images_per_epoch"] == 20265  # 4/5 of 25,331
    assert a["val_images_per_epoch"] == 801 and b["val_images_per_epoch"] == 2026
    assert a["test_images"] == b["test_images"] == 5066  # one fold of HAM + ISIC-only
    assert a["train_image_steps"] == 5 * 30 * 7211
    assert b["tta_images"] == 5 * (2026 + 5066)


def test_projection_divides_image_steps_by_rates() -> None:
    rates = projection.Rates("test", "test_convnext", train=100.0, infer_1view=400.0, infer_tta=100.0)
    result = projection.project(rates, flops=None)
    b = result["experiments"]["b"]
    assert b["rate_scale"] == 1.0
    # from the real counts: 5 folds x 30 epochs x 18,239 training images at 100 img/s; 2,026 validation images
    # per epoch at 400 img/s; 5 x (2,026 + 5,066) images with TTA at 100 img/s
    assert b["seconds"] == pytest.approx({"train": 27_358.5, "validation": 759.75, "tta_inference": 354.6})
    assert b["hours"] == pytest.approx((27_358.5 + 759.75 + 354.6) / 3600)


def test_projection_scales_convnext_tiny_rates_to_the_fusion_model_by_flops() -> None:
    flops = {"convnext_tiny": 9.0, "crossderm_fusion_convnext_small_efficientnet_b3": 18.0}
    rates = projection.Rates("tiny", "convnext_tiny", train=10.0, infer_1view=30.0, infer_tta=7.5)
    result = projection.project(rates, flops)
    assert result["experiments"]["a"]["rate_scale"] == pytest.approx(0.5)
    assert result["experiments"]["b"]["rate_scale"] == 1.0
    a = result["experiments"]["a"]
    assert a["seconds"]["train"] == pytest.approx(a["train_image_steps"] / 5.0)


def test_cpu_projection_adds_the_given_convnext_tiny_rate() -> None:
    measured = projection.Rates("measured", "test_convnext", 100.0, 400.0, 100.0)
    result = projection.projections(measured, CPU)
    assert [row["train_images_per_s"] for row in result["projections"]] == [100.0, 3.6]
    flops = result["forward_gflops_224px"]
    assert 8 < flops["convnext_tiny"] < 10  # ConvNeXt-Tiny: 4.5 GMACs at 224 px
    assert flops["crossderm_fusion_convnext_small_efficientnet_b3"] > flops["convnext_tiny"]
    assert "ConvNeXt-Tiny" in projection.describe(result)


def test_run_writes_one_object_per_benchmark(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "bench_fake.py").write_text(
        "def run(quick):\n    return {'name': 'fake', 'quick': quick, 'ours_per_s': 2.0, 'ratio': 2.0}\n"
        "def describe(result):\n    return 'fake benchmark'\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(run, "BENCHMARKS", ("bench_fake", "bench_absent"))
    out = tmp_path / "results.json"
    assert run.main(["--quick", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["mode"] == "quick" and report["machine"]["cpu_count"] >= 1
    assert [b["name"] for b in report["benchmarks"]] == ["fake"]
    assert report["benchmarks"][0]["target"] is None and report["benchmarks"][0]["quick"] is True


def test_gpu_check_reports_missing_packages_with_the_wheel_command(monkeypatch: pytest.MonkeyPatch) -> None:
    assert gpu_check.missing_packages() == []
    monkeypatch.setitem(gpu_check.REQUIRED, "crossderm_no_such_module", "no-such-dist")
    assert gpu_check.missing_packages() == ["no-such-dist"]
    message = gpu_check.missing_message(["imagehash", "PyWavelets"])
    assert "missing Python packages: imagehash, PyWavelets" in message
    assert "-d .whl imagehash PyWavelets" in message


def test_gpu_check_fails_fast_when_a_package_is_missing(monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(gpu_check.REQUIRED, "crossderm_no_such_module", "no-such-dist")
    assert gpu_check.main(["--cpu-smoke"]) == 2
    assert "no-such-dist" in capsys.readouterr().err


def test_expanded_manifest_repeats_images_under_new_ids(synth_prepared: Path) -> None:
    manifest = Prepared.open(synth_prepared).manifest
    expanded = gpu_check.expanded_manifest(manifest, 3)
    assert len(expanded) == 3 * len(manifest)
    assert expanded["image_id"].is_unique
    assert expanded["lesion_group"].nunique() == 3 * manifest["lesion_group"].nunique()
    assert (expanded["cache_index"].to_numpy().reshape(3, -1) == manifest["cache_index"].to_numpy()).all()
    assert (expanded["fold"].to_numpy().reshape(3, -1) == manifest["fold"].to_numpy()).all()


def test_gpu_check_cpu_smoke_runs_every_stage(tmp_path: Path) -> None:
    out = tmp_path / "gpu_check.json"
    assert gpu_check.main(["--cpu-smoke", "--work", str(tmp_path / "work"), "--epochs", "1", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert set(report["step_images_per_s"]) == {"model_only", "loader", "naive_jpeg"}
    assert all(rate > 0 for rate in report["step_images_per_s"].values())
    training = report["training"]
    assert len(training["epochs"]) == 1 and training["best_weights"] and training["test_images"] > 0
    assert not report["gpu_resident_cache"]  # CPU: batches come from the memory-mapped cache
    protocol = report["protocol_projection"]
    assert protocol["train_images_per_s"] == training["epochs"][-1]["images_per_s"]
    assert set(protocol["experiments"]) == {"a", "b"} and protocol["total_hours"] > 0


def test_contention_trains_beside_a_competitor_that_really_used_cpu(synth_prepared: Path) -> None:
    import bench_contention

    threads = torch.get_num_threads()
    result = bench_contention.measure(synth_prepared, TINY, CPU)
    _positive(result, *(f"{name}_images_per_s" for name in bench_contention.MEASURES), "quiet_images_per_s")
    assert result["competitor_wall_s"] > 0 and result["competitor_cpu_s"] > 0.05 * result["competitor_wall_s"]
    assert all(1 <= n <= result["available_cpus"] for n in result["auto_threads_beside_competitor"])
    assert set(result["other_cpus_during"]) == set(bench_contention.MEASURES)
    assert result["ratio"] == result["contended_auto_images_per_s"] / result["quiet_images_per_s"]
    assert torch.get_num_threads() == threads  # the benchmark gives the thread count back
    assert "beside a busy loop" in bench_contention.describe(result)

"""The pipeline without Airflow: idempotent steps, reproducible config, W&B offline tracking."""

from __future__ import annotations

import logging

import pytest

from core import storage
from core.config import compose
from tests.training.pipeline_fixtures import TINY_OVERRIDES, make_tiny_home
from training import pipeline


@pytest.fixture
def tiny_cfg(tmp_path, monkeypatch):
    monkeypatch.setenv("LANDCOVER_HOME", str(make_tiny_home(tmp_path)))
    monkeypatch.setenv("WANDB_SILENT", "true")
    return compose([*TINY_OVERRIDES, "logging.style=both"])


@pytest.mark.slow
def test_run_all_is_idempotent_and_tracked_in_both_backends(tiny_cfg, caplog) -> None:
    caplog.set_level(logging.INFO, logger="training.pipeline")
    run = pipeline.run_all(tiny_cfg, run_id="t1")
    out = caplog.text
    assert "held-out mIoU" in out and "majority-class baseline" in out and "registry version" in out

    # The run folder holds the exact config: a run is reproducible from it.
    assert storage.read_text(storage.join(run.uri, "config.yaml")) == pipeline.to_yaml(tiny_cfg)
    metrics = run.result("evaluate")
    assert 0 <= metrics["baseline_miou"] <= metrics["miou"] <= 1
    # The gating metrics come from the path the infer Lambda's dispatcher picks on this CPU.
    import json

    from inference.runtime_cpu import choose_path

    expected = choose_path(backends={"onnx", "openvino"})
    written = json.loads(storage.read_text(metrics["metrics_uri"]))
    assert written["backend"] == written["runtime"]["path"] == expected.path.name
    assert written["runtime"]["cpu"]["flags"] == sorted(expected.cpu.flags)
    assert f"served path           {expected.path.name}" in out
    # The static int8 graph, evaluated and registered, calibrated on this run's training scenes.
    from core.artifacts import ONNX_INT8_QDQ_NAME
    from training.models.onnx_export import read_onnx_metadata

    train_images = [scene.image_uri for scene in pipeline._scenes(tiny_cfg)["train"]]
    version_qdq = storage.local_path(storage.join(run.result("register")["version_uri"], ONNX_INT8_QDQ_NAME))
    quantization = read_onnx_metadata(version_qdq)["quantization"]
    assert train_images and quantization["calibration_source"] == {"training_scenes": train_images}

    # Re-running finds every step's result and redoes nothing.
    before = {step: run.result(step) for step in pipeline.STEPS}
    caplog.clear()
    again = pipeline.run_all(tiny_cfg, run_id="t1")
    assert {step: again.result(step) for step in pipeline.STEPS} == before
    assert caplog.text.count("already done") == len(pipeline.STEPS)

    # The same run id with another config is refused rather than silently mixed.
    with pytest.raises(ValueError, match="different config"):
        pipeline.start_run(compose([*TINY_OVERRIDES, "training.epochs=3"]), run_id="t1")

    # W&B ran offline next to MLflow.
    tracking = run.result("train_head")["tracking"]
    assert set(tracking) == {"mlflow", "wandb"}
    offline_runs = list((storage.local_path(tiny_cfg.logging.wandb.dir) or None).glob("wandb/offline-run-*"))
    assert offline_runs, "no offline W&B run directory"
    assert any(tracking["wandb"] in p.name for p in offline_runs)


def test_unknown_logging_style_is_refused(tiny_cfg) -> None:
    from training.tracking import open_tracker

    cfg = compose([*TINY_OVERRIDES, "logging.style=tensorboard"])
    with pytest.raises(ValueError, match=r"logging\.style='tensorboard'"):
        open_tracker(cfg, storage.to_uri("/tmp/unused"), "x")


def test_wandb_goes_online_only_with_a_key(monkeypatch) -> None:
    from training.tracking import wandb_mode

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    assert wandb_mode("offline") == "offline"
    monkeypatch.setenv("WANDB_API_KEY", "k")
    assert wandb_mode("offline") == "online"
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert wandb_mode("offline") == "offline"

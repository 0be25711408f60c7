"""Training on an encoder registry version (model.encoder_version): resolution, pinning, the
feature cache, and the record that names it in the model card, the export and the ONNX metadata."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from safetensors.torch import load_file, save_file

from core import storage
from core.config import compose
from core.encoder_registry import register_encoder_version
from core.model_card import ENCODER_REGISTRY, render_model_card
from tests.training.pipeline_fixtures import TINY_OVERRIDES, make_tiny_home
from training import pipeline
from training.models.clay import build_encoder
from training.models.weights import (
    WeightsConfigError,
    encoder_weights_record,
    pin_encoder_version,
    resolve_encoder_version,
)

NAME = "clay-tiny-test"
INPUT_URI = "s3://imagery/naip/unlabelled/"


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("LANDCOVER_HOME", str(make_tiny_home(tmp_path)))
    return tmp_path


def _cfg(*overrides: str):
    # ++: the key may or may not exist yet in the pretrain config group.
    return compose([*TINY_OVERRIDES, f"++pretrain.encoder_name={NAME}", *overrides])


def _register(tmp_path, seed: int, preset: str = "tiny") -> tuple[str, dict[str, torch.Tensor]]:
    """Register a seeded tiny encoder as a new version (what `landcover pretrain` writes)."""
    torch.manual_seed(seed)
    encoder = build_encoder("tiny")
    state = {k: v.contiguous() for k, v in encoder.state_dict().items()}
    path = tmp_path / f"encoder-{seed}.safetensors"
    save_file(state, str(path))
    record = {
        "preset": preset,
        "encoder": encoder.config.to_dict(),
        "objective": {"name": "mae", "mask_ratio": 0.75},  # as training.pretrain records it
        "start": {"source": "random-init"},
        "lineage": {"input_uri": INPUT_URI, "scenes": 3, "run_uri": f"file:///runs/pretrain-{seed}"},
    }
    version = register_encoder_version(
        _cfg().storage.registry_uri, NAME, path, record, f"# encoder {seed}\n", figures={}
    )
    return version, state


def test_latest_is_pinned_once_per_run(home) -> None:
    v1, _ = _register(home, 1)
    run = pipeline.start_run(_cfg("model.encoder_version=latest"), run_id="pin")
    assert run.cfg.model.encoder_version == v1  # the stored config names the concrete version
    v2, _ = _register(home, 2)
    assert v2 > v1 and resolve_encoder_version(_cfg("model.encoder_version=latest"))["version"] == v2
    # Resuming the run with `latest` keeps its pinned version; a new run takes the newest.
    assert (
        pipeline.start_run(_cfg("model.encoder_version=latest"), run_id="pin").cfg.model.encoder_version == v1
    )
    assert (
        pipeline.start_run(_cfg("model.encoder_version=latest"), run_id="new").cfg.model.encoder_version == v2
    )
    # Resuming with another explicit version is another config.
    with pytest.raises(ValueError, match="different config"):
        pipeline.start_run(_cfg(f"model.encoder_version={v2}"), run_id="pin")


def test_explicit_version_and_its_record(home) -> None:
    v1, _ = _register(home, 1)
    _register(home, 2)
    cfg = _cfg(f"model.encoder_version={v1}")
    assert pin_encoder_version(cfg) == v1 and cfg.model.encoder_version == v1
    record = encoder_weights_record(cfg)
    registered = resolve_encoder_version(cfg)
    assert record["source"] == ENCODER_REGISTRY
    assert record["encoder_name"] == NAME and record["version"] == v1
    assert record["sha256"] == registered["sha256"] and record["uri"] == registered["uri"]
    assert record["input_uri"] == INPUT_URI and record["objective"] == "mae"


def test_encoder_version_config_errors(home) -> None:
    registry_uri = _cfg().storage.registry_uri
    with pytest.raises(WeightsConfigError, match=rf"no latest.json for encoder '{NAME}'") as info:
        resolve_encoder_version(_cfg("model.encoder_version=latest"))
    assert registry_uri in str(info.value)
    v1, _ = _register(home, 1)
    with pytest.raises(
        WeightsConfigError, match=rf"no registered version 'nope' of encoder '{NAME}'"
    ) as info:
        resolve_encoder_version(_cfg("model.encoder_version=nope"))
    assert registry_uri in str(info.value) and v1 in str(info.value)
    for other in ("model.pretrained_uri=/x/enc.safetensors", "model.pretrained=clay-v1.5"):
        with pytest.raises(WeightsConfigError, match="both set"):
            resolve_encoder_version(_cfg(f"model.encoder_version={v1}", other))
    small, _ = _register(home, 3, preset="small")
    with pytest.raises(
        WeightsConfigError, match=r"'small' encoder but model\.preset is 'tiny'.*model=clay_small"
    ):
        resolve_encoder_version(_cfg(f"model.encoder_version={small}"))
    with pytest.raises(WeightsConfigError, match="needs an encoder name"):
        resolve_encoder_version(
            compose([*TINY_OVERRIDES, "model.encoder_version=latest", "model.encoder_name=null"])
        )


def test_cache_features_uses_the_encoder_version(home, caplog) -> None:
    v1, state1 = _register(home, 1)
    v2, _ = _register(home, 2)
    roots = {}
    for label, overrides in {
        "v1": [f"model.encoder_version={v1}"],
        "v2": [f"model.encoder_version={v2}"],
        "random": [],
    }.items():
        run = pipeline.start_run(_cfg(*overrides), run_id=f"cache-{label}")
        pipeline.validate_data(run)
        with caplog.at_level(logging.WARNING, logger="training.models.weights"):
            caplog.clear()
            roots[label] = pipeline.cache_features(run)["features_uri"]
        # Only the random-init run warns that its encoder carries no pretraining.
        assert ("RANDOMLY INITIALISED" in caplog.text) == (label == "random")
    # The cache holds exactly the registered encoder's weights, and each encoder gets its own folder.
    cached = load_file(str(storage.local_path(storage.join(roots["v1"], "encoder.safetensors"))))
    assert cached.keys() == state1.keys() and all(torch.equal(cached[k], state1[k]) for k in state1)
    assert len(set(roots.values())) == 3


def test_a_changed_registry_file_is_refused(home) -> None:
    v1, _ = _register(home, 1)
    cfg = _cfg(f"model.encoder_version={v1}")
    path = storage.local_path(resolve_encoder_version(cfg)["uri"])
    torch.manual_seed(9)
    save_file({k: v.contiguous() for k, v in build_encoder("tiny").state_dict().items()}, str(path))
    from training.models.weights import WeightsNotFetchedError

    with pytest.raises(WeightsNotFetchedError, match="encoder registry record"):
        pipeline._build_segmenter(cfg)


def test_model_card_names_the_encoder_version(home) -> None:
    v1, _ = _register(home, 1)
    record = encoder_weights_record(_cfg(f"model.encoder_version={v1}"))
    card = render_model_card(
        model_name="m",
        version="v",
        created_at="2026-12-07T00:00:00Z",
        version_uri="file:///r/m/v",
        metrics={"miou": 0.5, "probe_miou": 0.25},
        source={"kind": "training-run", "encoder_weights": record},
    )
    row = next(line for line in card.splitlines() if line.startswith("| encoder weights |"))
    assert f"encoder registry: {NAME} version {v1}" in row
    assert f"pretrained on {INPUT_URI}" in row and record["sha256"] in row and "objective mae," in row
    assert "| linear probe mIoU (frozen encoder features only) | 0.2500 |" in card
    assert "randomly initialised" not in card


def test_export_and_onnx_metadata_carry_the_encoder_record(home, tmp_path) -> None:
    from training.models.export import read_export_metadata, save_export
    from training.models.onnx_export import onnx_metadata

    v1, _ = _register(home, 1)
    cfg = _cfg(f"model.encoder_version={v1}")
    record = encoder_weights_record(cfg)
    model = pipeline._build_segmenter(cfg).eval()
    path = tmp_path / "model.safetensors"
    save_export(model, str(path), encoder_weights=record)
    meta = read_export_metadata(path)
    assert meta["encoder_weights"] == json.loads(json.dumps(record))
    # The ONNX conversion copies the export's metadata into metadata_props (what the Lambda reads).
    assert onnx_metadata(model, meta, chip_size=64)["encoder_weights"] == meta["encoder_weights"]


@pytest.mark.slow
def test_a_run_on_an_encoder_version_names_it_end_to_end(home, caplog) -> None:
    """The whole pipeline on a registered version: the registry source, the card, the served
    ONNX artifact's metadata, MLflow and the summary name it; every run reports probe_miou."""
    import mlflow

    from core import registry
    from core.artifacts import CARD_NAME, ONNX_INT8_NAME
    from training.models.onnx_export import read_onnx_metadata

    v1, _ = _register(home, 1)
    caplog.set_level(logging.INFO, logger="training.pipeline")
    cfg = _cfg("model.encoder_version=latest")
    run = pipeline.run_all(cfg, run_id="e2e")
    metrics = json.loads(storage.read_text(run.result("evaluate")["metrics_uri"]))
    assert 0.0 <= metrics["probe_miou"] <= 1.0 and metrics["probe"]["test_chips"] > 0
    assert run.result("evaluate")["probe_miou"] == metrics["probe_miou"]

    info = registry.get_version(cfg.storage.registry_uri, cfg.model_name, "e2e")
    weights = info["source"]["encoder_weights"]
    assert (weights["source"], weights["encoder_name"], weights["version"]) == (ENCODER_REGISTRY, NAME, v1)
    card = storage.read_text(storage.join(info["uri"], CARD_NAME))
    assert f"encoder registry: {NAME} version {v1}" in card and "linear probe mIoU" in card
    onnx = storage.local_path(storage.join(info["uri"], ONNX_INT8_NAME))
    assert read_onnx_metadata(onnx)["encoder_weights"]["version"] == v1

    mlflow.set_tracking_uri(cfg.logging.mlflow.tracking_uri)
    logged = mlflow.get_run(run.result("train_head")["tracking"]["mlflow"])
    assert (
        logged.data.tags["encoder_version"] == v1 and logged.data.tags["encoder_source"] == ENCODER_REGISTRY
    )
    assert "probe_miou" in logged.data.metrics
    assert f"encoder               {NAME} version {v1}" in caplog.text and "linear probe mIoU" in caplog.text

    # The comparison script reads this run's own figures.
    from setup.tools.compare_encoders import read_run

    figures = read_run(run.uri)
    assert figures.encoder == f"{NAME} {v1}" and figures.seed == cfg.seed
    assert figures.values["miou"] == metrics["miou"] and figures.values["probe_miou"] == metrics["probe_miou"]
    assert figures.values["foreign_accuracy"] == metrics["foreign_family"]["pixel_accuracy"]


def _finished(cfg, run_id: str, miou: float, road: float, probe: float | None) -> str:
    """A run folder as the pipeline leaves it after evaluate (its real config; chosen figures)."""
    from core import artifacts

    run = pipeline.start_run(cfg, run_id=run_id)
    per_class = {name: 0.9 for name in ("Water", "Tree Canopy", "Low Vegetation", "Barren")}
    per_class.update({"Impervious (other)": 0.8, "Impervious (road)": road, "No Data": None})
    metrics = {"miou": miou, "per_class_iou": per_class, "foreign_family": {"pixel_accuracy": miou - 0.1}}
    if probe is not None:
        metrics["probe_miou"] = probe
    metrics_uri = storage.join(run.uri, artifacts.RUN_METRICS_NAME)
    storage.write_text(metrics_uri, json.dumps(metrics))
    storage.write_text(run.step_uri("evaluate"), json.dumps({"metrics_uri": metrics_uri}))
    return run.uri


def test_compare_encoders_reads_each_run_and_compares_the_means(home, capsys) -> None:
    from setup.tools import compare_encoders

    v1, _ = _register(home, 1)
    uris = [
        _finished(_cfg("seed=1"), "r1", 0.70, 0.50, 0.40),
        _finished(_cfg("seed=2"), "r2", 0.72, 0.40, None),  # from before the probe: n/a
        _finished(_cfg("seed=1", "model.encoder_version=latest"), "p1", 0.80, 0.60, 0.55),
        _finished(_cfg("seed=2", "model.encoder_version=latest"), "p2", 0.84, 0.70, 0.65),
    ]
    assert compare_encoders.main(uris) == 0
    out = capsys.readouterr().out
    label = f"{NAME} {v1}"
    assert f"| p1 | {label} | 1 | 0.8000 | Impervious (road) | 0.6000 | 0.6000 | 0.7000 | 0.5500 |" in out
    assert "| r2 | random | 2 | 0.7200 | Impervious (road) | 0.4000 | 0.4000 | 0.6200 | n/a |" in out
    assert "| random (mean) | 2 | 1, 2 | 0.7100 | 0.4500 | 0.4500 | 0.6100 | 0.4000 |" in out
    assert f"| {label} (mean) | 2 | 1, 2 | 0.8200 | 0.6500 | 0.6500 | 0.7200 | 0.6000 |" in out
    assert f"| {label} | +0.1100 | +0.2000 | +0.2000 | +0.1100 | +0.2000 |" in out
    # A run whose evaluate step has not run is refused, not guessed.
    unfinished = pipeline.start_run(_cfg(), run_id="unfinished").uri
    with pytest.raises(RuntimeError, match="evaluate"):
        compare_encoders.main([unfinished])

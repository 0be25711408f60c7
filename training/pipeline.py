"""The training pipeline as ordered, idempotent steps (the runner lives elsewhere).

    validate_data -> cache_features -> train_head -> evaluate -> register -> promote

A run is a folder, ``<storage.root_uri>/runs/<run_id>/``, holding the resolved config the
run was started with. Each step rebuilds the config from that folder, does its work, and
records its small JSON result in ``steps/<step>.json``; a step whose result exists is
skipped, so a retried Airflow task or a re-run of ``python -m training.train`` resumes
instead of redoing work. Steps hand each other URIs and ids only (what goes over XCom).
"""

from __future__ import annotations

import copy
import functools
import json
import logging
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf

from core import artifacts, storage
from core.config import apply_storage, to_yaml

log = logging.getLogger(__name__)

SYNTHETIC_CAVEAT = (
    "Trained and evaluated on procedurally generated NAIP-like scenes, with a Clay encoder that was "
    "randomly initialised (not pretrained) and kept frozen. The figures show the pipeline works end "
    "to end; they say nothing about accuracy on real NAIP imagery."
)


@dataclass(frozen=True)
class Run:
    """A pipeline run: its id, its folder and the config it was started with."""

    run_id: str
    uri: str
    cfg: DictConfig

    def step_uri(self, step: str) -> str:
        return artifacts.step_record_uri(self.uri, step)

    def result(self, step: str) -> dict[str, Any]:
        """The recorded result of an earlier step (raises if it has not run)."""
        uri = self.step_uri(step)
        if not storage.exists(uri):
            raise RuntimeError(f"step {step!r} has not run yet for run {self.run_id} ({uri})")
        return json.loads(storage.read_text(uri))


def new_run_id(variant: str) -> str:
    """``<variant>-<UTC timestamp>``: sortable and readable."""
    return f"{variant}-{datetime.now(UTC):%Y%m%dT%H%M%S}"


def run_uri_for(cfg: DictConfig, run_id: str) -> str:
    return artifacts.run_uri(cfg.storage.root_uri, run_id)


def start_run(cfg: DictConfig, run_id: str | None = None) -> Run:
    """Create the run folder and store the resolved config in it.

    Starting a run id that exists resumes it, provided the config is the same.
    ``model.encoder_version=latest`` is pinned here, once: the stored config names the concrete
    version, so every step of the run (and a resume after a newer version registered) uses the
    same encoder.
    """
    from training.models.weights import LATEST, pin_encoder_version

    apply_storage(cfg)
    run_id = artifacts.safe_name(run_id or new_run_id(cfg.training.name))
    uri = run_uri_for(cfg, run_id)
    config_uri = storage.join(uri, artifacts.RUN_CONFIG_NAME)
    cfg = copy.deepcopy(cfg)  # the caller's config keeps `latest`
    if not storage.exists(config_uri):
        pin_encoder_version(cfg)
        storage.write_text(config_uri, to_yaml(cfg))
        return load_run(uri)
    if str(cfg.model.get("encoder_version")) == LATEST:
        # Resuming with `latest` means the version this run pinned, not a newer one.
        cfg.model.encoder_version = OmegaConf.create(storage.read_text(config_uri)).model.get(
            "encoder_version"
        )
    text = to_yaml(cfg)
    if storage.read_text(config_uri) != text:
        raise ValueError(
            f"run {run_id} already exists at {uri} with a different config; "
            "start a new run id instead of changing an existing run"
        )
    return load_run(uri)


def load_run(uri: str) -> Run:
    """Rebuild a run from its folder (what every step after the first does)."""
    cfg = OmegaConf.create(storage.read_text(storage.join(uri, artifacts.RUN_CONFIG_NAME)))
    apply_storage(cfg)
    return Run(run_id=uri.rstrip("/").rsplit("/", 1)[-1], uri=uri, cfg=cfg)


def step(fn: Callable[[Run], dict[str, Any]]) -> Callable[[Run], dict[str, Any]]:
    """Make a step idempotent: return the recorded result if it exists, else run and record it."""
    name = fn.__name__

    @functools.wraps(fn)
    def wrapper(run: Run) -> dict[str, Any]:
        uri = run.step_uri(name)
        if storage.exists(uri):
            log.info("[%s] already done for run %s; reusing its result", name, run.run_id)
            return json.loads(storage.read_text(uri))
        log.info("[%s] starting (run %s)", name, run.run_id)
        started = time.perf_counter()
        result = fn(run)
        result["seconds"] = round(time.perf_counter() - started, 2)
        storage.write_text(uri, json.dumps(result, indent=2, default=str))
        log.info("[%s] done in %.1f s", name, result["seconds"])
        return result

    return wrapper


# -- helpers -------------------------------------------------------------------------------


def _scenes(cfg: DictConfig) -> dict[str, list]:
    from training.data.chesapeake import SPLITS, scenes_from_config

    return {split: scenes_from_config(cfg.data, split) for split in SPLITS}


def _calibration_scenes(cfg: DictConfig) -> list[str]:
    """The training split's image URIs: the static int8 graph calibrates on the user's imagery."""
    return [scene.image_uri for scene in _scenes(cfg)["train"]]


def _build_segmenter(cfg: DictConfig):
    """The encoder (seeded random init, the configured pretrained weights or an encoder registry
    version) plus a fresh head."""
    import torch

    from training.models.checkpoint import load_encoder, load_encoder_state_dict
    from training.models.head import build_segmenter, head_spec
    from training.models.weights import (
        encoder_weights_uri,
        load_registry_encoder,
        selected_weights,
        warn_random_encoder,
    )

    torch.manual_seed(cfg.seed)
    model = build_segmenter(
        cfg.model.preset, cfg.model.num_classes, cfg.model.head_width, **head_spec(cfg.model)
    )
    if cfg.model.get("encoder_version"):  # an encoder registry version (pinned when the run started)
        weights = selected_weights(cfg)
        log.info(
            "encoder: %s version %s (%s)", cfg.model.encoder_name, weights.registry["version"], weights.uri
        )
        load_encoder(model.encoder, load_registry_encoder(weights))
        return model
    uri = encoder_weights_uri(cfg)  # model.pretrained (a fetched catalog name) or model.pretrained_uri
    if uri:
        allow = cfg.model.get("checkpoint_allow_classes") or ()
        load_encoder(model.encoder, load_encoder_state_dict(uri, allow_classes=allow))
    else:
        warn_random_encoder("training")
    return model


def _chip_recipes(cfg: DictConfig) -> dict:
    from training.features import ChipRecipe

    common = {
        "size": cfg.data.chip_size,
        "max_nodata_fraction": cfg.data.max_nodata_fraction,
        "max_pixels": cfg.data.max_pixels,
    }
    return {
        "train": ChipRecipe(random_count=cfg.training.chips_per_scene, seed=cfg.seed, **common),
        "val": ChipRecipe(random_count=cfg.training.val_chips_per_scene, seed=cfg.seed + 1000, **common),
        # Held-out scenes are evaluated on their whole grid, not a sample.
        "test": ChipRecipe(random_count=None, overlap=cfg.data.chip_overlap, **common),
    }


def _class_weights(cfg: DictConfig, stats: dict) -> list[float] | None:
    """Per-class loss weights: none, inverse training frequency (normalised to mean 1), or a
    list with one weight per class."""
    choice = cfg.training.class_weights
    if choice in (None, "none"):
        return None
    if not isinstance(choice, str):
        weights = [float(w) for w in choice]
        classes = len(stats["class_fractions"])
        if len(weights) != classes or any(w < 0 for w in weights):
            raise ValueError(
                f"training.class_weights={list(choice)}: give {classes} non-negative weights (one per class)"
            )
        return weights
    if choice != "inverse_frequency":
        raise ValueError(
            f"training.class_weights={choice!r}: use null, inverse_frequency or a list of per-class weights"
        )
    fractions = list(stats["class_fractions"])
    ignore = cfg.training.ignore_index
    present = [i for i, f in enumerate(fractions) if f > 0 and i != ignore]
    raw = [0.0 if i not in present else 1.0 / max(fractions[i], 1e-4) for i in range(len(fractions))]
    scale = len(present) / sum(raw)
    return [round(w * scale, 4) for w in raw]


def _device(cfg: DictConfig):
    """Device and precision of the heavy steps (training.device, training.precision); logged."""
    from training.device import select_device

    return select_device(cfg.training.precision, cfg.training.device)


def _task(cfg: DictConfig, class_weights: list[float] | None, total_steps: int | None = None):
    from training.models.head import head_spec
    from training.module import SegmentationTask

    warmup = int(cfg.training.warmup_fraction * total_steps) if total_steps else 0
    return SegmentationTask(
        preset=cfg.model.preset,
        num_classes=cfg.model.num_classes,
        head_width=cfg.model.head_width,
        **head_spec(cfg.model),
        min_lr_ratio=cfg.training.get("min_lr_ratio", 0.0),
        features_only=True,
        loss=cfg.training.loss,
        lovasz_weight=cfg.training.get("lovasz_weight", 1.0),
        focal_gamma=cfg.training.focal_gamma,
        class_weights=class_weights,
        ignore_index=cfg.training.ignore_index,
        lr=cfg.training.lr,
        weight_decay=cfg.training.weight_decay,
        warmup_steps=warmup,
        total_steps=total_steps,
    )


def _tracker(run: Run):
    from training.tracking import open_tracker

    return open_tracker(run.cfg, run.uri, run_name=run.run_id)


# -- steps ---------------------------------------------------------------------------------


@step
def validate_data(run: Run) -> dict[str, Any]:
    """Check every scene, keep splits disjoint, and compute the training-data statistics."""
    from core.naip import validate_naip
    from training.data.chesapeake import label_nodata_counts, label_shape
    from training.data.stats import compute_stats

    cfg = run.cfg
    scenes = _scenes(cfg)
    nodata: dict[str, dict[str, int]] = {}  # raw lc No Data values (0, 15) and all pixels, per split
    for split, records in scenes.items():
        nodata[split] = {}
        for record in records:
            meta = validate_naip(record.image_uri, max_pixels=cfg.data.max_pixels)
            if label_shape(record.label_uri) != (meta["height"], meta["width"]):
                raise ValueError(f"{record.label_uri} is not pixel-aligned with {record.image_uri}")
            for key, n in label_nodata_counts(record.label_uri).items():
                nodata[split][key] = nodata[split].get(key, 0) + n
        log.info("[validate_data] %s: %d scenes ok", split, len(records))
    ids = {split: {r.scene_id for r in records} for split, records in scenes.items()}
    leaked = (ids["train"] | ids["val"]) & ids["test"]
    if leaked:
        raise ValueError(f"held-out scenes also appear in train/val: {sorted(leaked)}")

    stats = compute_stats(scenes["train"])
    stats_uri = storage.join(run.uri, artifacts.DATA_STATS_NAME)
    stats.save(stats_uri)
    return {
        "stats_uri": stats_uri,
        "scenes": {s: sorted(v) for s, v in ids.items()},
        "label_nodata_pixels": nodata,
    }


def _feature_cache(run: Run) -> tuple:
    """The frozen model, scenes, chip recipes and cache folder of a run (encoder weights saved)."""
    from training.features import cache_fingerprint, save_encoder

    cfg = run.cfg
    if not cfg.model.freeze_encoder:
        raise ValueError(
            "model.freeze_encoder=false trains end to end; the feature cache needs a frozen encoder"
        )
    model = _build_segmenter(cfg)
    scenes = _scenes(cfg)
    recipes = _chip_recipes(cfg)
    root = storage.join(
        cfg.training.features_uri,
        cache_fingerprint(
            model.encoder,
            [s for split in scenes.values() for s in split],
            recipes,
            feature_layers=model.head.feature_layers,
            precision=cfg.training.precision,
        ),
    )
    save_encoder(model.encoder, storage.join(root, artifacts.ENCODER_WEIGHTS_NAME))
    return model, scenes, recipes, root


def _cache_options(cfg: DictConfig) -> dict[str, int]:
    t = cfg.training
    return {
        "shard_size": t.shard_size,
        "batch_size": t.encode_batch_size,
        "scenes_per_shard": t.scenes_per_shard,
    }


@step
def cache_features(run: Run) -> dict[str, Any]:
    """Run the frozen encoder once per chip and store fp16 feature shards (shared across runs),
    shard of scenes by shard (a re-run resumes at the first unfinished shard)."""
    from training.feature_shards import cache_splits

    model, scenes, recipes, root = _feature_cache(run)
    device = _device(run.cfg)
    counts = cache_splits(model, scenes, recipes, root, device, **_cache_options(run.cfg))
    log.info("[cache_features] chips per split: %s at %s", counts, root)
    return {"features_uri": root, "chips": counts, "device": device.to_dict()}


def cache_features_shard(run: Run, index: int) -> dict[str, Any]:
    """One shard of scenes of cache_features (an AWS Batch array child); records no step result:
    a later ``cache_features`` merges the shards and records it."""
    from training.feature_shards import cache_splits

    model, scenes, recipes, root = _feature_cache(run)
    device = _device(run.cfg)
    cache_splits(model, scenes, recipes, root, device, only=index, **_cache_options(run.cfg))
    return {"features_uri": root, "shard": index, "device": device.to_dict()}


@step
def train_head(run: Run) -> dict[str, Any]:
    """Fit the head on cached features; log per-epoch metrics; store the head weights."""
    import torch
    from torch.utils.data import DataLoader

    from training.features import CachedFeatures
    from training.progress import EpochProgress
    from training.tracking import TrackerLogger

    cfg = run.cfg
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    features_uri = run.result("cache_features")["features_uri"]
    stats = json.loads(storage.read_text(run.result("validate_data")["stats_uri"]))
    train_set = CachedFeatures(
        storage.join(features_uri, "train"),
        augment=cfg.training.get("augment", False),
        crop=cfg.training.get("crop_size"),
        band_jitter=cfg.training.get("band_jitter", 0.0),
        brightness_jitter=cfg.training.get("brightness_jitter", 0.0),
        band_offset=cfg.training.get("band_offset", 0.0),
        pixel_noise=cfg.training.get("pixel_noise", 0.0),
        seed=cfg.seed,
    )
    val_set = CachedFeatures(storage.join(features_uri, "val"))
    batch = cfg.training.batch_size
    train_loader = DataLoader(
        train_set, batch_size=batch, shuffle=True, generator=torch.Generator().manual_seed(cfg.seed)
    )
    val_loader = DataLoader(val_set, batch_size=batch)
    total_steps = len(train_loader) * cfg.training.epochs
    weights = _class_weights(cfg, stats)
    task = _task(cfg, weights, total_steps)

    tracker = _tracker(run)
    tracker.log_dict(stats, artifacts.DATA_STATS_NAME)
    tracker.log_params(
        {"data.train_chips": len(train_set), "data.val_chips": len(val_set), "class_weights": weights}
    )
    device = _device(cfg)
    trainer = pl.Trainer(
        max_epochs=cfg.training.epochs,
        **device.trainer_kwargs(),
        logger=TrackerLogger(tracker),
        log_every_n_steps=1,
        # Epochs counted from 1 like the log lines; a bar only on a terminal (not in task logs).
        enable_progress_bar=False,
        callbacks=[EpochProgress()],
        enable_checkpointing=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        # Validate every n epochs, and at least after the last one.
        check_val_every_n_epoch=max(1, min(cfg.training.get("val_every_n_epochs", 1), cfg.training.epochs)),
        deterministic=True,
    )
    trainer.fit(task, train_loader, val_loader)

    head_uri = storage.join(run.uri, artifacts.HEAD_NAME)
    storage.write_tensors(head_uri, task.model.head.state_dict())
    val = task.epoch_metrics.get("val", {})
    return {
        "head_uri": head_uri,
        "tracking": tracker.ids(),
        "val_miou": val.get("miou"),
        "class_weights": weights,
        "device": device.to_dict(),
    }


def _trained_segmenter(run: Run, with_encoder: bool):
    """The trained model: the head from train_head, plus (optionally) the cached encoder."""
    from safetensors.torch import load_file

    from training.features import load_encoder_weights
    from training.models.head import ClaySegmenter

    cfg = run.cfg
    task = _task(cfg, None)
    with tempfile.TemporaryDirectory() as tmp:
        head_file = storage.download(run.result("train_head")["head_uri"], Path(tmp) / artifacts.HEAD_NAME)
        task.model.head.load_state_dict(load_file(str(head_file)))
    if not with_encoder:
        return task.model.eval()
    from training.models.clay import build_encoder

    encoder = build_encoder(cfg.model.preset)
    load_encoder_weights(
        encoder, storage.join(run.result("cache_features")["features_uri"], artifacts.ENCODER_WEIGHTS_NAME)
    )
    return ClaySegmenter(encoder, task.model.head).eval()


def _served_predictors(run: Run, model: Any, stats: dict, tmp: Path) -> tuple[str, dict[str, Any]]:
    """The served path's name and the predictors to compare: the trained model exported as the
    registry will (fp16 safetensors), and the runtime artifact the infer Lambda's dispatcher
    picks on this CPU written beside it in the run folder and loaded as the Lambda loads it
    (``<path name>``), next to the fp32 export through torch (``fp32``)."""
    from inference.runtime import load_predictor
    from inference.runtime_cpu import choose_path, load_chosen
    from training.models.export import save_export
    from training.models.onnx_export import write_runtime_artifacts
    from training.models.weights import encoder_weights_record

    export_uri = storage.join(run.uri, artifacts.EXPORT_NAME)
    if not storage.exists(export_uri):
        save_export(
            model,
            export_uri,
            reference_stats=stats,
            extra={"run_id": run.run_id},
            encoder_weights=encoder_weights_record(run.cfg),
        )
    # The Lambda image's runtimes only (it ships no torch).
    choice = choose_path(backends={"onnx", "openvino"})
    uri = write_runtime_artifacts(
        export_uri, run.uri, names=(choice.artifact,), calibration_scenes=_calibration_scenes(run.cfg)
    )[choice.artifact]
    local = storage.local_path(uri) or storage.download(uri, tmp / choice.artifact)
    served = load_chosen(choice, str(local))
    return choice.path.name, {choice.path.name: served, "fp32": load_predictor(export_uri, "torch")}


@step
def evaluate(run: Run) -> dict[str, Any]:
    """Held-out metrics on the served path: whole test scenes through the inference scene
    predictor with the exported model on the runtime path the infer Lambda's dispatcher picks
    for this CPU (served; gates promotion) and in fp32, their pixel agreement, and the
    majority-class and per-pixel spectral baselines on the same pixels."""
    from training.baselines import fit_pixel_baseline
    from training.evaluation import (
        evaluate_foreign_families,
        evaluate_served,
        render_confusion_matrix,
        render_samples,
    )
    from training.features import CachedFeatures
    from training.models.weights import encoder_weights_record

    cfg = run.cfg
    features_uri = run.result("cache_features")["features_uri"]
    stats = json.loads(storage.read_text(run.result("validate_data")["stats_uri"]))
    ignore = cfg.training.ignore_index
    train = CachedFeatures(storage.join(features_uri, "train"))
    if train.images is None:
        raise ValueError(f"the feature cache at {features_uri} holds no chips; rebuild it")
    pixel_baseline = fit_pixel_baseline(
        train.images.numpy(),
        train.labels.numpy(),
        cfg.model.num_classes,
        ignore_index=ignore,
        max_pixels=cfg.training.get("pixel_baseline_pixels", 200_000),
        seed=cfg.seed,
    )
    probe = _probe(cfg, train, CachedFeatures(storage.join(features_uri, "test")))
    del train
    model = _trained_segmenter(run, with_encoder=True)
    with tempfile.TemporaryDirectory() as tmp:
        served, predictors = _served_predictors(run, model, stats, Path(tmp))
        report = evaluate_served(
            predictors,
            _scenes(cfg)["test"],
            train_class_fractions=stats["class_fractions"],
            pixel_baseline=pixel_baseline,
            ignore_index=ignore,
            served=served,
            reference="fp32",
            num_samples=max(1, cfg.logging.num_sample_images),
        )
        # Robustness: scene families the generator does not make (measured, never tuned to).
        report.metrics["foreign_family"] = evaluate_foreign_families(
            predictors[served], storage.join(run.uri, "foreign_scenes"), seed=cfg.seed, ignore_index=ignore
        )
        report.metrics["runtime"] = predictors[served].runtime  # path, reason, CPU flags
    metrics = report.metrics
    metrics["probe"] = probe
    metrics["probe_miou"] = probe["miou"]
    metrics["encoder_weights"] = encoder_weights_record(cfg)
    metrics_uri = storage.join(run.uri, artifacts.RUN_METRICS_NAME)
    storage.write_text(metrics_uri, json.dumps(metrics, indent=2))
    log.info(
        "[evaluate] served (%s) mIoU %.4f, fp32 %.4f, agreement %.4f; per-pixel baseline %.4f, majority %.4f",
        served,
        metrics["miou"],
        metrics["backends"]["fp32"]["miou"],
        metrics["served_vs_reference_agreement"],
        metrics["pixel_baseline"]["miou"],
        metrics["majority_baseline"]["miou"],
    )

    tracker = _tracker(run)
    tracker.log_metrics(
        {
            "test_miou": metrics["miou"],
            "test_weighted_iou": metrics["weighted_iou"],
            "test_f1": metrics["f1"],
            "test_miou_fp32": metrics["backends"]["fp32"]["miou"],
            "test_served_fp32_agreement": metrics["served_vs_reference_agreement"],
            "baseline_miou": metrics["majority_baseline"]["miou"],
            "pixel_baseline_miou": metrics["pixel_baseline"]["miou"],
            "lead_over_pixel_baseline": metrics["lead_over_pixel_baseline"],
            "foreign_pixel_accuracy": metrics["foreign_family"]["pixel_accuracy"],
            "foreign_patch_majority_share": metrics["foreign_family"]["patch_majority_share"],
            "probe_miou": probe["miou"],
            **{f"test_iou_{k}": v for k, v in metrics["per_class_iou"].items() if v is not None},
        }
    )
    tracker.log_dict(metrics, artifacts.RUN_METRICS_NAME)
    # The encoder the features came from, searchable beside the run's metrics.
    encoder = metrics["encoder_weights"]
    tracker.set_tags(
        {
            "encoder_source": encoder["source"],
            **{f"encoder_{k}": encoder[k] for k in ("encoder_name", "version", "sha256") if encoder.get(k)},
        }
    )
    tracker.log_figure(render_confusion_matrix(metrics), "confusion_matrix.png")
    for i, figure in enumerate(render_samples(report, cfg.logging.num_sample_images)):
        tracker.log_figure(figure, f"sample_{i}.png", folder="samples")
    return {
        "metrics_uri": metrics_uri,
        "miou": metrics["miou"],
        "miou_fp32": metrics["backends"]["fp32"]["miou"],
        "agreement": metrics["served_vs_reference_agreement"],
        "baseline_miou": metrics["majority_baseline"]["miou"],
        "pixel_baseline_miou": metrics["pixel_baseline"]["miou"],
        "probe_miou": probe["miou"],
    }


def _probe(cfg: DictConfig, train: Any, test: Any) -> dict[str, Any]:
    """The linear probe (training.probe) on a run's cached train and test features."""
    from core.classes import CLASS_NAMES
    from training.probe import ProbeOptions, linear_probe

    options = cfg.training.get("probe") or {}
    return linear_probe(
        train.features,
        train.labels,
        test.features,
        test.labels,
        CLASS_NAMES[: cfg.model.num_classes],
        ignore_index=cfg.training.ignore_index,
        options=ProbeOptions(**options),
        seed=cfg.seed,
    )


@step
def register(run: Run) -> dict[str, Any]:
    """Export the model (folded patch embedding, fp16), register an immutable version, and
    put every runtime artifact the Lambda's dispatcher chooses from next to it."""
    from core import registry
    from training.models.export import save_export
    from training.models.onnx_export import register_onnx
    from training.models.weights import RANDOM_INIT, encoder_weights_record, warn_random_encoder

    cfg = run.cfg
    root, version = cfg.storage.registry_uri, run.run_id
    version_uri = registry.version_uri(root, cfg.model_name, version)
    # A retry after a crash between the two writes finds the version and only adds the ONNX model.
    if version not in registry.list_versions(root, cfg.model_name):
        metrics = json.loads(storage.read_text(run.result("evaluate")["metrics_uri"]))
        stats = json.loads(storage.read_text(run.result("validate_data")["stats_uri"]))
        tracking = run.result("train_head")["tracking"]
        model = _trained_segmenter(run, with_encoder=True)
        encoder_weights = encoder_weights_record(cfg)
        random_encoder = encoder_weights["source"] == RANDOM_INIT
        if random_encoder:
            warn_random_encoder(f"registering {cfg.model_name} {version}")
        synthetic = cfg.data.name == "synthetic" and random_encoder
        with tempfile.TemporaryDirectory() as tmp:
            export_path = Path(tmp) / artifacts.EXPORT_NAME
            save_export(
                model,
                str(export_path),
                # The drift reference: training data statistics plus the class mix and confidence
                # of this model's own (served) predictions on the held-out scenes.
                reference_stats={**stats, "predictions": metrics["prediction_reference"]},
                extra={"run_id": run.run_id, "tracking": tracking},
                encoder_weights=encoder_weights,
            )
            registry.register_version(
                root,
                cfg.model_name,
                export_path,
                metrics,
                storage.read_text(storage.join(run.uri, artifacts.RUN_CONFIG_NAME)),
                run_id=tracking.get("mlflow") or run.run_id,
                source={
                    "kind": "training-run",
                    "run_id": run.run_id,
                    "run_uri": run.uri,
                    "encoder_weights": encoder_weights,
                },
                data_description=f"{cfg.data.name} data at {cfg.data.root_uri}; held-out split: test",
                caveat=SYNTHETIC_CAVEAT if synthetic else None,
                version=version,
            )
    onnx_uri = artifacts.in_version(version_uri, artifacts.ONNX_INT8_NAME)
    # Every runtime path's artifact (keeps those already written), calibrated as evaluated.
    register_onnx(version_uri, calibration_scenes=_calibration_scenes(cfg))
    return {"version": version, "version_uri": version_uri, "onnx_uri": onnx_uri}


@step
def promote(run: Run) -> dict[str, Any]:
    """Gated promotion in the S3 registry, mirrored into the MLflow model registry."""
    from core import registry
    from training import challenger

    cfg = run.cfg
    version = run.result("register")["version"]
    decision, named = challenger.promote_candidate(cfg, version)
    log.info("[promote] %s: %s", decision.outcome, decision.reason)
    result = {"decision": decision.to_dict(), "challenger": None if named is None else named["version"]}
    if cfg.logging.style in ("mlflow", "both") and cfg.logging.mlflow.register_model:
        from training import registry_mlflow
        from training.mlflow_model import log_served_model

        info = registry.get_version(cfg.storage.registry_uri, cfg.model_name, version)
        mlflow_run = run.result("train_head")["tracking"].get("mlflow")
        # The MLflow version points to a logged pyfunc model (the served ONNX int8 behind the
        # scene predictor); the S3 registry stays the source of truth and the alias follows it.
        source = (
            log_served_model(run.result("register")["onnx_uri"], cfg.logging.mlflow.tracking_uri, mlflow_run)
            if mlflow_run
            else None
        )
        result["mlflow"] = registry_mlflow.register_in_mlflow(
            info, cfg.logging.mlflow.tracking_uri, promoted=decision.promoted, model_source=source
        )
    tracker = _tracker(run)
    tracker.set_tags({"registry_version": version, "promotion": decision.outcome})
    tracker.close()
    return result


#: The steps in the order they run (what the DAGs and :func:`run_all` follow).
STEPS: dict[str, Callable[[Run], dict[str, Any]]] = {
    "validate_data": validate_data,
    "cache_features": cache_features,
    "train_head": train_head,
    "evaluate": evaluate,
    "register": register,
    "promote": promote,
}


def run_all(cfg: DictConfig, run_id: str | None = None) -> Run:
    """Every step in order, in this process (what ``python -m training.train`` does)."""
    run = start_run(cfg, run_id)
    for step_fn in STEPS.values():
        step_fn(run)
    log.info("%s", summary(run))
    return run


def _served_lines(metrics: dict[str, Any]) -> list[str]:
    """Summary lines of the served-path evaluation (absent from older metrics files)."""
    if "backends" not in metrics:
        return []
    fp32 = metrics["backends"]["fp32"]
    lines = [
        f"  served path           {metrics['backend']}, whole test scenes through the scene predictor "
        f"(chip {metrics['sliding_window']['chip_size']}, overlap {metrics['sliding_window']['overlap']})",
        f"  fp32 export mIoU      {fp32['miou']:.4f}   served/fp32 pixel agreement "
        f"{100 * metrics['served_vs_reference_agreement']:.2f} %",
    ]
    if "pixel_baseline" in metrics:
        pixel = metrics["pixel_baseline"]
        iou = pixel["per_class_iou"]
        lines.append(
            f"  per-pixel baseline    {pixel['miou']:.4f}   (logistic regression, bands + NDVI; "
            f"impervious {iou.get('Impervious (other)') or 0:.3f}, road {iou.get('Impervious (road)') or 0:.3f}); "
            f"lead {metrics['lead_over_pixel_baseline']:+.4f}"
        )
    if "throughput" in metrics and metrics["throughput"]["seconds_per_chip"] is not None:
        tp = metrics["throughput"]
        lines.append(
            f"  served throughput     {tp['seconds_per_chip']:.3f} s per {tp['chip_size']} px chip "
            f"({tp['chips']} chips, {tp['threads']} threads, {tp['cpu']})"
        )
    if "foreign_family" in metrics:
        foreign = metrics["foreign_family"]
        lines.append(
            f"  foreign scene families  worst pixel accuracy {foreign['pixel_accuracy']:.4f} "
            f"({foreign['worst_family']}), worst within-patch majority {foreign['patch_majority_share']:.4f} "
            f"({foreign['least_consistent_family']}) over {len(foreign['families'])} families"
        )
    return lines


def _encoder_lines(metrics: dict[str, Any]) -> list[str]:
    """Summary lines of the encoder and its linear probe (absent from older metrics files)."""
    lines = []
    weights = metrics.get("encoder_weights")
    if weights:
        from core.model_card import ENCODER_REGISTRY

        source = weights.get("source")
        if source == ENCODER_REGISTRY:
            source = f"{weights.get('encoder_name')} version {weights.get('version')} (encoder registry)"
        lines.append(f"  encoder               {source}")
    probe = metrics.get("probe")
    if probe:
        lines.append(
            f"  linear probe mIoU     {probe['miou']:.4f}   (1x1 conv on the frozen encoder features only, "
            f"{probe['epochs']} epochs, {probe['test_chips']} held-out chips, {probe['seconds']:.1f} s)"
        )
    return lines


def summary(run: Run) -> str:
    """A human summary of a finished run: metrics, baseline, tracking and the registry decision."""
    metrics = json.loads(storage.read_text(run.result("evaluate")["metrics_uri"]))
    promote_result = run.result("promote")
    decision = promote_result["decision"]
    tracking = run.result("train_head")["tracking"]
    lines = [
        "",
        f"Run {run.run_id}  ({run.uri})",
        f"  held-out mIoU         {metrics['miou']:.4f}   (majority-class baseline {metrics['majority_baseline']['miou']:.4f})",
        f"  support-weighted IoU  {metrics['weighted_iou']:.4f}   F1 {metrics['f1']:.4f}",
        "  per-class IoU:",
    ]
    for name, value in metrics["per_class_iou"].items():
        lines.append(f"    {name:<24} {'n/a' if value is None else f'{value:.4f}'}")
    lines += _served_lines(metrics)
    lines += _encoder_lines(metrics)
    if "mlflow" in tracking:
        lines.append(f"  MLflow run            {tracking['mlflow']}  ({run.cfg.logging.mlflow.tracking_uri})")
    if "wandb" in tracking:
        lines.append(f"  W&B run               {tracking['wandb']}  ({run.cfg.logging.wandb.mode})")
    lines.append(
        f"  registry version      {decision['version']}  -> {decision['outcome']}: {decision['reason']}"
    )
    if promote_result.get("challenger"):
        lines.append(
            f"  challenger            {promote_result['challenger']} (predicts new scenes in shadow)"
        )
    if "mlflow" in promote_result:
        m = promote_result["mlflow"]
        lines.append(
            f"  MLflow model          {m['name']} v{m['version']} (alias champion moved: {m['alias_moved']})"
        )
    return "\n".join(lines)

"""The shadow challenger: the registry's challenger predicts the champion's blocks, never served.

When the registry names a challenger (:func:`core.registry.challenger`), ``process`` puts
its version in the run's output and the state machine runs a shadow pass after the champion's
scenes are assembled, over the same block manifest and scene list:

- :func:`infer_block` predicts one block with the challenger (the scene's shadow comparison is
  claimed under a lease the execution's shadow blocks share) and writes its outputs under the
  shadow blocks prefix. A block already written is a no-op.
- :func:`assemble_scene` builds the challenger's class and confidence COGs and quicklook under
  ``<OUTPUT_URI>/_shadow/<sha256>/<challenger>/``, compares them with the champion's class COG
  (:func:`compare`) and records, once, the pixel agreement in ``shadow_comparisons`` and the
  per-class IoU and class-area deltas as scene metrics under the challenger's version.

A comparison a crashed or failed pass left unfinished is offered again by the next run's
``process`` (while it has attempts left); its blocks already written are not predicted again.

The champion's outputs are complete before any of this runs, so the challenger adds to an
execution's length and cost (:func:`run_rows` reports both) but never delays what is served.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy.orm import Session

from core import artifacts, storage
from core.classes import CLASS_NAMES, NODATA_CLASS_ID
from core.naip import NaipValidationError
from inference import block_outputs, retry
from inference.block_prediction import predict_item
from inference.errors import ChainError
from inference.inputs import local_copy
from inference.ledger import repository
from inference.ledger.models import SceneStatus, ShadowComparison, ShadowStatus
from inference.model_cache import load_version
from inference.payloads import BlockItem, SceneItem
from inference.settings import ChainSettings
from inference.storage_endpoint import configure_storage
from inference.transactions import deadline, get_scene, transaction

log = logging.getLogger(__name__)

#: The land-cover classes a comparison covers (No Data is where neither model predicts).
COMPARED_CLASSES = tuple(i for i in range(len(CLASS_NAMES)) if i != NODATA_CLASS_ID)


@dataclass(frozen=True)
class Comparison:
    """The challenger's class map beside the champion's, over the pixels both predict.

    ``iou`` per class name is |both say c| / |either says c| (classes neither predicts are
    left out); ``area_delta`` per class is the challenger's share of the pixels minus the
    champion's.
    """

    pixels: int
    agreement: float
    iou: dict[str, float]
    area_delta: dict[str, float]

    def metric_rows(self) -> list[tuple[str, str, float]]:
        """The scene metrics rows (name, class name, value) of the comparison."""
        return [(repository.SHADOW_IOU, name, value) for name, value in self.iou.items()] + [
            (repository.SHADOW_AREA_DELTA, name, value) for name, value in self.area_delta.items()
        ]


def compare(champion: np.ndarray, challenger: np.ndarray) -> Comparison:
    """Agreement, per-class IoU and class-area deltas of two class-id maps of one scene."""
    if champion.shape != challenger.shape:
        raise ValueError(
            f"class maps differ in shape: champion {champion.shape}, challenger {challenger.shape}"
        )
    valid = (champion != NODATA_CLASS_ID) & (challenger != NODATA_CLASS_ID)
    k = len(CLASS_NAMES)
    a = champion[valid].astype(np.int64)
    b = challenger[valid].astype(np.int64)
    pairs = np.bincount(a * k + b, minlength=k * k).reshape(k, k)  # rows champion, cols challenger
    pixels = int(pairs.sum())
    both, by_champion, by_challenger = np.diag(pairs), pairs.sum(axis=1), pairs.sum(axis=0)
    iou, area_delta = {}, {}
    for c in COMPARED_CLASSES:
        union = int(by_champion[c] + by_challenger[c] - both[c])
        if union:
            iou[CLASS_NAMES[c]] = float(both[c]) / union
        if pixels:
            area_delta[CLASS_NAMES[c]] = float(by_challenger[c] - by_champion[c]) / pixels
    return Comparison(pixels, float(both.sum()) / pixels if pixels else 1.0, iou, area_delta)


def read_classes(uri: str) -> np.ndarray:
    """The class-id raster of a class COG (band 1)."""
    from contextlib import ExitStack

    from core.naip import open_raster

    with ExitStack() as stack:
        return open_raster(uri, stack).read(1)


def _champion_version(s: Session, execution_id: str) -> str:
    version = repository.get_run(s, execution_id).model_version
    if version is None:
        raise ChainError(f"run {execution_id} has no champion version; process did not open it")
    return version


def _claim(
    settings: ChainSettings, s: Session, execution_id: str, scene_id: int, challenger_version: str
) -> tuple[str, Any]:
    """Claim a scene's shadow comparison: ``("claimed", row)`` or why not."""
    scene = get_scene(s, scene_id)
    if scene.status == SceneStatus.quarantined:
        return "quarantined", None
    champion_version = _champion_version(s, execution_id)
    row = repository.get_shadow(s, scene_id, champion_version, challenger_version)
    if row is not None and row.status == ShadowStatus.compared:
        return "skipped", row
    if (
        row is not None
        and row.status == ShadowStatus.failed
        and row.attempts >= settings.max_attempts
        and row.lease_owner is None
    ):
        return "exhausted", row
    try:
        row = repository.claim_shadow(
            s, scene_id, champion_version, challenger_version, execution_id, settings.lease_s
        )
    except repository.ShadowLeaseHeld as exc:
        return "leased", exc.owner
    repository.touch_run(s, execution_id, deadline(settings))
    return "claimed", row


def _not_claimed(result: dict[str, Any], outcome: str, value: Any) -> dict[str, Any]:
    if outcome == "leased":
        return {**result, "status": "leased_elsewhere", "lease_owner": value}
    return {**result, "status": outcome}


def _fail(settings: ChainSettings, row_id: int, what: str, reason: str, message: str) -> None:
    def fail(s: Session) -> None:
        row = s.get(ShadowComparison, row_id)
        if row is not None:
            repository.fail_shadow(s, row, reason, message[:2000])

    transaction(settings, f"record the failed shadow attempt on {what}", fail)


def infer_block(
    settings: ChainSettings, execution_id: str, item: dict[str, Any] | BlockItem, challenger_version: str
) -> dict[str, Any]:
    """Predict one block with the challenger; idempotent per (scene, challenger, block)."""
    configure_storage(settings)
    item = BlockItem.model_validate(item)
    what = f"shadow block {item.block} of scene {item.scene_id}"
    result = {"scene_id": item.scene_id, "block": item.block, "challenger_version": challenger_version}
    outcome, row = transaction(
        settings,
        f"claim {what}",
        lambda s: _claim(settings, s, execution_id, item.scene_id, challenger_version),
    )
    if outcome != "claimed":
        return _not_claimed(result, outcome, row)
    uri = artifacts.block_output_uri(
        settings.output_uri, item.sha256, challenger_version, item.block, shadow=True
    )
    if retry.call(lambda: storage.exists(uri), f"look for {uri}"):
        return {**result, "status": "skipped"}
    model = load_version(settings, challenger_version)
    path, temporary = item.uri, False
    try:
        path, temporary = retry.call(lambda: local_copy(settings, item), f"read scene {item.scene_id}")
        pred = predict_item(settings, model.predictor, path, item)
        retry.call(
            lambda: storage.write_bytes(uri, block_outputs.to_bytes(pred)), f"write the outputs of {what}"
        )
    except NaipValidationError as exc:  # the champion's pass quarantines it; nothing to compare
        _fail(settings, row.id, what, exc.reason, exc.detail)
        return {**result, "status": "quarantined"}
    except Exception as exc:
        _fail(settings, row.id, what, type(exc).__name__, str(exc))
        raise
    finally:
        if temporary:
            Path(path).unlink(missing_ok=True)
    transaction(
        settings,
        f"note progress on {what}",
        lambda s: repository.touch_run(s, execution_id, deadline(settings)),
    )
    log.info("%s: %d chips in %.1f s by challenger %s", what, pred.n_chips, pred.seconds, challenger_version)
    return {**result, "status": "predicted", "seconds": round(pred.seconds, 3)}


def assemble_scene(
    settings: ChainSettings, execution_id: str, item: dict[str, Any] | SceneItem, challenger_version: str
) -> dict[str, Any]:
    """Build the challenger's COGs of a scene, compare them with the champion's, record it once.

    A scene the champion has not predicted, or whose shadow blocks are not all written, is
    recorded as a failed shadow attempt (its lease released); a later shadow pass retries it.
    """
    configure_storage(settings)
    item = SceneItem.model_validate(item)
    what = f"the shadow comparison of scene {item.scene_id}"
    result = {"scene_id": item.scene_id, "challenger_version": challenger_version}

    outcome, value = transaction(
        settings,
        f"claim {what}",
        lambda s: _claim_comparison(settings, s, execution_id, item, challenger_version),
    )
    if outcome != "claimed":
        return _not_claimed(result, outcome, value)
    row_id, champion_uri, windows, run_id = value
    uris = [
        artifacts.block_output_uri(settings.output_uri, item.sha256, challenger_version, i, shadow=True)
        for i in range(len(windows))
    ]
    missing = [
        i for i, uri in enumerate(uris) if not retry.call(lambda u=uri: storage.exists(u), f"look for {uri}")
    ]
    if not windows or missing:
        detail = f"{len(missing)} of {len(windows)} shadow block(s) not predicted: {missing[:20]}"
        _fail(settings, row_id, what, "blocks_incomplete", detail)
        log.warning("%s not made: %s", what, detail)
        return {**result, "status": "incomplete", "detail": detail}

    try:
        pred, out, comparison = _build_and_compare(
            settings, item, challenger_version, champion_uri, list(zip(windows, uris, strict=True))
        )
    except Exception as exc:
        _fail(settings, row_id, what, f"assembly_{type(exc).__name__}", str(exc))
        raise

    def record(s: Session) -> bool:
        row = s.get(ShadowComparison, row_id)
        won = repository.record_shadow(
            s,
            row,
            pixels=comparison.pixels,
            agreement=comparison.agreement,
            seconds=pred.seconds,
            class_uri=out.class_uri,
            run_id=run_id,
        )
        if won:  # the figures belong to the one run that recorded the comparison
            repository.record_metrics(s, run_id, item.scene_id, challenger_version, comparison.metric_rows())
        repository.touch_run(s, execution_id, deadline(settings))
        return won

    won = transaction(settings, f"record {what}", record)
    _remove_shadow_blocks(settings, item, challenger_version)
    log.info(
        "scene %s: challenger %s agrees on %.2f %% of %d pixels (%.1f s)",
        item.scene_id,
        challenger_version,
        100 * comparison.agreement,
        comparison.pixels,
        pred.seconds,
    )
    return {
        **result,
        "status": "compared" if won else "skipped",
        "class_uri": out.class_uri,
        "agreement": round(comparison.agreement, 6),
    }


def _claim_comparison(
    settings: ChainSettings, s: Session, execution_id: str, item: SceneItem, challenger_version: str
) -> tuple[str, Any]:
    """Claim a scene's comparison for assembly: ``("claimed", (row id, the champion's class
    URI, the block windows, run id))``, or why not (a scene the champion has not predicted
    fails the attempt)."""
    outcome, row = _claim(settings, s, execution_id, item.scene_id, challenger_version)
    if outcome != "claimed":
        return outcome, row
    champion_version = row.champion_version
    served = repository.prediction_by(s, get_scene(s, item.scene_id), champion_version)
    if served is None:
        repository.fail_shadow(s, row, "no_champion_prediction", f"{champion_version} has not predicted it")
        return "no_champion_prediction", None
    windows = [b.window for b in repository.blocks_of(s, item.scene_id, champion_version)]
    return "claimed", (row.id, served.class_uri, windows, repository.get_run(s, execution_id).id)


def _build_and_compare(
    settings: ChainSettings,
    item: SceneItem,
    challenger_version: str,
    champion_uri: str,
    blocks: list[tuple[Any, str]],
) -> tuple[Any, artifacts.SceneOutputs, Comparison]:
    """Assemble the challenger's ``blocks`` (window, output URI), compare the result with the
    champion's class COG and write the challenger's COGs and quicklook."""
    path, temporary = item.uri, False
    try:
        path, temporary = retry.call(lambda: local_copy(settings, item), f"read scene {item.scene_id}")
        parts = [(w, retry.call(lambda u=u: storage.read_bytes(u), f"read {u}")) for w, u in blocks]
        pred = block_outputs.assemble(path, parts, max_pixels=settings.max_pixels)
        pred.seconds = float(sum(float(block_outputs.from_bytes(data)["seconds"]) for _, data in parts))
        out = artifacts.shadow_outputs(settings.output_uri, item.sha256, challenger_version)
        lineage = {"model_version": challenger_version, "input_sha256": item.sha256}

        champion_classes = retry.call(lambda: read_classes(champion_uri), f"read {champion_uri}")
        comparison = compare(champion_classes, pred.classes)

        def write() -> None:
            from inference import outputs, quicklook

            outputs.write_class_cog(pred, out.class_uri, **lineage)
            outputs.write_confidence_cog(pred, out.confidence_uri, **lineage)
            quicklook.write_quicklook(
                pred,
                path,
                out.quicklook_uri,
                title=f"{item.uri.rsplit('/', 1)[-1]}  ·  challenger {challenger_version} (shadow, "
                f"{comparison.agreement:.1%} agreement)",
            )

        retry.call(write, f"write the shadow outputs of scene {item.scene_id}")
    finally:
        if temporary:
            Path(path).unlink(missing_ok=True)
    return pred, out, comparison


def _remove_shadow_blocks(settings: ChainSettings, item: SceneItem, challenger_version: str) -> None:
    """Remove a compared scene's shadow block outputs (the lifecycle rule expires what a failure leaves)."""
    prefix = artifacts.blocks_prefix(settings.output_uri, item.sha256, challenger_version, shadow=True)
    try:
        storage.delete(prefix, recursive=True)
    except Exception as exc:  # cleanup only
        log.warning("could not remove the shadow block outputs under %s: %s", prefix, exc)


def run_rows(
    settings: ChainSettings, s: Session, run_id: int
) -> tuple[list[tuple[str, str, float]], dict[str, Any]]:
    """Run-level metrics of the shadow comparisons a run recorded, and their summary.

    ``shadow_scenes``, ``shadow_agreement`` (pixel-weighted), ``shadow_seconds`` (the
    challenger's prediction time) and, with the infer memory known, ``shadow_cost_usd`` (its
    blocks' and scenes' calls included). Nothing when the run compared no scene.
    """
    rows = [r for r in repository.shadows_of_run(s, run_id) if r.status == ShadowStatus.compared]
    if not rows:
        return [], {}
    pixels = sum(int(r.pixels or 0) for r in rows)
    agreement = sum(float(r.agreement or 0.0) * int(r.pixels or 0) for r in rows) / pixels if pixels else 1.0
    seconds = sum(float(r.seconds or 0.0) for r in rows)
    summary: dict[str, Any] = {
        "challenger_version": rows[0].challenger_version,
        "scenes": len(rows),
        "agreement": round(agreement, 6),
        "seconds": round(seconds, 3),
    }
    metrics = [
        (repository.SHADOW_SCENES, "", float(len(rows))),
        (repository.SHADOW_AGREEMENT, "", agreement),
        (repository.SHADOW_SECONDS, "", seconds),
    ]
    if settings.infer_memory_mb is not None:
        calls = sum(len(repository.blocks_of(s, r.scene_id, r.champion_version)) for r in rows) + len(rows)
        cost = settings.lambda_cost_usd(seconds, settings.infer_memory_mb, calls)
        metrics.append((repository.SHADOW_COST_USD, "", cost))
        summary["cost_usd"] = round(cost, 6)
    return metrics, summary

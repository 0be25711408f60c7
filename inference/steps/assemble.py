"""The assemble step: build a scene's outputs from its predicted blocks and record its
prediction (see :mod:`inference.steps`)."""

from __future__ import annotations

import json
import logging
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from core import artifacts, storage
from inference import block_outputs, retry
from inference.inputs import local_copy
from inference.ledger import repository
from inference.ledger.models import BlockStatus, SceneStatus, utcnow
from inference.model_cache import LoadedModel, load_version, loaded_model
from inference.payloads import SceneItem
from inference.settings import ChainSettings
from inference.storage_endpoint import configure_storage
from inference.transactions import deadline, get_scene, transaction

log = logging.getLogger(__name__)

#: One predicted block as assembly reads it: (window, output URI, seconds, started at).
BlockPart = tuple[list[int], str, float, datetime | None]


def assemble(settings: ChainSettings, execution_id: str, item: dict[str, Any] | SceneItem) -> dict[str, Any]:
    """Build a scene's outputs from its blocks and record its prediction; idempotent per scene.

    When every block is predicted: the class and confidence COGs, quicklook, STAC item and
    summary are written exactly as a one-call prediction writes them (the scene sums are the
    exact sums of the blocks'), the prediction and its metrics are recorded in one transaction,
    and the block outputs are removed. A scene with blocks missing is failed (its lease
    released), so the next run redoes only those blocks; one another live execution holds is
    left to it.
    """
    configure_storage(settings)
    item = SceneItem.model_validate(item)
    model = load_version(settings, item.model_version)  # the run's planned champion, not the pointer now
    version = model.version
    result = {"scene_id": item.scene_id, "model_version": version, "class_uri": None}

    outcome, value = transaction(
        settings,
        f"claim the assembly of scene {item.scene_id}",
        lambda s: _claim_scene(settings, s, execution_id, item, version),
    )
    if outcome != "ready":
        return _not_assembled(result, item, outcome, value)
    run_id, parts = value

    pred, uris, rows, drift = _build_outputs(settings, execution_id, model, item, parts)
    started = min((t for *_, t in parts if t is not None), default=utcnow())

    def record(s: Session) -> bool:
        scene = get_scene(s, item.scene_id)
        prediction = repository.record_prediction(
            s,
            scene,
            version,
            input_sha256=item.sha256,
            class_uri=uris["class_uri"],
            confidence_uri=uris["confidence_uri"],
            stac_uri=uris["stac_uri"],
            started_at=started,
            finished_at=max(utcnow(), started),
            seconds=pred.seconds,
            run_id=run_id,
            **encoder_lineage(model.metadata),
        )
        won = prediction.run_id == run_id
        if won:  # a prediction and its metrics belong to the one run that recorded it first
            repository.record_metrics(s, run_id, scene.id, version, rows)
        repository.touch_run(s, execution_id, deadline(settings))
        return won

    won = transaction(settings, f"record the prediction of scene {item.scene_id}", record)
    _remove_block_outputs(settings, item, version)
    if not won:
        return {**result, "status": "skipped", "class_uri": uris["class_uri"]}
    return {
        **result,
        "status": "predicted",
        "class_uri": uris["class_uri"],
        "blocks": len(parts),
        "drift": drift,
    }


def encoder_lineage(metadata: dict[str, Any]) -> dict[str, str | None]:
    """``{"encoder_name", "encoder_version"}`` of a served artifact's metadata (its
    ``encoder_weights``, written by the export): the encoder registry name and version, else the
    source (``random-init``, a catalog name, a file) and no version; both None when the
    artifact records none (exported before the record existed)."""
    from core.model_card import ENCODER_REGISTRY

    weights = metadata.get("encoder_weights") or {}
    if weights.get("source") == ENCODER_REGISTRY:
        return {"encoder_name": weights.get("encoder_name"), "encoder_version": weights.get("version")}
    return {"encoder_name": weights.get("source"), "encoder_version": None}


def _claim_scene(
    settings: ChainSettings, s: Session, execution_id: str, item: SceneItem, version: str
) -> tuple[str, Any]:
    """Claim a scene's assembly: ``("ready", (run id, its block parts))``, or why not
    (``skipped`` with the class URI, ``quarantined``, ``leased`` with the owner, ``incomplete``
    with the detail; an incomplete scene's attempt is failed)."""
    scene = get_scene(s, item.scene_id)
    done = repository.prediction_by(s, scene, version)
    if done is not None:
        return "skipped", done.class_uri
    if scene.status == SceneStatus.quarantined:
        return "quarantined", None
    blocks = repository.blocks_of(s, scene.id, version)
    missing = [b.block_index for b in blocks if b.status != BlockStatus.predicted]
    try:
        repository.claim_for_prediction(s, scene, execution_id, settings.lease_s)
    except repository.LeaseHeld as exc:
        return "leased", exc.owner
    if not blocks or missing:
        detail = f"{len(missing)} of {len(blocks)} block(s) not predicted: {missing[:20]}"
        repository.fail_attempt(s, scene, execution_id, "blocks_incomplete", detail)
        return "incomplete", detail
    repository.touch_run(s, execution_id, deadline(settings))
    parts: list[BlockPart] = [(b.window, b.output_uri, b.seconds or 0.0, b.started_at) for b in blocks]
    return "ready", (repository.get_run(s, execution_id).id, parts)


def _not_assembled(result: dict[str, Any], item: SceneItem, outcome: str, value: Any) -> dict[str, Any]:
    """The step's result for a scene :func:`_claim_scene` did not hand over."""
    if outcome == "skipped":
        return {**result, "status": "skipped", "class_uri": value}
    if outcome == "quarantined":
        return {**result, "status": "quarantined"}
    if outcome == "leased":
        log.info("scene %s is being predicted by %s; its assembly is left to it", item.scene_id, value)
        return {**result, "status": "leased_elsewhere", "lease_owner": value}
    log.warning("scene %s not assembled: %s", item.scene_id, value)
    return {**result, "status": "incomplete", "detail": value}


def _build_outputs(
    settings: ChainSettings, execution_id: str, model: LoadedModel, item: SceneItem, parts: list[BlockPart]
) -> tuple[Any, dict[str, str], list[Any], Any]:
    """Assemble the blocks and write the scene's outputs: ``(prediction, output URIs, scene
    metric rows, drift)``. A failure is recorded as a failed attempt on the scene and raised."""
    from inference import monitor

    temporary = False
    path = item.uri
    try:
        path, temporary = retry.call(lambda: local_copy(settings, item), f"read scene {item.scene_id}")
        pred = block_outputs.assemble(
            path,
            [
                (window, retry.call(lambda u=uri: storage.read_bytes(u), f"read {uri}"))
                for window, uri, *_ in parts
            ],
            max_pixels=settings.max_pixels,
        )
        pred.seconds = float(sum(seconds for _, _, seconds, _ in parts))
        uris = retry.call(
            lambda: _write_outputs(settings, pred, item, model.version, image_path=path),
            f"write the outputs of scene {item.scene_id}",
        )
        rows, drift = monitor.scene_metrics(
            pred, model.metadata.get("reference_stats"), settings.drift_threshold
        )
    except Exception as exc:
        reason, message = f"assembly_{type(exc).__name__}"[:64], str(exc)[:2000]
        transaction(
            settings,
            f"record the failed assembly of scene {item.scene_id}",
            lambda s: repository.fail_attempt(s, get_scene(s, item.scene_id), execution_id, reason, message),
        )
        raise
    finally:
        if temporary:
            Path(path).unlink(missing_ok=True)
    return pred, uris, rows, drift


def _write_outputs(
    settings: ChainSettings, pred: Any, item: SceneItem, version: str, image_path: str | None = None
) -> dict[str, str]:
    """Class COG, confidence COG, quicklook PNG, STAC item and summary under the scene's
    deterministic prefix (``image_path``: a local copy of the input, read for the quicklook)."""
    from inference import monitor, outputs, quicklook

    out = artifacts.scene_outputs(settings.output_uri, item.sha256, version)
    uris = {
        "class_uri": out.class_uri,
        "confidence_uri": out.confidence_uri,
        "stac_uri": out.stac_uri,
        "summary_uri": out.summary_uri,
        "quicklook_uri": out.quicklook_uri,
    }
    lineage = {"model_version": version, "input_sha256": item.sha256}
    outputs.write_class_cog(pred, uris["class_uri"], **lineage)
    outputs.write_confidence_cog(pred, uris["confidence_uri"], **lineage)
    quicklook.write_quicklook(
        pred,
        image_path or item.uri,
        uris["quicklook_uri"],
        title=f"{item.uri.rsplit('/', 1)[-1]}  ·  model {version}",
    )
    stac = outputs.stac_item(
        pred,
        item_id=artifacts.stac_item_id(item.sha256, version),
        class_uri=uris["class_uri"],
        confidence_uri=uris["confidence_uri"],
        input_uri=item.uri,
        thumbnail_uri=uris["quicklook_uri"],
        model_name=settings.model_name,
        **lineage,
    )
    outputs.write_stac_item(stac, uris["stac_uri"])
    summary = monitor.SceneSummary.from_prediction(pred)
    loaded = loaded_model()
    summary.extra["runtime"] = loaded.metadata.get("runtime") if loaded is not None else None
    storage.write_text(uris["summary_uri"], json.dumps(summary.to_dict()))
    return uris


def _remove_block_outputs(settings: ChainSettings, item: SceneItem, version: str) -> None:
    """Remove a recorded scene's block outputs (the lifecycle rule expires what a failure leaves)."""
    prefix = artifacts.blocks_prefix(settings.output_uri, item.sha256, version)
    try:
        storage.delete(prefix, recursive=True)
    except Exception as exc:  # cleanup only
        log.warning("could not remove the block outputs under %s: %s", prefix, exc)

"""The infer step: predict one block of a scene with the run's champion (see :mod:`inference.steps`)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from core import artifacts, storage
from core.naip import NaipValidationError
from inference import block_outputs, retry
from inference.block_prediction import predict_item
from inference.errors import ChainError, ContentChangedError
from inference.inputs import local_copy
from inference.ledger import repository
from inference.ledger.models import BlockStatus, SceneStatus, utcnow
from inference.model_cache import LoadedModel, load_version
from inference.payloads import BlockItem
from inference.settings import ChainSettings
from inference.storage_endpoint import configure_storage
from inference.transactions import deadline, get_scene, transaction

log = logging.getLogger(__name__)


def infer(settings: ChainSettings, execution_id: str, item: dict[str, Any] | BlockItem) -> dict[str, Any]:
    """Predict one block of a scene with the run's champion (``item.model_version``, as planned);
    idempotent per (scene, model version, block).

    The scene is claimed under the execution's lease (its blocks share it; another live
    execution's lease leaves the block to that execution). The block's classes, confidence and
    sums go to one file under the blocks prefix; :func:`inference.steps.assemble.assemble`
    builds the scene from them.
    """
    configure_storage(settings)
    item = BlockItem.model_validate(item)
    model = load_version(settings, item.model_version)  # the run's planned champion, not the pointer now
    version = model.version
    result = {"scene_id": item.scene_id, "block": item.block, "model_version": version}

    what = f"block {item.block} of scene {item.scene_id}"
    outcome, value = transaction(
        settings, f"claim {what}", lambda s: _claim_block(settings, s, execution_id, item, version)
    )
    if outcome in ("skipped", "quarantined"):
        return {**result, "status": outcome}
    if outcome == "leased":
        log.info("scene %s is being predicted by %s; %s left to it", item.scene_id, value, what)
        return {**result, "status": "leased_elsewhere", "lease_owner": value}
    run_id = int(value)

    started = utcnow()
    written = _predict_and_write(settings, model, item, what)
    if written is None:
        return {**result, "status": "quarantined"}
    pred, uri = written

    def record(s: Session) -> bool:
        block = repository.get_block(s, item.scene_id, version, item.block)
        won = repository.record_block(
            s,
            block,
            output_uri=uri,
            started_at=started,
            finished_at=utcnow(),
            seconds=pred.seconds,
            run_id=run_id,
        )
        repository.touch_run(s, execution_id, deadline(settings))
        return won

    won = transaction(settings, f"record {what}", record)
    log.info(
        "%s: %d chips in %.1f s%s", what, pred.n_chips, pred.seconds, "" if won else " (already recorded)"
    )
    return {**result, "status": "predicted" if won else "skipped", "seconds": round(pred.seconds, 3)}


def _claim_block(
    settings: ChainSettings, s: Session, execution_id: str, item: BlockItem, version: str
) -> tuple[str, Any]:
    """Claim a block for prediction: ``("claimed", run id)``, or why not (``skipped``,
    ``quarantined``, ``leased`` with the lease's owner)."""
    scene = get_scene(s, item.scene_id)
    if repository.prediction_by(s, scene, version) is not None:
        return "skipped", None
    if scene.status == SceneStatus.quarantined:
        return "quarantined", None
    block = repository.get_block(s, scene.id, version, item.block)
    if block is None:
        raise ChainError(f"block {item.block} of scene {scene.id} by {version} was never planned")
    if block.status == BlockStatus.predicted:
        return "skipped", None
    try:
        repository.claim_for_prediction(s, scene, execution_id, settings.lease_s)
    except repository.LeaseHeld as exc:
        return "leased", exc.owner
    repository.claim_block(s, block)
    repository.touch_run(s, execution_id, deadline(settings))
    return "claimed", repository.get_run(s, execution_id).id


def _predict_and_write(
    settings: ChainSettings, model: LoadedModel, item: BlockItem, what: str
) -> tuple[Any, str] | None:
    """Predict the block and write its outputs: ``(prediction, output URI)``, or None when the
    scene proved invalid (it is quarantined). Any other failure is recorded on the block and raised."""
    version = model.version
    temporary = False
    path = item.uri
    try:
        path, temporary = retry.call(lambda: local_copy(settings, item), f"read scene {item.scene_id}")
        pred = predict_item(settings, model.predictor, path, item)
        uri = artifacts.block_output_uri(settings.output_uri, item.sha256, version, item.block)
        retry.call(
            lambda: storage.write_bytes(uri, block_outputs.to_bytes(pred)), f"write the outputs of {what}"
        )
    except NaipValidationError as exc:
        transaction(
            settings,
            f"quarantine scene {item.scene_id}",
            lambda s, bad=exc: repository.quarantine(s, get_scene(s, item.scene_id), bad.reason, bad.detail),
        )
        return None
    except Exception as exc:
        reason = "content_changed" if isinstance(exc, ContentChangedError) else type(exc).__name__

        def failed(s: Session, message: str = str(exc)[:2000]) -> None:
            block = repository.get_block(s, item.scene_id, version, item.block)
            if block is not None:
                repository.fail_block(s, block, reason, message)

        transaction(settings, f"record the failed attempt on {what}", failed)
        raise
    finally:
        if temporary:
            Path(path).unlink(missing_ok=True)
    return pred, uri

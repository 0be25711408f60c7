"""The observe step: aggregate the run's predictions, compute drift, write run metrics and
close the run (see :mod:`inference.steps`)."""

from __future__ import annotations

import json
import logging
from typing import Any

from sqlalchemy.orm import Session

from core import artifacts, registry, storage
from inference import retry
from inference.ledger import repository
from inference.ledger.models import SceneStatus, utcnow
from inference.model_cache import champion, loaded_model
from inference.payloads import SceneItem
from inference.settings import ChainSettings
from inference.storage_endpoint import configure_storage
from inference.transactions import get_scene, transaction

log = logging.getLogger(__name__)


def _read_scenes(settings: ChainSettings, execution_id: str) -> list[SceneItem]:
    uri = artifacts.scenes_manifest_uri(settings.manifest_prefix, execution_id)
    try:
        return [SceneItem.model_validate(x) for x in json.loads(storage.read_text(uri))]
    except FileNotFoundError:
        return []


def observe(settings: ChainSettings, execution_id: str) -> dict[str, Any]:
    """Aggregate the run's predictions, compute drift, write run metrics and close the run."""
    from inference import monitor

    configure_storage(settings)
    items = retry.call(lambda: _read_scenes(settings, execution_id), f"read the scene list of {execution_id}")

    def tally(s: Session) -> tuple[int, str, list[str], int, float]:
        run = repository.get_run(s, execution_id)
        version = run.model_version or str(champion(settings)["version"])
        # Each prediction counts in the one run that recorded it, including those of an earlier
        # attempt of this execution (a redrive), which are no longer in its manifest.
        mine = repository.predictions_of_run(s, run.id, version)
        failed, now = 0, utcnow()
        for item in items:
            scene = get_scene(s, item.scene_id)
            if scene.status == SceneStatus.quarantined or repository.prediction_by(s, scene, version):
                continue
            live_elsewhere = (
                scene.status == SceneStatus.predicting
                and scene.lease_owner not in (None, execution_id)
                and scene.lease_expires_at is not None
                and scene.lease_expires_at > now
            )
            failed += not live_elsewhere
        shas = [p.scene.sha256 for p in mine]
        calls = repository.blocks_of_run(s, run.id) + len(mine)  # infer + assemble invocations
        return run.id, version, shas, failed, float(sum(p.seconds for p in mine)), calls

    run_id, version, predicted, failed, seconds, calls = transaction(
        settings, f"tally run {execution_id}", tally
    )
    summaries = []
    for sha256 in predicted:
        summary_uri = artifacts.scene_outputs(settings.output_uri, sha256, version).summary_uri
        text = retry.call(lambda uri=summary_uri: storage.read_text(uri), f"read {summary_uri}")
        summaries.append(monitor.SceneSummary.from_dict(json.loads(text)))

    reference = _reference_stats(settings, version) if summaries else None
    memory_mb = settings.infer_memory_mb
    rows, drift = monitor.run_metrics(
        summaries,
        reference,
        seconds_total=seconds,
        cost_usd=None if memory_mb is None else settings.lambda_cost_usd(seconds, memory_mb, calls),
        threshold=settings.drift_threshold,
    )

    def close(s: Session) -> dict[str, Any]:
        from inference import shadow

        shadow_rows, shadow_summary = shadow.run_rows(settings, s, run_id)
        repository.record_metrics(s, run_id, None, version, rows + shadow_rows)
        repository.finish_run(s, execution_id, scenes_predicted=len(predicted), scenes_failed=failed)
        return shadow_summary

    shadow_summary = transaction(settings, f"close run {execution_id}", close)
    return {
        "execution_id": execution_id,
        "scenes": len(predicted),
        "failed": failed,
        "drift": bool(drift),
        "model_version": version,
        **({"shadow": shadow_summary} if shadow_summary else {}),
    }


def _reference_stats(settings: ChainSettings, version: str) -> dict[str, Any] | None:
    """The training reference statistics stored in the export of ``version`` (header only)."""
    from inference.runtime import read_safetensors_metadata as read_export_metadata  # no torch

    loaded = loaded_model()
    if loaded is not None and loaded.version == version:
        return loaded.metadata.get("reference_stats")
    manifest = registry.get_version(settings.registry_uri, settings.model_name, version)
    return read_export_metadata(manifest["export_uri"]).get("reference_stats")

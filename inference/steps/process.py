"""The process step: discover, register and validate new inputs; plan their blocks and write
the run's manifests (see :mod:`inference.steps`)."""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from typing import Any

from sqlalchemy.orm import Session

from core import artifacts, registry, storage
from core.naip import NaipValidationError, validate_naip
from inference import retry
from inference.blocks import WHOLE_SCENE
from inference.errors import ChainError
from inference.inputs import ListedObject, list_objects
from inference.ledger import db, repository
from inference.ledger.models import BlockStatus, Scene, SceneStatus
from inference.model_cache import champion
from inference.payloads import block_items, scene_item
from inference.planning import (
    OUTSIDE_INPUT_ROOT,
    outside_input_root,
    raster_metadata,
    run_block_sizing,
    scene_blocks,
    scene_identity,
)
from inference.settings import ChainSettings
from inference.storage_endpoint import configure_storage
from inference.transactions import deadline, transaction

log = logging.getLogger(__name__)


def process(settings: ChainSettings, execution_id: str) -> dict[str, Any]:
    """Discover, register and validate new inputs; write the run's manifest. See :mod:`inference.steps`."""
    configure_storage(settings)
    url = settings.resolved_ledger_url()
    if retry.call(lambda: db.ensure_schema(url), "bring the ledger schema to head"):
        log.info("ledger migrated to %s", ", ".join(db.head_revisions()))
    pointer = retry.call(lambda: champion(settings), "read the champion pointer")
    version = str(pointer["version"])
    _open_run(settings, execution_id, version)
    challenger_version = _challenger_version(settings, version)
    discovered, quarantined, aliases = _register_inputs(settings)

    sizing = run_block_sizing(settings, pointer)
    if sizing.block_chips == WHOLE_SCENE:
        log.warning("%s", sizing.reason)
    else:
        log.info("blocks of %d x %d chips: %s", sizing.block_chips, sizing.block_chips, sizing.reason)

    def manifest(s: Session) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        blocks, scenes = _plan_manifests(settings, s, version, challenger_version, sizing.block_chips)
        repository.update_run(s, execution_id, scenes_discovered=discovered, scenes_quarantined=quarantined)
        repository.touch_run(s, execution_id, deadline(settings))
        return blocks, scenes

    blocks, scenes = transaction(settings, f"list the blocks to predict for {execution_id}", manifest)
    uri, scenes_uri = _write_manifests(settings, execution_id, blocks, scenes)
    log.info(
        "process %s: %d new, %d quarantined, %d aliases, %d scenes to predict in %d blocks%s",
        execution_id,
        discovered,
        quarantined,
        aliases,
        len(scenes),
        len(blocks),
        f"; challenger {challenger_version} predicts them in shadow" if challenger_version and scenes else "",
    )
    return {
        "execution_id": execution_id,
        "manifest_uri": uri,
        "manifest_key": object_key(uri),
        "scenes_uri": scenes_uri,
        "scenes_key": object_key(scenes_uri),
        "model_version": version,
        # The shadow pass (inference.shadow) runs when a challenger is named and there is work.
        "challenger_version": challenger_version if scenes else None,
        "scenes": len(scenes),
        "blocks": len(blocks),
        "block_chips": sizing.block_chips,
        "max_concurrency": settings.max_concurrency,
        "tolerated_failure_percentage": settings.tolerated_failure_percentage,
        "discovered": discovered,
        "quarantined": quarantined,
        "aliases": aliases,
    }


def object_key(uri: str) -> str:
    """The bucket key of an ``s3://`` URI; for ``file://`` the path without its leading slash."""
    rest = uri.partition("://")[2]
    return rest.partition("/")[2] if uri.startswith("s3://") else rest.lstrip("/")


def _open_run(settings: ChainSettings, execution_id: str, version: str) -> None:
    """Close the runs past their deadline as abandoned, and open this one pinned to ``version``."""

    def open_run(s: Session) -> None:
        for stale in repository.abandon_stale_runs(s):
            log.warning("closed run %s as abandoned: %s", stale.execution_id, stale.error)
        repository.start_run(s, execution_id, model_version=version, deadline_at=deadline(settings))

    transaction(settings, f"open run {execution_id}", open_run)


def _challenger_version(settings: ChainSettings, version: str) -> str | None:
    """The registry's challenger, unless there is none or it is the champion ``version``."""
    challenger = retry.call(
        lambda: registry.challenger(settings.registry_uri, settings.model_name), "read the challenger pointer"
    )
    return None if challenger is None or challenger["version"] == version else str(challenger["version"])


def _register_inputs(settings: ChainSettings) -> tuple[int, int, int]:
    """Register every listed input, one transaction each; returns (new scenes, quarantined, aliases)."""
    discovered = quarantined = aliases = 0
    listed = retry.call(lambda: list_objects(settings.input_uri), f"list {settings.input_uri}")
    for obj in listed:
        new, bad, alias = transaction(
            settings, f"register {obj.uri}", functools.partial(_register, settings, obj=obj)
        )
        discovered, quarantined, aliases = discovered + new, quarantined + bad, aliases + alias
    return discovered, quarantined, aliases


def _plan_manifests(
    settings: ChainSettings, s: Session, version: str, challenger_version: str | None, block_chips: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The run's block and scene items: every scene ``version`` has still to predict (its blocks
    planned), and with a challenger the scenes whose shadow comparison is unfinished."""
    todo = repository.scenes_to_predict(s, version, max_attempts=settings.max_attempts)
    blocks, scenes = [], []
    for scene in todo:
        planned = repository.plan_blocks(
            s, scene, version, block_chips, planned_blocks(settings, scene, block_chips)
        )
        left = repository.blocks_to_predict(planned, settings.max_attempts)
        spent = [b for b in planned if b.status != BlockStatus.predicted and b not in left]
        if spent:
            log.warning(
                "scene %s: block(s) %s out of attempts (last error %s); not retried",
                scene.id,
                [b.block_index for b in spent],
                spent[0].error,
            )
            continue
        item = scene_item(scene, version)
        scenes.append(item.model_dump())
        blocks += block_items(item, left)
    if challenger_version:
        # Shadow work a crashed or failed pass left on scenes the champion has predicted: the
        # champion's calls on them are no-ops, the shadow Maps finish them.
        for scene in repository.unfinished_shadows(s, version, challenger_version, settings.max_attempts):
            item = scene_item(scene, version)
            scenes.append(item.model_dump())
            blocks += block_items(item, repository.blocks_of(s, scene.id, version))
    return blocks, scenes


def _write_manifests(
    settings: ChainSettings, execution_id: str, blocks: list[dict[str, Any]], scenes: list[dict[str, Any]]
) -> tuple[str, str]:
    """Write the run's scene list, then its block manifest; returns (manifest URI, scene list URI)."""
    uri = artifacts.manifest_uri(settings.manifest_prefix, execution_id)
    scenes_uri = artifacts.scenes_manifest_uri(settings.manifest_prefix, execution_id)
    # The scene list first: a manifest of blocks is only ever read beside its scenes.
    retry.call(
        lambda: storage.write_text(scenes_uri, json.dumps(scenes)), f"write the scene list {scenes_uri}"
    )
    retry.call(lambda: storage.write_text(uri, json.dumps(blocks)), f"write the manifest {uri}")
    return uri, scenes_uri


def _validate_scene(settings: ChainSettings, s: Session, scene: Scene, uri: str) -> bool:
    """Validate a discovered scene: validated with its metadata, or quarantined with its reason."""
    try:
        info = validate_naip(uri, max_pixels=settings.max_pixels)
    except NaipValidationError as exc:
        repository.quarantine(s, scene, exc.reason, exc.detail)
        log.warning("quarantined %s (%s): %s", uri, exc.reason, exc.detail)
        return False
    repository.describe_scene(s, scene, **raster_metadata(info))
    repository.transition(s, scene, SceneStatus.validated)
    return True


def _register(settings: ChainSettings, s: Session, obj: ListedObject) -> tuple[int, int, int]:
    """Register one listed object; returns (new scenes, quarantined, aliases) it adds."""
    known = repository.known_source(s, obj.uri, obj.etag)
    if known is not None:
        # Seen before with this ETag: no re-hash. Finish a validation a crash cut short.
        if known.status == SceneStatus.discovered:
            return 0, int(not _validate_scene(settings, s, known, obj.uri)), 0
        return 0, 0, 0
    outside = outside_input_root(settings, obj.uri)
    if outside is not None:
        # Never read: the id is a hash of where it points, not of content it must not open.
        sha = hashlib.sha256(f"outside-input-root:{obj.uri}->{outside}".encode()).hexdigest()
        scene, created = repository.register_scene(s, sha, obj.uri, 0, etag=obj.etag)
        if created or scene.status == SceneStatus.discovered:
            detail = f"{obj.uri} resolves to {outside}, outside the input prefix {settings.input_uri}"
            repository.quarantine(s, scene, OUTSIDE_INPUT_ROOT, detail)
            log.warning("quarantined %s (%s): %s", obj.uri, OUTSIDE_INPUT_ROOT, detail)
            return int(created), 1, 0
        return 0, 0, 0
    try:
        sha, size = scene_identity(obj.uri)
    except FileNotFoundError:
        log.warning("%s disappeared between listing and reading; skipped", obj.uri)
        return 0, 0, 0
    scene, created = repository.register_scene(s, sha, obj.uri, size, etag=obj.etag)
    if not created:
        log.info("%s is a duplicate of scene %s (%s); recorded as an alias", obj.uri, scene.id, sha[:12])
        bad = scene.status == SceneStatus.discovered and not _validate_scene(settings, s, scene, obj.uri)
        return 0, int(bad), 1
    return 1, int(not _validate_scene(settings, s, scene, obj.uri)), 0


def planned_blocks(settings: ChainSettings, scene: Scene, block_chips: int) -> list[dict[str, Any]]:
    """Ledger rows of the blocks :func:`inference.planning.scene_blocks` makes of ``scene``."""
    if scene.height is None or scene.width is None:
        raise ChainError(f"scene {scene.id} has no size in the ledger; it was never validated")
    _, blocks = scene_blocks(settings, scene.height, scene.width, block_chips)
    return [
        {
            "block_index": b.index,
            "row_off": b.window[0],
            "col_off": b.window[1],
            "height": b.window[2],
            "width": b.window[3],
        }
        for b in blocks
    ]

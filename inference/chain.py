"""The process -> infer (per block) -> assemble (per scene) -> observe chain: the logic the
Lambda handlers call.

Each step is idempotent, because Step Functions retries, redrives and re-runs:

- :func:`process` lists the input prefix (one paginated listing), hashes only keys it has not
  seen with the same ETag, registers each object by the sha256 of its bytes (a duplicate upload
  under another key becomes an alias of the existing scene), validates new scenes (a bad input
  is quarantined with its reason; the run goes on), plans each scene to predict as blocks
  (sized for the infer timeout from the champion's measured throughput, see
  :mod:`inference.blocks`) and writes the run's manifests: the blocks still to predict of every
  scene that lacks a prediction by the champion (including what a crashed run left behind),
  and the list of those scenes. With a challenger named, its version goes in the output (the
  shadow pass, :mod:`inference.shadow`) and the manifests also list the scenes whose shadow
  comparison a crashed or failed pass left unfinished.
- :func:`infer` predicts one block with the champion process planned the run with (the item's
  ``model_version``; cached in ``MODEL_CACHE_DIR`` across warm calls, the pointer never re-read,
  so a promotion mid-run takes effect at the next run) under its scene's lease, and writes the block's
  rasters and sums to one file. A block already predicted is a no-op.
- :func:`assemble` builds a scene whose blocks are all predicted into class + confidence COGs,
  a quicklook, a STAC item and a summary under deterministic keys
  (``<OUTPUT_URI>/<sha256>/<model_version>/``, so a re-run overwrites rather than duplicates),
  records the prediction, its lineage and its scene metrics in one transaction, and removes the
  block outputs. A scene already predicted by that model version is a no-op.
- :func:`observe` aggregates the run's scenes, computes drift against the export's reference
  statistics, writes run metrics and closes the run.
- :func:`record_failure` is the state machine's Catch path.

State payloads carry ids and URIs only; the manifests live in object storage.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa
from pydantic import BaseModel
from sqlalchemy.orm import Session

from core import artifacts, registry, storage
from core.naip import NaipValidationError, validate_naip
from inference import block_outputs, retry
from inference.blocks import WHOLE_SCENE, BlockSizing, Throughput, block_sizing
from inference.ledger import db, repository
from inference.ledger.models import BlockStatus, Scene, SceneStatus, utcnow
from inference.settings import ChainSettings, onnx_available

log = logging.getLogger(__name__)

T = TypeVar("T")
#: Quarantine reason of an input that resolves outside the input prefix (never read).
OUTSIDE_INPUT_ROOT = "outside_input_root"
IMAGE_SUFFIXES = (".tif", ".tiff")


class ChainError(RuntimeError):
    """Base class of the chain's domain errors."""


class NoChampionError(ChainError):
    """The registry has no champion model to predict with."""


class ContentChangedError(ChainError):
    """The bytes at a scene's URI no longer match its sha256 (the key was overwritten)."""


class SceneItem(BaseModel):
    """One scene of a run: what the assembly Map hands each assemble call.

    ``model_version`` is the champion :func:`process` planned the run with: infer and assemble
    predict with it and never re-read the pointer, so a promotion mid-run cannot mix versions
    (the next run takes the new champion).
    """

    scene_id: int
    uri: str
    sha256: str
    model_version: str


class BlockItem(SceneItem):
    """One block of a scene: what the infer Map hands each infer call (the manifest's items).

    ``window`` is the block's core ``[row_off, col_off, height, width]`` as process planned it
    with ``block_chips`` chips a side; infer re-plans from the scene and refuses a mismatch.
    """

    block: int = 0
    block_chips: int
    window: list[int]


# ---------------------------------------------------------------------------------------------
# Cached infrastructure (module level, reused by warm Lambda calls)
# ---------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def _engine(url: str) -> sa.Engine:
    return db.make_engine(url)


def engine(settings: ChainSettings) -> sa.Engine:
    """The ledger engine for ``settings`` (one per URL per process)."""
    return _engine(settings.resolved_ledger_url())


@contextmanager
def session(settings: ChainSettings) -> Iterator[Session]:
    """One ledger transaction."""
    with db.session_scope(engine(settings)) as s:
        yield s


def transaction(settings: ChainSettings, what: str, work: Callable[[Session], T]) -> T:
    """``work(session)`` in one ledger transaction, retried whole on transient database faults."""

    def attempt() -> T:
        with session(settings) as s:
            return work(s)

    return retry.call(attempt, what)


def deadline(settings: ChainSettings) -> datetime:
    """The deadline a run gets each time it makes progress."""
    return utcnow() + timedelta(seconds=settings.run_stale_after_s)


def configure_storage(settings: ChainSettings) -> None:
    """Point the storage layer at the settings' S3 endpoint when one is set and differs."""
    if settings.aws_endpoint_url and settings.aws_endpoint_url != storage.endpoint_url():
        storage.configure(endpoint_url=settings.aws_endpoint_url, region=settings.aws_region)


def champion(settings: ChainSettings) -> dict[str, Any]:
    """The champion pointer (one small GET); raises :class:`NoChampionError` when there is none."""
    pointer = registry.champion(settings.registry_uri, settings.model_name)
    if pointer is None:
        raise NoChampionError(
            f"no champion model {settings.model_name!r} in the registry at {settings.registry_uri}; "
            "train and promote one first (`make train_baseline`)"
        )
    return pointer


@dataclass
class _Loaded:
    version: str
    predictor: Any
    metadata: dict[str, Any]


_model_lock = threading.Lock()
_loaded: _Loaded | None = None


def model_artifact(settings: ChainSettings, pointer: dict[str, Any]) -> tuple[str, str, Any]:
    """``(backend, uri, choice)`` of what to load for the champion on this CPU, following ``BACKEND``.

    :func:`inference.runtime_cpu.choose_path` picks the fastest path this CPU, this image and
    the champion's artifacts allow (the order and the reasons are in
    :data:`~inference.runtime_cpu.PATHS`). ``BACKEND=onnx``/``torch`` restricts the
    choice to that backend; ``auto`` allows all. ``choice`` is the
    :class:`~inference.runtime_cpu.DispatchChoice` (path, reason, CPU flags, skipped paths).
    """
    from inference.runtime_cpu import choose_path, runtime_available

    version_uri = str(pointer["version_uri"])
    uris = {artifacts.EXPORT_NAME: str(pointer["export_uri"])}

    def uri_of(name: str) -> str:
        return uris.get(name) or artifacts.in_version(version_uri, name)

    def has_runtime(module: str) -> bool:
        return onnx_available() if module == "onnxruntime" else runtime_available(module)

    backends = None if settings.backend == "auto" else {settings.backend}
    try:
        choice = choose_path(
            has_artifact=lambda name: name == artifacts.EXPORT_NAME or storage.exists(uri_of(name)),
            has_runtime=has_runtime,
            backends=backends,
        )
    except RuntimeError as exc:
        raise ChainError(
            f"BACKEND={settings.backend}: champion {pointer['version']} cannot run here ({exc}); "
            f"ONNX runs need {artifacts.ONNX_INT8_NAME} (export it with "
            "training.models.onnx_export.register_onnx), torch needs an image with torch"
        ) from exc
    return choice.backend, uri_of(choice.artifact), choice


def load_champion(settings: ChainSettings) -> _Loaded:
    """The champion's predictor: re-reads the pointer, reuses the loaded model while it is unchanged.

    See :func:`load_version` for the cache.
    """
    return _load(settings, champion(settings))


def load_version(settings: ChainSettings, version: str) -> _Loaded:
    """The predictor of registered ``version`` (the shadow challenger), loaded like the champion.

    One model is held at a time: the shadow pass runs after the champion's blocks, so a warm
    container swaps once per execution instead of holding two models in its memory.
    """
    loaded = _loaded
    if loaded is not None and loaded.version == version:  # versions are immutable
        return loaded
    manifest = retry.call(
        lambda: registry.get_version(settings.registry_uri, settings.model_name, version),
        f"read version {version}",
    )
    return _load(
        settings, {"version": version, "version_uri": manifest["uri"], "export_uri": manifest["export_uri"]}
    )


def _load(settings: ChainSettings, pointer: dict[str, Any]) -> _Loaded:
    """Load the model ``pointer`` names (``version``, ``version_uri``, ``export_uri``), or reuse it.

    Remote artifacts are copied once into ``MODEL_CACHE_DIR/<model>/<version>/`` (``/tmp`` on
    Lambda), so a warm container that sees a new champion downloads only the new model. The
    CPU-specific optimised graph / compiled model is cached under ``MODEL_CACHE_DIR/compiled``.
    The chosen path, its reason and the CPU flags are logged and kept as ``metadata["runtime"]``.
    """
    global _loaded
    version = str(pointer["version"])
    with _model_lock:
        if _loaded is not None and _loaded.version == version:
            return _loaded
        from inference.runtime_cpu import load_chosen

        _backend, uri, choice = model_artifact(settings, pointer)
        local = storage.local_path(uri)
        if local is None:
            local = (
                Path(settings.model_cache_dir)
                / settings.model_name
                / artifacts.safe_name(version)
                / choice.artifact
            )
            if not local.exists():
                storage.download(uri, local)
        cache = Path(settings.model_cache_dir) / "compiled"
        predictor = load_chosen(choice, str(local), cache_dir=str(cache))
        _loaded = _Loaded(version, predictor, {**predictor.metadata, "runtime": predictor.runtime})
        log.info("loaded %s %s (%s: %s)", settings.model_name, version, choice.path.name, choice.reason)
        return _loaded


def manifest_uri(settings: ChainSettings, execution_id: str) -> str:
    """Where the manifest of an execution is written."""
    return artifacts.manifest_uri(settings.manifest_prefix, execution_id)


def object_key(uri: str) -> str:
    """The bucket key of an ``s3://`` URI; for ``file://`` the path without its leading slash."""
    rest = uri.partition("://")[2]
    return rest.partition("/")[2] if uri.startswith("s3://") else rest.lstrip("/")


# ---------------------------------------------------------------------------------------------
# process
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ListedObject:
    uri: str
    etag: str
    size: int


def list_objects(prefix: str) -> list[ListedObject]:
    """Image objects under ``prefix`` with an ETag-like tag, from one (paginated) listing.

    The same listing :func:`core.storage.list_uris` does, with details kept: S3's ETag, or
    size + mtime for local files, so unchanged keys are recognised without reading them.
    """
    fs, path = storage.filesystem(prefix)
    s3 = prefix.startswith("s3://")
    try:
        found = fs.find(path, detail=True)
    except FileNotFoundError:
        return []
    out = []
    for name, info in sorted(found.items()):
        if not name.lower().endswith(IMAGE_SUFFIXES) or info.get("type") == "directory":
            continue
        uri = "s3://" + name.lstrip("/") if s3 else "file://" + name
        # Locally size + mtime is not enough: `cp -p` keeps both. ctime and inode change on any rewrite.
        tag = (
            str(info.get("ETag", "")).strip('"')
            if s3
            else f"{info.get('size')}-{info.get('mtime')}-{info.get('created')}-{info.get('ino')}"
        )
        out.append(ListedObject(uri, tag or f"size-{info.get('size')}", int(info.get("size") or 0)))
    return out


def _raster_metadata(info: dict[str, Any]) -> dict[str, Any]:
    """Ledger fields from ``validate_naip``'s metadata: bounds, WGS84 bbox and area."""
    from rasterio.crs import CRS
    from rasterio.warp import transform_bounds

    crs = CRS.from_user_input(info["crs"])
    minx, miny, maxx, maxy = (float(b) for b in info["bounds"])
    area_km2 = None
    if crs.is_projected:
        factor = float(crs.linear_units_factor[1])
        area_km2 = abs(maxx - minx) * abs(maxy - miny) * factor * factor / 1e6
    try:
        bbox = [float(v) for v in transform_bounds(crs, "EPSG:4326", minx, miny, maxx, maxy)]
    except Exception:  # a CRS PROJ cannot transform: keep the scene, skip the footprint
        bbox = None
    return {
        "width": int(info["width"]),
        "height": int(info["height"]),
        "crs": crs.to_string(),
        "bounds": [minx, miny, maxx, maxy],
        "bbox_wgs84": bbox,
        "area_km2": area_km2,
    }


def _validate_scene(settings: ChainSettings, s: Session, scene: Scene, uri: str) -> bool:
    """Validate a discovered scene: validated with its metadata, or quarantined with its reason."""
    try:
        info = validate_naip(uri, max_pixels=settings.max_pixels)
    except NaipValidationError as exc:
        repository.quarantine(s, scene, exc.reason, exc.detail)
        log.warning("quarantined %s (%s): %s", uri, exc.reason, exc.detail)
        return False
    repository.describe_scene(s, scene, **_raster_metadata(info))
    repository.transition(s, scene, SceneStatus.validated)
    return True


def _outside_input_root(settings: ChainSettings, uri: str) -> str | None:
    """Where a ``file://`` input really is, when a symlink takes it outside the input prefix."""
    root, local = storage.local_path(settings.input_uri), storage.local_path(uri)
    if root is None or local is None:
        return None
    target = local.resolve()
    return None if target.is_relative_to(root.resolve()) else str(target)


def _register(settings: ChainSettings, s: Session, obj: ListedObject) -> tuple[int, int, int]:
    """Register one listed object; returns (new scenes, quarantined, aliases) it adds."""
    known = repository.known_source(s, obj.uri, obj.etag)
    if known is not None:
        # Seen before with this ETag: no re-hash. Finish a validation a crash cut short.
        if known.status == SceneStatus.discovered:
            return 0, int(not _validate_scene(settings, s, known, obj.uri)), 0
        return 0, 0, 0
    outside = _outside_input_root(settings, obj.uri)
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
        sha, size = storage.sha256_of(obj.uri)
    except FileNotFoundError:
        log.warning("%s disappeared between listing and reading; skipped", obj.uri)
        return 0, 0, 0
    scene, created = repository.register_scene(s, sha, obj.uri, size, etag=obj.etag)
    if not created:
        log.info("%s is a duplicate of scene %s (%s); recorded as an alias", obj.uri, scene.id, sha[:12])
        bad = scene.status == SceneStatus.discovered and not _validate_scene(settings, s, scene, obj.uri)
        return 0, int(bad), 1
    return 1, int(not _validate_scene(settings, s, scene, obj.uri)), 0


def process(settings: ChainSettings, execution_id: str) -> dict[str, Any]:
    """Discover, register and validate new inputs; write the run's manifest. See the module doc."""
    configure_storage(settings)
    url = settings.resolved_ledger_url()
    if retry.call(lambda: db.ensure_schema(url), "bring the ledger schema to head"):
        log.info("ledger migrated to %s", ", ".join(db.head_revisions()))
    pointer = retry.call(lambda: champion(settings), "read the champion pointer")
    version = str(pointer["version"])

    def open_run(s: Session) -> None:
        for stale in repository.abandon_stale_runs(s):
            log.warning("closed run %s as abandoned: %s", stale.execution_id, stale.error)
        repository.start_run(s, execution_id, model_version=version, deadline_at=deadline(settings))

    transaction(settings, f"open run {execution_id}", open_run)

    challenger = retry.call(
        lambda: registry.challenger(settings.registry_uri, settings.model_name), "read the challenger pointer"
    )
    challenger_version = (
        None if challenger is None or challenger["version"] == version else str(challenger["version"])
    )

    discovered = quarantined = aliases = 0
    listed = retry.call(lambda: list_objects(settings.input_uri), f"list {settings.input_uri}")
    for obj in listed:
        new, bad, alias = transaction(
            settings, f"register {obj.uri}", functools.partial(_register, settings, obj=obj)
        )
        discovered, quarantined, aliases = discovered + new, quarantined + bad, aliases + alias

    sizing = _block_sizing(settings, pointer)
    if sizing.block_chips == WHOLE_SCENE:
        log.warning("%s", sizing.reason)
    else:
        log.info("blocks of %d x %d chips: %s", sizing.block_chips, sizing.block_chips, sizing.reason)

    def manifest(s: Session) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        todo = repository.scenes_to_predict(s, version, max_attempts=settings.max_attempts)
        blocks, scenes = [], []
        for scene in todo:
            planned = repository.plan_blocks(
                s, scene, version, sizing.block_chips, _planned_blocks(settings, scene, sizing.block_chips)
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
        repository.update_run(s, execution_id, scenes_discovered=discovered, scenes_quarantined=quarantined)
        repository.touch_run(s, execution_id, deadline(settings))
        return blocks, scenes

    blocks, scenes = transaction(settings, f"list the blocks to predict for {execution_id}", manifest)
    uri = manifest_uri(settings, execution_id)
    scenes_uri = artifacts.scenes_manifest_uri(settings.manifest_prefix, execution_id)
    # The scene list first: a manifest of blocks is only ever read beside its scenes.
    retry.call(
        lambda: storage.write_text(scenes_uri, json.dumps(scenes)), f"write the scene list {scenes_uri}"
    )
    retry.call(lambda: storage.write_text(uri, json.dumps(blocks)), f"write the manifest {uri}")
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


def scene_item(scene: Scene, version: str) -> SceneItem:
    """The manifest item of a ledger scene, predicted by ``version`` (the run's champion)."""
    return SceneItem(scene_id=scene.id, uri=scene.source_uri, sha256=scene.sha256, model_version=version)


def block_items(item: SceneItem, blocks: list[Any]) -> list[dict[str, Any]]:
    """The manifest items of a scene's ledger blocks."""
    return [
        BlockItem(
            **item.model_dump(), block=b.block_index, block_chips=b.block_chips, window=list(b.window)
        ).model_dump()
        for b in blocks
    ]


def _block_sizing(settings: ChainSettings, pointer: dict[str, Any]) -> BlockSizing:
    """The block side for this run: configured, or from the champion's measured throughput."""
    throughput = None
    if settings.block_chips is None:
        manifest = retry.call(
            lambda: registry.get_version(settings.registry_uri, settings.model_name, str(pointer["version"])),
            "read the champion's metrics",
        )
        throughput = Throughput.from_metrics(manifest.get("metrics"))
    try:
        return block_sizing(settings, throughput, settings.infer_memory_mb)
    except ValueError as exc:
        raise ChainError(f"champion {pointer['version']}: {exc}") from exc


def _planned_blocks(settings: ChainSettings, scene: Scene, block_chips: int) -> list[dict[str, Any]]:
    """Ledger rows of the blocks :func:`inference.predict.plan_blocks` makes of ``scene``."""
    from inference.predict import PATCH_SIZE, plan_blocks, plan_tiling

    if scene.height is None or scene.width is None:
        raise ChainError(f"scene {scene.id} has no size in the ledger; it was never validated")
    plan = plan_tiling(scene.height, scene.width, settings.chip_size, settings.overlap, PATCH_SIZE)
    return [
        {
            "block_index": b.index,
            "row_off": b.window[0],
            "col_off": b.window[1],
            "height": b.window[2],
            "width": b.window[3],
        }
        for b in plan_blocks(plan, block_chips)
    ]


# ---------------------------------------------------------------------------------------------
# infer
# ---------------------------------------------------------------------------------------------


def local_copy(settings: ChainSettings, item: SceneItem) -> tuple[str, bool]:
    """A local path of the scene's bytes, checked against its sha256; (path, is_temporary)."""
    local = storage.local_path(item.uri)
    if local is not None:
        path, temporary = local, False
    else:
        # A name of its own: two attempts on one scene in one process (the local runner with
        # --concurrency, a lease takeover) must not delete each other's copy.
        path = Path(settings.scene_cache_dir) / f"{item.sha256}-{uuid.uuid4().hex[:8]}.tif"
        storage.download(item.uri, path)
        temporary = True
    sha, _ = storage.sha256_of(storage.to_uri(path))
    if sha != item.sha256:
        if temporary:
            path.unlink(missing_ok=True)
        raise ContentChangedError(
            f"{item.uri} now holds sha256 {sha[:12]}…, not scene {item.scene_id}'s {item.sha256[:12]}…; "
            "the key was overwritten (the next process run registers the new content)"
        )
    return str(path), temporary


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
    summary.extra["runtime"] = _loaded.metadata.get("runtime") if _loaded is not None else None
    storage.write_text(uris["summary_uri"], json.dumps(summary.to_dict()))
    return uris


def get_scene(s: Session, scene_id: int) -> Scene:
    scene = s.get(Scene, scene_id)
    if scene is None:
        raise ChainError(f"scene {scene_id} is not in the ledger; the manifest does not match it")
    return scene


def predict_item(settings: ChainSettings, predictor: Any, path: str, item: BlockItem) -> Any:
    """The block ``item`` names of the scene at local ``path``, predicted with the settings' tiling."""
    from inference.predict import predict_block

    return predict_block(
        predictor,
        path,
        item.block,
        block_chips=item.block_chips,
        chip_size=settings.chip_size,
        overlap=settings.overlap,
        batch_size=settings.batch_size,
        max_pixels=settings.max_pixels,
        low_confidence_threshold=settings.low_confidence_threshold,
        expected_window=item.window,
    )


def infer(settings: ChainSettings, execution_id: str, item: dict[str, Any] | BlockItem) -> dict[str, Any]:
    """Predict one block of a scene with the run's champion (``item.model_version``, as planned);
    idempotent per (scene, model version, block).

    The scene is claimed under the execution's lease (its blocks share it; another live
    execution's lease leaves the block to that execution). The block's classes, confidence and
    sums go to one file under the blocks prefix; :func:`assemble` builds the scene from them.
    """

    configure_storage(settings)
    item = BlockItem.model_validate(item)
    model = load_version(settings, item.model_version)  # the run's planned champion, not the pointer now
    version = model.version
    result = {"scene_id": item.scene_id, "block": item.block, "model_version": version}

    def claim(s: Session) -> tuple[str, Any]:
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

    what = f"block {item.block} of scene {item.scene_id}"
    outcome, value = transaction(settings, f"claim {what}", claim)
    if outcome in ("skipped", "quarantined"):
        return {**result, "status": outcome}
    if outcome == "leased":
        log.info("scene %s is being predicted by %s; %s left to it", item.scene_id, value, what)
        return {**result, "status": "leased_elsewhere", "lease_owner": value}
    run_id = int(value)

    started = utcnow()
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
        return {**result, "status": "quarantined"}
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


# ---------------------------------------------------------------------------------------------
# assemble
# ---------------------------------------------------------------------------------------------


def assemble(settings: ChainSettings, execution_id: str, item: dict[str, Any] | SceneItem) -> dict[str, Any]:
    """Build a scene's outputs from its blocks and record its prediction; idempotent per scene.

    When every block is predicted: the class and confidence COGs, quicklook, STAC item and
    summary are written exactly as a one-call prediction writes them (the scene sums are the
    exact sums of the blocks'), the prediction and its metrics are recorded in one transaction,
    and the block outputs are removed. A scene with blocks missing is failed (its lease
    released), so the next run redoes only those blocks; one another live execution holds is
    left to it.
    """
    from inference import monitor

    configure_storage(settings)
    item = SceneItem.model_validate(item)
    model = load_version(settings, item.model_version)  # the run's planned champion, not the pointer now
    version = model.version
    result = {"scene_id": item.scene_id, "model_version": version, "class_uri": None}

    def claim(s: Session) -> tuple[str, Any]:
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
        parts = [(b.window, b.output_uri, b.seconds or 0.0, b.started_at) for b in blocks]
        return "ready", (repository.get_run(s, execution_id).id, parts)

    outcome, value = transaction(settings, f"claim the assembly of scene {item.scene_id}", claim)
    if outcome == "skipped":
        return {**result, "status": "skipped", "class_uri": value}
    if outcome == "quarantined":
        return {**result, "status": "quarantined"}
    if outcome == "leased":
        log.info("scene %s is being predicted by %s; its assembly is left to it", item.scene_id, value)
        return {**result, "status": "leased_elsewhere", "lease_owner": value}
    if outcome == "incomplete":
        log.warning("scene %s not assembled: %s", item.scene_id, value)
        return {**result, "status": "incomplete", "detail": value}
    run_id, parts = value

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
            lambda: _write_outputs(settings, pred, item, version, image_path=path),
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
        )
        won = prediction.run_id == run_id
        if won:  # a prediction and its metrics belong to the one run that recorded it first
            repository.record_metrics(s, run_id, scene.id, version, rows)
        repository.touch_run(s, execution_id, deadline(settings))
        return won

    won = transaction(settings, f"record the prediction of scene {item.scene_id}", record)
    prefix = artifacts.blocks_prefix(settings.output_uri, item.sha256, version)
    try:  # the lifecycle rule expires what is left if this fails
        storage.delete(prefix, recursive=True)
    except Exception as exc:  # cleanup only
        log.warning("could not remove the block outputs under %s: %s", prefix, exc)
    if not won:
        return {**result, "status": "skipped", "class_uri": uris["class_uri"]}
    return {
        **result,
        "status": "predicted",
        "class_uri": uris["class_uri"],
        "blocks": len(parts),
        "drift": drift,
    }


# ---------------------------------------------------------------------------------------------
# observe
# ---------------------------------------------------------------------------------------------


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

    loaded = _loaded
    if loaded is not None and loaded.version == version:
        return loaded.metadata.get("reference_stats")
    manifest = registry.get_version(settings.registry_uri, settings.model_name, version)
    return read_export_metadata(manifest["export_uri"]).get("reference_stats")


# ---------------------------------------------------------------------------------------------
# failure (the Catch path)
# ---------------------------------------------------------------------------------------------


def error_text(error: dict[str, Any]) -> str:
    """The state machine's caught ``{"Error", "Cause"}`` as ``Error: Cause`` (a Lambda error's
    Cause is JSON ``{"errorType", "errorMessage", ...}``: its message is used)."""
    name = str(error.get("Error") or error.get("error") or "UnknownError")
    cause = error.get("Cause") or error.get("cause") or ""
    if isinstance(cause, str):
        try:
            parsed = json.loads(cause)
            cause = parsed.get("errorMessage", cause) if isinstance(parsed, dict) else cause
        except ValueError:
            pass
    return f"{name}: {cause}"


def record_failure(
    settings: ChainSettings, execution_id: str, error: dict[str, Any] | None
) -> dict[str, Any]:
    """Mark the run failed with the state machine's error (``{"Error", "Cause"}``)."""
    text = error_text(error or {})[:4000]
    log.error("execution %s failed: %s", execution_id, text)
    try:
        status = transaction(
            settings,
            f"record the failure of {execution_id}",
            lambda s: str(repository.fail_run(s, execution_id, text).status),
        )
    except retry.TransientFaultError as exc:
        # The ledger stayed unreachable: the run stays "running" until its deadline, when the next
        # process closes it as abandoned. Raised to the state machine, which does not retry it (this
        # layer spent the budget on it) and goes on to the notice.
        log.error("could not record the failure of %s in the ledger: %s", execution_id, exc)
        raise
    return {"execution_id": execution_id, "status": status, "error": text}

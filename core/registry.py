"""The S3 model registry's storage: immutable versions and the champion/challenger pointers.

Everything is addressed by URI through :mod:`core.storage`, so the same code runs on a
local folder (``file://``), a moto server and S3. No torch and no MLflow here: the inference
Lambda imports the read API (:func:`champion`, :func:`challenger`, :func:`get_version`) without
the training stack. File names and folders come from :mod:`core.artifacts`. The rules that move
the pointers (the promotion gate, naming the challenger) live in :mod:`training.promotion`, the
MLflow mirror in :mod:`training.registry_mlflow`.

Layout under a registry root::

    <root>/<model_name>/
        <version>/
            _claim.json          who is writing this version (If-None-Match, written first)
            model.safetensors    the compact export
            config.yaml          the composed Hydra config
            metrics.json         held-out metrics ("miou", per-class IoU, baseline, ...)
            MODEL_CARD.md        generated card
            version.json         the manifest, written LAST with If-None-Match: a version is
                                 registered exactly when this object exists
        champion.json            {version, miou, promoted_at, previous, export_uri, ...}
        challenger.json          {version, miou, named_at, reason, export_uri, ...}: predicts in
                                 shadow beside the champion on live imagery, never served
        history/<decided_at>-<version>.json   one immutable record per promotion decision

Version ids are ``YYYYMMDDTHHMMSSffffffZ-<12 hex>``: a UTC timestamp with microseconds, so
they sort by registration time as plain strings, plus 48 random bits, so two writers on
different machines never pick the same id without any coordination (no shared counter to
contend on, nothing to allocate before the upload). The claim + manifest CAS writes would
refuse a collision anyway.

A pointer moves by compare-and-swap: :func:`read_pointer_with_tag`, decide, then
:func:`write_pointer_if_match` with the tag that was read.
"""

from __future__ import annotations

import json
import math
import os
import re
import secrets
import tempfile
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from core import artifacts, storage
from core.artifacts import (
    CARD_NAME,
    CONFIG_NAME,
    EXPORT_NAME,
    METRICS_NAME,
    VERSION_CLAIM_NAME,
    VERSION_MANIFEST_NAME,
)
from core.model_card import render_model_card

MANIFEST_SCHEMA = 1

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class RegistryError(RuntimeError):
    """Base class for registry failures."""


class VersionExistsError(RegistryError):
    """The version id is already registered (or claimed by another writer); versions are immutable."""


class VersionNotFoundError(RegistryError, LookupError):
    """No registered version (no manifest) under that id."""


# ----------------------------------------------------------------------------- helpers


def utc_now() -> datetime:
    """The current moment in UTC (every registry timestamp)."""
    return datetime.now(UTC)


def iso_timestamp(moment: datetime) -> str:
    """``moment`` as ISO 8601 with microseconds and ``Z``, as the registry's JSON objects hold it."""
    return moment.isoformat(timespec="microseconds").replace("+00:00", "Z")


def compact_timestamp(moment: datetime) -> str:
    """``moment`` as ``YYYYMMDDTHHMMSSffffffZ``: sorts as a string, safe in an object name."""
    return moment.strftime("%Y%m%dT%H%M%S%fZ")


def new_version_id(moment: datetime | None = None) -> str:
    """A fresh, time-sortable, collision-resistant version id (see the module docstring)."""
    return f"{compact_timestamp(moment or utc_now())}-{secrets.token_hex(6)}"


def check_name(value: str, what: str) -> str:
    """``value`` when it is a valid model name or version id (``what`` names it in the error)."""
    if not isinstance(value, str) or not _NAME_RE.match(value):
        raise ValueError(
            f"invalid {what} {value!r}: use 1-128 characters from letters, digits, '.', '_' and '-', "
            "starting with a letter or digit"
        )
    return value


def _model_uri(root: str, model_name: str) -> str:
    return artifacts.model_uri(root, check_name(model_name, "model name"))


def version_uri(root: str, model_name: str, version: str) -> str:
    """URI of the folder of one version (registered or not)."""
    return artifacts.version_uri(
        root, check_name(model_name, "model name"), check_name(version, "version id")
    )


def champion_uri(root: str, model_name: str) -> str:
    """URI of the champion pointer object."""
    return artifacts.champion_uri(root, check_name(model_name, "model name"))


def challenger_uri(root: str, model_name: str) -> str:
    """URI of the challenger pointer object."""
    return artifacts.challenger_uri(root, check_name(model_name, "model name"))


def history_uri(root: str, model_name: str) -> str:
    """URI of the folder of promotion decision records."""
    return artifacts.history_uri(root, check_name(model_name, "model name"))


def _json_safe(value: Any) -> Any:
    """Plain JSON types; NaN/inf (e.g. the IoU of a class absent from the held-out set) -> None."""
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, str | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if hasattr(value, "item"):  # numpy / torch scalars, without importing either
        return _json_safe(value.item())
    return str(value)


def json_bytes(obj: Any) -> bytes:
    """``obj`` as the registry stores JSON: plain types, sorted keys, indented, UTF-8."""
    return (json.dumps(_json_safe(obj), indent=2, sort_keys=True, allow_nan=False) + "\n").encode("utf-8")


def _read_json(uri: str) -> Any:
    text = storage.read_text(uri)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise RegistryError(f"{uri} is not valid JSON ({exc}); inspect or restore that object") from exc


def validate_miou(metrics: Mapping[str, Any]) -> float:
    """The held-out ``metrics["miou"]``, checked to be a finite number in [0, 1]."""
    if "miou" not in metrics:
        raise ValueError(
            f"metrics must contain 'miou' (held-out mean IoU in [0, 1]); got keys {sorted(metrics)}"
        )
    try:
        miou = float(metrics["miou"])
    except (TypeError, ValueError) as exc:
        raise ValueError(f"metrics['miou'] must be a number, got {metrics['miou']!r}") from exc
    if not (math.isfinite(miou) and 0.0 <= miou <= 1.0):
        raise ValueError(f"metrics['miou'] must be a finite number in [0, 1], got {miou!r}")
    return miou


def _copy_export(export: str | os.PathLike[str], dest_uri: str) -> tuple[str, int]:
    """Copy a local file or a URI to ``dest_uri``; return (sha256, size)."""
    local = storage.local_path(str(export))
    if local is not None:
        if not local.is_file():
            raise FileNotFoundError(f"export file {local} does not exist; pass the compact export's path")
        storage.upload(local, dest_uri)
        return storage.sha256_of(storage.to_uri(local))
    if not storage.exists(str(export)):
        raise FileNotFoundError(f"export {export} does not exist; pass the compact export's URI")
    with tempfile.TemporaryDirectory(prefix="registry-") as tmp:
        path = storage.download(str(export), Path(tmp) / EXPORT_NAME)
        storage.upload(path, dest_uri)
        return storage.sha256_of(storage.to_uri(path))


# ----------------------------------------------------------------------------- versions

#: What each file of a version folder holds, as the manifest lists them.
_VERSION_FILES = {
    "export": EXPORT_NAME,
    "config": CONFIG_NAME,
    "metrics": METRICS_NAME,
    "model_card": CARD_NAME,
}


def _claim_version(prefix: str, model_name: str, version: str, created: datetime) -> None:
    """Claim the version folder ``prefix`` for this writer, or raise :class:`VersionExistsError`."""
    if storage.exists(storage.join(prefix, VERSION_MANIFEST_NAME)):
        raise VersionExistsError(
            f"version {version} of {model_name} is already registered at {prefix}; versions are "
            "immutable, so register under a new version id (omit version= to get a fresh one)"
        )
    claim_folder(prefix, model_name, version, iso_timestamp(created), VERSION_MANIFEST_NAME)


def claim_folder(prefix: str, name: str, version: str, created: str, manifest_name: str) -> None:
    """Create ``prefix``'s claim file if absent (a conditional put), else raise
    :class:`VersionExistsError`: one writer per version folder, for models and encoders alike."""
    claim = {"version": version, "claimed_at": created, "token": secrets.token_hex(8)}
    try:
        storage.put_if_match(storage.join(prefix, VERSION_CLAIM_NAME), json_bytes(claim), None)
    except storage.PreconditionFailed as exc:
        raise VersionExistsError(
            f"version {version} of {name} is claimed by another writer ({prefix}/{VERSION_CLAIM_NAME}); "
            "versions are immutable: pick another version id, or delete that folder if the writer "
            f"crashed before writing {manifest_name}"
        ) from exc


def _write_model_card(
    manifest: Mapping[str, Any],
    metrics: Mapping[str, Any],
    baseline: Mapping[str, Any] | None,
    intended_use: str | None,
    class_names: Sequence[str] | None,
) -> None:
    """Write the ``MODEL_CARD.md`` of the version that ``manifest`` describes."""
    card = render_model_card(
        model_name=manifest["model_name"],
        version=manifest["version"],
        created_at=manifest["created_at"],
        version_uri=manifest["uri"],
        metrics=_json_safe(metrics),
        run_id=manifest["run_id"],
        source=manifest["source"],
        data_description=manifest["data_description"],
        baseline=_json_safe(baseline) if baseline else None,
        caveat=manifest["caveat"],
        intended_use=intended_use,
        class_names=class_names,
        export_sha256=manifest["export_sha256"],
        export_bytes=manifest["export_bytes"],
    )
    storage.write_text(storage.join(manifest["uri"], CARD_NAME), card)


def register_version(
    root: str,
    model_name: str,
    export: str | os.PathLike[str],
    metrics: Mapping[str, Any],
    config_yaml: str,
    *,
    run_id: str | None = None,
    source: Mapping[str, Any] | None = None,
    data_description: str = "",
    baseline: Mapping[str, Any] | None = None,
    caveat: str | None = None,
    intended_use: str | None = None,
    class_names: Sequence[str] | None = None,
    version: str | None = None,
) -> dict[str, Any]:
    """Register an immutable version and return its manifest.

    Args:
        root: Registry root URI (``file://...``, ``s3://bucket/prefix``) or local path.
        model_name: Model name; versions live under ``<root>/<model_name>/``.
        export: Local path or URI of the compact export (copied in as ``model.safetensors``).
        metrics: Held-out metrics. Must hold ``miou`` in [0, 1]; per-class IoU goes under
            ``per_class_iou`` (mapping class -> IoU, or a list in class order). A
            ``majority_baseline`` entry is used as the baseline unless ``baseline`` is given.
        config_yaml: The composed config as YAML text (``core.config.to_yaml(cfg)``).
        run_id: The tracking run that produced the weights (lineage).
        source: Where the weights came from, e.g. ``{"kind": "seed-import", "checkpoint": uri}``.
        data_description: Training / held-out data, for the model card.
        baseline: Majority-class baseline metrics on the same held-out set.
        caveat: A warning for the model card, e.g. "trained on synthetic data".
        intended_use: Overrides the model card's default intended use.
        class_names: Names for a per-class IoU given as a list.
        version: An explicit version id; default :func:`new_version_id`.

    Raises:
        VersionExistsError: The version id is registered or being written by someone else.
    """
    miou = validate_miou(metrics)
    if not isinstance(config_yaml, str):
        raise TypeError("config_yaml must be the config as YAML text; use core.config.to_yaml(cfg)")
    created = utc_now()
    version = check_name(version, "version id") if version is not None else new_version_id(created)
    prefix = version_uri(root, model_name, version)
    _claim_version(prefix, model_name, version, created)

    export_uri = storage.join(prefix, EXPORT_NAME)
    sha256, size = _copy_export(export, export_uri)
    storage.write_text(storage.join(prefix, CONFIG_NAME), config_yaml)
    storage.write_bytes(storage.join(prefix, METRICS_NAME), json_bytes(metrics))
    manifest = {
        "schema": MANIFEST_SCHEMA,
        "model_name": model_name,
        "version": version,
        "created_at": iso_timestamp(created),
        "uri": prefix,
        "model_uri": _model_uri(root, model_name),
        "export_uri": export_uri,
        "export_sha256": sha256,
        "export_bytes": size,
        "miou": miou,
        "run_id": run_id,
        "source": dict(source) if source else None,
        "caveat": caveat,
        "data_description": data_description,
        "files": _VERSION_FILES,
    }
    if baseline is None and isinstance(metrics.get("majority_baseline"), Mapping):
        baseline = metrics["majority_baseline"]
    _write_model_card(manifest, metrics, baseline, intended_use, class_names)
    # Written last: the version is registered exactly when its manifest exists.
    try:
        storage.put_if_match(storage.join(prefix, VERSION_MANIFEST_NAME), json_bytes(manifest), None)
    except storage.PreconditionFailed as exc:  # only if someone bypassed the claim
        raise VersionExistsError(f"version {version} of {model_name} was registered concurrently") from exc
    return _json_safe(manifest)


def list_versions(root: str, model_name: str) -> list[str]:
    """Registered version ids of ``model_name``, oldest first (half-written ones are skipped)."""
    base = _model_uri(root, model_name)
    found = storage.list_uris(base, suffix="/" + VERSION_MANIFEST_NAME)
    versions = []
    for uri in found:
        relative = uri[len(base) :].strip("/").split("/")
        if len(relative) == 2 and _NAME_RE.match(relative[0]):
            versions.append(relative[0])
    return sorted(versions)


def get_version(root: str, model_name: str, version: str) -> dict[str, Any]:
    """The manifest of a registered version, with its metrics under ``"metrics"``."""
    prefix = version_uri(root, model_name, version)
    try:
        manifest = _read_json(storage.join(prefix, VERSION_MANIFEST_NAME))
    except FileNotFoundError as exc:
        raise VersionNotFoundError(
            f"no registered version {version!r} of {model_name} under {storage.to_uri(root)}; "
            "list_versions() shows the registered ones"
        ) from exc
    manifest["metrics"] = _read_json(storage.join(prefix, METRICS_NAME))
    return manifest


# ----------------------------------------------------------------------------- pointers


def champion(root: str, model_name: str) -> dict[str, Any] | None:
    """The champion pointer (one small GET), or None when nothing has been promoted yet."""
    try:
        return _read_json(champion_uri(root, model_name))
    except FileNotFoundError:
        return None


def challenger(root: str, model_name: str) -> dict[str, Any] | None:
    """The challenger pointer, or None when no model predicts in shadow."""
    try:
        return _read_json(challenger_uri(root, model_name))
    except FileNotFoundError:
        return None


def read_pointer_with_tag(uri: str) -> tuple[dict[str, Any] | None, str | None]:
    """A pointer (None when absent) and the version tag to pass to :func:`write_pointer_if_match`."""
    # Tag first, content second: a write in between leaves us with a stale tag, so the CAS
    # fails and we retry; the other order could pair old content with a new tag.
    tag = storage.version_tag(uri)
    try:
        pointer = _read_json(uri)
    except FileNotFoundError:
        pointer = None
    return pointer, tag


def write_pointer_if_match(uri: str, pointer: Mapping[str, Any], expected_tag: str | None) -> bool:
    """Write ``pointer`` only if the object still has ``expected_tag`` (None: only if absent).

    Returns False, writing nothing, when another writer moved the pointer since it was read.
    """
    try:
        storage.put_if_match(uri, json_bytes(pointer), expected_tag)
    except storage.PreconditionFailed:
        return False
    return True

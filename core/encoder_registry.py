"""Encoder versions in the S3 registry: the home of every pretrained (continued-pretraining) encoder.

Beside the segmentation models of :mod:`core.registry`, under the same registry root::

    <registry_uri>/encoders/<encoder_name>/
        <version>/
            _claim.json          who is writing this version (If-None-Match, written first)
            encoder.safetensors  the ClayEncoder state dict (dynamic patch embedding, fp32): loads
                                 through ``model.pretrained_uri`` like any encoder-only file
            card.md              what it was trained on, how, and from which start
            reconstruction.png   masked input | reconstruction | truth (and any other figures)
            encoder.json         the record, written LAST with If-None-Match: a version is
                                 registered exactly when this object exists
        latest.json              {version, uri, created, moved_at}: the newest registered version,
                                 moved by compare-and-swap

Version ids, JSON encoding and the conditional pointer write are :mod:`core.registry`'s. No torch
here: a reader of the record (the training pipeline choosing an encoder) needs only storage.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from core import storage
from core.artifacts import ENCODER_WEIGHTS_NAME
from core.registry import (
    RegistryError,
    VersionExistsError,
    VersionNotFoundError,
    check_name,
    claim_folder,
    iso_timestamp,
    json_bytes,
    new_version_id,
    read_pointer_with_tag,
    utc_now,
    write_pointer_if_match,
)

log = logging.getLogger(__name__)

#: Folder of encoder versions under a registry root (beside the segmentation models).
ENCODERS_DIR = "encoders"
#: The record of one encoder version (written last).
ENCODER_RECORD_NAME = "encoder.json"
#: The human-readable card of one encoder version.
ENCODER_CARD_NAME = "card.md"
#: The pointer to the newest registered version of one encoder name.
LATEST_NAME = "latest.json"
#: The ``version`` argument of :func:`resolve_encoder_version` that follows :data:`LATEST_NAME`.
LATEST = "latest"
#: The figure every pretraining run registers (masked input | reconstruction | truth).
RECONSTRUCTION_FIGURE = "reconstruction.png"
#: Keys the caller's record must carry; the registry adds name, version, created, files and digests.
REQUIRED_RECORD_KEYS = ("preset", "encoder", "objective", "start", "lineage")

RECORD_SCHEMA = 1
_POINTER_RETRIES = 8


class EncoderNotFoundError(VersionNotFoundError):
    """No registered version of that encoder name (or no such version id)."""


def encoder_uri(registry_uri: str, encoder_name: str) -> str:
    """The folder of every version of ``encoder_name``."""
    return storage.join(storage.to_uri(registry_uri), ENCODERS_DIR, check_name(encoder_name, "encoder name"))


def encoder_version_uri(registry_uri: str, encoder_name: str, version: str) -> str:
    """The immutable folder of one encoder version (registered or not)."""
    return storage.join(encoder_uri(registry_uri, encoder_name), check_name(version, "version id"))


def latest_uri(registry_uri: str, encoder_name: str) -> str:
    """The ``latest.json`` pointer of ``encoder_name``."""
    return storage.join(encoder_uri(registry_uri, encoder_name), LATEST_NAME)


def _move_latest(registry_uri: str, encoder_name: str, record: Mapping[str, Any]) -> bool:
    """Point ``latest.json`` at ``record``'s version unless a newer one is there already.

    Compare-and-swap: a concurrent writer makes the write fail and we read again. Returns
    whether the pointer now names this version.
    """
    uri = latest_uri(registry_uri, encoder_name)
    pointer = {
        "version": record["version"],
        "uri": record["uri"],
        "version_uri": record["version_uri"],
        "created": record["created"],
        "moved_at": iso_timestamp(utc_now()),
    }
    for _ in range(_POINTER_RETRIES):
        current, tag = read_pointer_with_tag(uri)
        # Version ids sort by registration time: never move the pointer backwards.
        if current is not None and str(current.get("version", "")) > record["version"]:
            return False
        if write_pointer_if_match(uri, pointer, tag):
            return True
    raise RegistryError(f"{uri} kept changing under {_POINTER_RETRIES} compare-and-swap tries; run again")


def register_encoder_version(
    registry_uri: str,
    encoder_name: str,
    encoder_file: str | os.PathLike[str],
    record: Mapping[str, Any],
    card_text: str,
    figures: Mapping[str, str | os.PathLike[str]],
) -> str:
    """Register an immutable encoder version, move ``latest.json`` to it and return its id.

    Args:
        registry_uri: Registry root URI (``file://...``, ``s3://bucket/prefix``) or local path.
        encoder_name: Name of the encoder line; versions live under ``encoders/<encoder_name>/``.
        encoder_file: Local path of the ClayEncoder safetensors (copied in as ``encoder.safetensors``).
        record: What the version is: ``preset``, ``encoder`` (the ClayConfig dict), ``objective``,
            ``start`` (the start weights' record) and ``lineage`` (input URI, scenes, chip recipe,
            run URI); other keys are kept as given.
        card_text: The Markdown card, stored as ``card.md``.
        figures: File name -> local path of figures to store beside it (``reconstruction.png``).

    Raises:
        ValueError: A required record key is missing or a figure name is not a plain file name.
        FileNotFoundError: ``encoder_file`` or a figure does not exist.
        VersionExistsError: The new version id was claimed by another writer.
    """
    missing = [k for k in REQUIRED_RECORD_KEYS if k not in record]
    if missing:
        raise ValueError(f"the encoder record lacks {missing}; it must carry {list(REQUIRED_RECORD_KEYS)}")
    encoder_path = Path(encoder_file)
    if not encoder_path.is_file():
        raise FileNotFoundError(f"encoder file {encoder_path} does not exist")
    for name, path in figures.items():
        check_name(name, "figure name")
        if not Path(path).is_file():
            raise FileNotFoundError(f"figure {name}: {path} does not exist")

    moment = utc_now()
    version = new_version_id(moment)
    created = iso_timestamp(moment)
    prefix = encoder_version_uri(registry_uri, encoder_name, version)
    claim_folder(prefix, f"encoder {encoder_name}", version, created, ENCODER_RECORD_NAME)

    weights_uri = storage.join(prefix, ENCODER_WEIGHTS_NAME)
    storage.upload(encoder_path, weights_uri)
    sha256, size = storage.sha256_of(storage.to_uri(encoder_path))
    figure_uris = {}
    for name, path in figures.items():
        figure_uris[name] = storage.join(prefix, name)
        storage.upload(path, figure_uris[name])
    storage.write_text(storage.join(prefix, ENCODER_CARD_NAME), card_text)

    full = {
        **dict(record),
        "schema": RECORD_SCHEMA,
        "encoder_name": encoder_name,
        "version": version,
        "created": created,
        "uri": weights_uri,  # what model.pretrained_uri takes
        "version_uri": prefix,
        "sha256": sha256,
        "bytes": size,
        "card_uri": storage.join(prefix, ENCODER_CARD_NAME),
        "figures": figure_uris,
    }
    # Written last: the version is registered exactly when its record exists.
    try:
        storage.put_if_match(storage.join(prefix, ENCODER_RECORD_NAME), json_bytes(full), None)
    except storage.PreconditionFailed as exc:  # only if someone bypassed the claim
        raise VersionExistsError(
            f"version {version} of encoder {encoder_name} was registered concurrently"
        ) from exc
    if not _move_latest(registry_uri, encoder_name, full):
        log.info(
            "encoder %s %s registered; %s already points at a newer version",
            encoder_name,
            version,
            LATEST_NAME,
        )
    log.info("registered encoder %s version %s at %s", encoder_name, version, prefix)
    return version


def list_encoder_versions(registry_uri: str, encoder_name: str) -> list[str]:
    """Registered version ids of ``encoder_name``, oldest first (half-written ones are skipped)."""
    base = encoder_uri(registry_uri, encoder_name)
    versions = []
    for uri in storage.list_uris(base, suffix="/" + ENCODER_RECORD_NAME):
        relative = uri[len(base) :].strip("/").split("/")
        if len(relative) == 2:
            versions.append(relative[0])
    return sorted(versions)


def resolve_encoder_version(registry_uri: str, encoder_name: str, version: str = LATEST) -> dict[str, Any]:
    """The record of one encoder version, with ``uri`` (its ``encoder.safetensors``) and ``version``.

    ``version="latest"`` follows ``latest.json``. The returned ``uri`` is what ``model.pretrained_uri``
    takes; ``version_uri`` is the version's folder.

    Raises:
        EncoderNotFoundError: no such encoder name, no latest pointer, or no such version (the
            message names what is missing and which versions exist).
    """
    base = encoder_uri(registry_uri, encoder_name)
    if version == LATEST:
        try:
            pointer = json.loads(storage.read_text(latest_uri(registry_uri, encoder_name)))
        except FileNotFoundError as exc:
            known = list_encoder_versions(registry_uri, encoder_name)
            raise EncoderNotFoundError(
                f"no {LATEST_NAME} for encoder {encoder_name!r} under {base}: "
                + (f"versions {known} exist but none was pointed at" if known else "no version is registered")
                + "; run `landcover pretrain` to register one"
            ) from exc
        version = str(pointer["version"])
    prefix = encoder_version_uri(registry_uri, encoder_name, version)
    try:
        record = json.loads(storage.read_text(storage.join(prefix, ENCODER_RECORD_NAME)))
    except FileNotFoundError as exc:
        known = list_encoder_versions(registry_uri, encoder_name)
        raise EncoderNotFoundError(
            f"no registered version {version!r} of encoder {encoder_name!r} ({prefix}/{ENCODER_RECORD_NAME} "
            f"is missing); registered versions: {known or 'none'}"
        ) from exc
    record["version_uri"] = prefix
    record["uri"] = storage.join(prefix, ENCODER_WEIGHTS_NAME)
    record["version"] = version
    return record

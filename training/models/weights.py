"""Pretrained encoder weights by name: the catalog in ``setup/conf/weights``, fetching, and
what ``model.pretrained`` resolves to.

``landcover weights fetch clay-v1.5`` downloads the official Clay v1.5 checkpoint into
``weights.cache_dir`` with :func:`fetch_weights` (resumable, through
:func:`training.data.download.fetch`) and writes ``<file>.sha256`` beside it. Training with
``model=clay_large model.pretrained=clay-v1.5`` then loads that file's encoder
(:func:`encoder_weights_uri`). ``model.pretrained_uri`` (an explicit file) stays; setting both is
an error. ``model.encoder_version`` (``latest`` or a version id) trains on an encoder version of
the encoder registry (:mod:`core.encoder_registry`, ``<storage.registry_uri>/encoders/<model.encoder_name>/``);
it excludes the other two. :func:`pin_encoder_version` turns ``latest`` into the concrete version once,
when a run starts, so every step of the run loads the same encoder. With none of the three, the
encoder is randomly initialised and :func:`warn_random_encoder` says so.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core import encoder_registry, storage
from core.encoder_registry import LATEST  # model.encoder_version=latest: the newest, pinned per run
from core.model_card import ENCODER_REGISTRY, RANDOM_INIT  # the model card renders these sources specially
from training.data.download import DownloadError, fetch, file_digest

log = logging.getLogger(__name__)

#: Suffix of the digest record written beside a fetched file (``sha256sum -c`` reads it).
RECORD_SUFFIX = ".sha256"


class WeightsConfigError(ValueError):
    """``model.pretrained`` / ``model.pretrained_uri`` / the weights catalog do not fit together."""


class WeightsNotFetchedError(FileNotFoundError):
    """A named weight is selected but its file is not in the cache yet."""


@dataclass(frozen=True)
class WeightSpec:
    """One catalog entry (``weights.catalog.<name>``)."""

    name: str
    url: str
    filename: str
    preset: str
    sha256: str | None = None
    bytes: int | None = None
    approx_bytes: int | None = None


def weight_spec(weights_cfg: Mapping[str, Any], name: str | None = None) -> WeightSpec:
    """The catalog entry ``name`` (default ``weights.default``) of the ``weights`` config section.

    Raises:
        WeightsConfigError: unknown name, or a sha256 that is not a quoted hex string.
    """
    catalog = weights_cfg.get("catalog") or {}
    name = name or weights_cfg.get("default")
    if name not in catalog:
        known = ", ".join(sorted(catalog)) or "none"
        raise WeightsConfigError(f"unknown weights {name!r}; the catalog (setup/conf/weights) has: {known}")
    entry = catalog[name]
    sha256 = entry.get("sha256")
    if sha256 is not None and not is_sha256_hex(sha256):
        # YAML reads an unquoted all-digit digest as a number: never guess it back.
        raise WeightsConfigError(
            f"weights.catalog.{name}.sha256 must be a quoted 64-digit hex string, got {sha256!r}"
        )
    return WeightSpec(
        name=str(name),
        url=str(entry["url"]),
        filename=str(entry.get("filename") or Path(str(entry["url"])).name),
        preset=str(entry["preset"]),
        sha256=str(sha256).lower() if sha256 else None,
        bytes=int(entry["bytes"]) if entry.get("bytes") is not None else None,
        approx_bytes=int(entry["approx_bytes"]) if entry.get("approx_bytes") is not None else None,
    )


def is_sha256_hex(value: object) -> bool:
    """Whether ``value`` is a 64-digit hex string (a sha256 digest)."""
    return isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdefABCDEF" for c in value)


def cached_path(cache_dir: str | Path, spec: WeightSpec) -> Path:
    """Where ``spec``'s file lives in the cache (whether or not it is there yet)."""
    return Path(cache_dir).expanduser() / spec.filename


def read_record(path: Path) -> str | None:
    """The sha256 recorded beside ``path`` by :func:`fetch_weights` (None: no record)."""
    record = path.with_name(path.name + RECORD_SUFFIX)
    if not record.is_file():
        return None
    fields = record.read_text().split()
    return fields[0].lower() if fields and is_sha256_hex(fields[0]) else None


def _write_record(path: Path, digest: str) -> None:
    record = path.with_name(path.name + RECORD_SUFFIX)
    tmp = record.with_name(record.name + ".tmp")
    tmp.write_text(f"{digest}  {path.name}\n")
    tmp.replace(record)


def _warn_unpinned(spec: WeightSpec, path: Path, digest: str) -> None:
    log.warning(
        "!!! %s: NOT VERIFIED against a pinned digest (weights.catalog.%s.sha256 is null). Its sha256 "
        "%s was computed and recorded in %s%s; compare it with the digest the publisher shows and pin it "
        "in setup/conf/weights/default.yaml.",
        path,
        spec.name,
        digest,
        path.name,
        RECORD_SUFFIX,
    )


def _check_free_space(folder: Path, spec: WeightSpec, have: int) -> None:
    need = (spec.bytes or spec.approx_bytes or 0) - have
    free = shutil.disk_usage(folder).free
    if need > free:
        raise DownloadError(
            f"{spec.name} needs about {need / 1e9:.2f} GB more in {folder}, which has {free / 1e9:.2f} GB free; "
            "free some space or pass another cache folder (--cache / weights.cache_dir)"
        )


def fetch_weights(
    spec: WeightSpec,
    cache_dir: str | Path,
    *,
    progress: bool = True,
    timeout: tuple[float, float] | None = None,
) -> Path:
    """Download ``spec`` into ``cache_dir`` (resuming ``<file>.part``), verify it and return its path.

    A file already in the cache with a matching record is kept as it is. The pinned sha256 is
    checked before the file takes its final name (a mismatch deletes it); with no pin the digest
    is computed, recorded and a loud warning says it was not verified.

    Raises:
        DownloadError: the server cannot be reached, the download broke off (run again to
            resume), the size differs from the pinned one, or the disk is too full.
        ChecksumMismatchError: the file does not match the pinned sha256.
    """
    path = cached_path(cache_dir, spec)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_file():
        digest = read_record(path) or _record_existing(path)
        if spec.sha256 is None or digest == spec.sha256:
            log.info("%s is already in the cache: %s (sha256 %s)", spec.name, path, digest)
            if spec.sha256 is None:
                _warn_unpinned(spec, path, digest)
            return path
        # A wrong file under the loader's name (e.g. the pin changed): the cache keeps verified files only.
        log.warning(
            "%s has sha256 %s, expected %s: deleting it and downloading again", path, digest, spec.sha256
        )
        path.unlink()
        path.with_name(path.name + RECORD_SUFFIX).unlink(missing_ok=True)
    part = path.with_name(path.name + ".part")
    _check_free_space(path.parent, spec, part.stat().st_size if part.exists() else 0)
    log.info("fetching %s from %s into %s", spec.name, spec.url, path)
    fetch(spec.url, path, progress=progress, timeout=timeout, expected_sha256=spec.sha256)
    size = path.stat().st_size
    if spec.bytes is not None and size != spec.bytes:
        path.unlink()
        raise DownloadError(
            f"{spec.url}: got {size} bytes, expected {spec.bytes}; the file was deleted, run again"
        )
    digest = spec.sha256 or file_digest(path, "sha256")
    _write_record(path, digest)
    if spec.sha256 is None:
        _warn_unpinned(spec, path, digest)
    else:
        log.info("%s verified: sha256 %s (%d bytes) at %s", spec.name, digest, size, path)
    return path


def _record_existing(path: Path) -> str:
    """Hash a cached file that has no record yet (e.g. copied in by hand) and record it."""
    log.info("hashing %s once to record its sha256 ...", path)
    digest = file_digest(path, "sha256")
    _write_record(path, digest)
    return digest


# -- what the model config selects ---------------------------------------------------------


@dataclass(frozen=True)
class EncoderWeights:
    """The encoder weights a model config selects: a catalog name, an explicit file or an
    encoder registry version."""

    source: str  #: the catalog name, the pretrained_uri, or ENCODER_REGISTRY
    uri: str  #: the file the encoder is loaded from
    sha256: str | None = None  #: recorded digest, when known
    verified: bool = False  #: the digest matched a pinned one (registry: training refuses a mismatch)
    named: bool = False  #: selected by catalog name (model.pretrained), not by file
    #: An encoder registry version: encoder_name, version, registry_uri, objective, lineage input_uri.
    registry: dict[str, Any] | None = None

    def record(self) -> dict[str, Any]:
        """For the model card, the registry's source and the export (``encoder_weights``)."""
        out = {"source": self.source, "uri": self.uri, "sha256": self.sha256, "verified": self.verified}
        return {**out, **(self.registry or {})}


def _encoder_registry_keys(cfg: Any) -> tuple[str, str, str]:
    """``(registry_uri, encoder_name, version)`` of ``model.encoder_version``, checked against
    the other two weight keys."""
    version = str(cfg.model.get("encoder_version"))
    for key in ("pretrained", "pretrained_uri"):
        if cfg.model.get(key):
            raise WeightsConfigError(
                f"model.encoder_version={version} and model.{key}={cfg.model.get(key)} are both set; pick one "
                "(an encoder registry version, a catalog name, or an explicit file)"
            )
    name = cfg.model.get("encoder_name")
    if not name:
        raise WeightsConfigError(
            f"model.encoder_version={version} needs an encoder name: model.encoder_name (from "
            "pretrain.encoder_name, setup/conf/pretrain) is null"
        )
    return str(cfg.storage.registry_uri), str(name), version


def resolve_encoder_version(cfg: Any) -> dict[str, Any]:
    """The encoder registry record ``model.encoder_version`` selects (``latest``: the newest now),
    with its ``uri`` and concrete ``version``.

    Raises:
        WeightsConfigError: encoder_version set with pretrained / pretrained_uri, no encoder name,
            no such version (or none registered) under the registry and name, or a version whose
            preset is not ``model.preset``.
    """
    registry_uri, name, version = _encoder_registry_keys(cfg)
    try:
        record = encoder_registry.resolve_encoder_version(registry_uri, name, version)
    except encoder_registry.EncoderNotFoundError as exc:  # its message names the folder and the versions
        raise WeightsConfigError(
            f"model.encoder_version={version}: encoder {name!r} in the encoder registry at {registry_uri}: {exc}"
        ) from exc
    preset = record.get("preset")
    if preset != cfg.model.preset:
        raise WeightsConfigError(
            f"encoder {name} {record['version']} is a {preset!r} encoder but model.preset is {cfg.model.preset!r}; "
            f"use model=clay_{preset} (its dimensions differ, so it cannot load into another preset)"
        )
    return record


def pin_encoder_version(cfg: Any) -> str | None:
    """Set ``model.encoder_version`` from ``latest`` to the concrete newest version, in place
    (called once when a run starts); returns the version (None: no encoder registry version)."""
    if not cfg.model.get("encoder_version"):
        return None
    record = resolve_encoder_version(cfg)
    if str(cfg.model.encoder_version) == LATEST:
        log.info(
            "model.encoder_version=latest pinned to %s %s for this run",
            record["encoder_name"],
            record["version"],
        )
        cfg.model.encoder_version = record["version"]
    return str(record["version"])


def _registry_weights(cfg: Any) -> EncoderWeights:
    record = resolve_encoder_version(cfg)
    lineage = record.get("lineage") or {}
    objective = record.get("objective")
    if isinstance(objective, Mapping):  # the full recipe stays in the encoder's record; its name here
        objective = objective.get("name")
    return EncoderWeights(
        source=ENCODER_REGISTRY,
        uri=str(record["uri"]),
        sha256=record.get("sha256"),
        # Training loads it only through load_registry_encoder, which refuses a digest mismatch.
        verified=bool(record.get("sha256")),
        registry={
            "encoder_name": record.get("encoder_name"),
            "version": record.get("version"),
            "registry_uri": str(cfg.storage.registry_uri),
            "objective": objective,
            "input_uri": lineage.get("input_uri"),
        },
    )


def selected_weights(cfg: Any) -> EncoderWeights | None:
    """What ``cfg.model.pretrained`` / ``pretrained_uri`` / ``encoder_version`` select, from the
    config alone (a fetched file need not exist; an encoder version must be registered); None:
    random init.

    Raises:
        WeightsConfigError: two keys set, an unknown name or version, or weights whose preset
            is not ``model.preset``.
    """
    if cfg.model.get("encoder_version"):
        return _registry_weights(cfg)
    name = cfg.model.get("pretrained")
    uri = cfg.model.get("pretrained_uri")
    if name and uri:
        raise WeightsConfigError(
            f"model.pretrained={name} and model.pretrained_uri={uri} are both set; pick one "
            "(a catalog name, or an explicit file)"
        )
    if uri:
        return EncoderWeights(source=str(uri), uri=str(uri))
    if not name:
        return None
    if cfg.get("weights") is None:
        raise WeightsConfigError(
            f"model.pretrained={name} needs the weights config group (setup/conf/weights)"
        )
    spec = weight_spec(cfg.weights, str(name))
    if spec.preset != cfg.model.preset:
        raise WeightsConfigError(
            f"model.pretrained={name} holds a {spec.preset!r} encoder but model.preset is {cfg.model.preset!r}; "
            f"use model=clay_{spec.preset} (its dimensions differ, so it cannot load into another preset)"
        )
    path = cached_path(cfg.weights.cache_dir, spec)
    digest = read_record(path) if path.is_file() else None
    verified = spec.sha256 is not None and digest == spec.sha256
    return EncoderWeights(
        source=spec.name, uri=str(path), sha256=digest or spec.sha256, verified=verified, named=True
    )


def encoder_weights_uri(cfg: Any) -> str | None:
    """The file to load the encoder from (None: random init); a named weight must be fetched.

    Raises:
        WeightsConfigError: see :func:`selected_weights`.
        WeightsNotFetchedError: the named weight is not in the cache, or its record disagrees
            with the pinned digest.
    """
    selected = selected_weights(cfg)
    if selected is None or not selected.named:
        return selected.uri if selected else None
    spec = weight_spec(cfg.weights, selected.source)
    path = Path(selected.uri)
    if not path.is_file():
        raise WeightsNotFetchedError(
            f"model.pretrained={spec.name}: {path} is not there yet; run `landcover weights fetch {spec.name}` "
            f"(about {(spec.bytes or spec.approx_bytes or 0) / 1e9:.2f} GB), or set weights.cache_dir"
        )
    digest = read_record(path) or _record_existing(path)
    if spec.sha256 is not None and digest != spec.sha256:
        raise WeightsNotFetchedError(
            f"{path} has sha256 {digest}, not the pinned {spec.sha256}; run `landcover weights fetch {spec.name}`"
        )
    if spec.sha256 is None:
        _warn_unpinned(spec, path, digest)
    return str(path)


def encoder_weights_record(cfg: Any) -> dict[str, Any]:
    """``encoder_weights`` for the model card: ``{"source": "random-init"}`` or the selected weights."""
    selected = selected_weights(cfg)
    return (
        selected.record()
        if selected
        else {"source": RANDOM_INIT, "uri": None, "sha256": None, "verified": False}
    )


def load_registry_encoder(weights: EncoderWeights) -> dict[str, Any]:
    """The encoder state dict of an encoder registry version, after checking the file's sha256
    against the version's record (a remote file is downloaded to a temporary folder first).

    Raises:
        WeightsNotFetchedError: the file's digest is not the recorded one.
    """
    from training.models.checkpoint import load_encoder_state_dict

    with tempfile.TemporaryDirectory(prefix="encoder-") as tmp:
        local = storage.local_path(weights.uri) or storage.download(
            weights.uri, Path(tmp) / "encoder.safetensors"
        )
        digest = file_digest(Path(local), "sha256")
        if weights.sha256 and digest != weights.sha256:
            raise WeightsNotFetchedError(
                f"{weights.uri} has sha256 {digest}, not the {weights.sha256} its encoder registry record holds; "
                "the version's file was changed after it was registered"
            )
        return load_encoder_state_dict(str(local))


def warn_random_encoder(where: str) -> None:
    """The loud warning that the encoder is randomly initialised (features carry no pretraining)."""
    log.warning(
        "!!! %s: the Clay encoder is RANDOMLY INITIALISED (model.pretrained, model.pretrained_uri and "
        "model.encoder_version are null): its features carry no pretraining. For the official weights run `landcover weights fetch "
        "clay-v1.5` and train with model=clay_large model.pretrained=clay-v1.5.",
        where,
    )


__all__ = [
    "ENCODER_REGISTRY",
    "LATEST",
    "RANDOM_INIT",
    "RECORD_SUFFIX",
    "EncoderWeights",
    "WeightSpec",
    "WeightsConfigError",
    "WeightsNotFetchedError",
    "cached_path",
    "encoder_weights_record",
    "encoder_weights_uri",
    "fetch_weights",
    "is_sha256_hex",
    "load_registry_encoder",
    "pin_encoder_version",
    "read_record",
    "resolve_encoder_version",
    "selected_weights",
    "warn_random_encoder",
    "weight_spec",
]

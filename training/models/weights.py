"""Pretrained encoder weights by name: the catalog in ``setup/conf/weights``, fetching, and
what ``model.pretrained`` resolves to.

``landcover weights fetch clay-v1.5`` downloads the official Clay v1.5 checkpoint into
``weights.cache_dir`` with :func:`fetch_weights` (resumable, through
:func:`training.data.download.fetch`) and writes ``<file>.sha256`` beside it. Training with
``model=clay_large model.pretrained=clay-v1.5`` then loads that file's encoder
(:func:`encoder_weights_uri`). ``model.pretrained_uri`` (an explicit file) stays; setting both is
an error. With neither, the encoder is randomly initialised and :func:`warn_random_encoder` says so.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.model_card import RANDOM_INIT  # the model card renders this source specially
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
    """The encoder weights a model config selects: a catalog name or an explicit file."""

    source: str  #: the catalog name, or the pretrained_uri
    uri: str  #: the file the encoder is loaded from
    sha256: str | None = None  #: recorded digest, when known
    verified: bool = False  #: the digest matched a pinned one
    named: bool = False  #: selected by catalog name (model.pretrained), not by file

    def record(self) -> dict[str, Any]:
        """For the model card and the registry's source (``encoder_weights``)."""
        return {"source": self.source, "uri": self.uri, "sha256": self.sha256, "verified": self.verified}


def selected_weights(cfg: Any) -> EncoderWeights | None:
    """What ``cfg.model.pretrained`` / ``cfg.model.pretrained_uri`` select, from the config alone
    (the file need not exist); None: random init.

    Raises:
        WeightsConfigError: both keys set, an unknown name, or a name whose preset is not
            ``model.preset``.
    """
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


def warn_random_encoder(where: str) -> None:
    """The loud warning that the encoder is randomly initialised (features carry no pretraining)."""
    log.warning(
        "!!! %s: the Clay encoder is RANDOMLY INITIALISED (model.pretrained and model.pretrained_uri are "
        "null): its features carry no pretraining. For the official weights run `landcover weights fetch "
        "clay-v1.5` and train with model=clay_large model.pretrained=clay-v1.5.",
        where,
    )


__all__ = [
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
    "read_record",
    "selected_weights",
    "warn_random_encoder",
    "weight_spec",
]

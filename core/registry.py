"""The S3 model registry: immutable versions, a champion pointer and gated promotion.

Everything is addressed by URI through :mod:`core.storage`, so the same code runs on a
local folder (``file://``), a moto server and S3. No torch here: the inference Lambda imports
the read API (:func:`champion`, :func:`get_version`) without the training stack. File names and
folders come from :mod:`core.artifacts`.

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

Promotion is a compare-and-swap loop on ``champion.json``: read its version tag, then its
content, decide, and write with :func:`storage.put_if_match`; on
:class:`storage.PreconditionFailed` re-read and re-decide. Reading the tag *before* the
content makes a concurrent change between the two reads fail the CAS instead of slipping
through. The pointer only ever moves to a strictly better mIoU, so a "challenger" verdict
stays true however the pointer moves later and needs no CAS.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import secrets
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
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

CHAMPION_ALIAS = "champion"
MANIFEST_SCHEMA = 1

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class RegistryError(RuntimeError):
    """Base class for registry failures."""


class VersionExistsError(RegistryError):
    """The version id is already registered (or claimed by another writer); versions are immutable."""


class VersionNotFoundError(RegistryError, LookupError):
    """No registered version (no manifest) under that id."""


class PromotionConflictError(RegistryError):
    """The champion pointer kept changing underneath us for every retry."""


@dataclass(frozen=True)
class PromotionDecision:
    """The outcome of :func:`promote_if_better`, also stored as one history record.

    ``promoted`` is True when the version is the champion after the call; ``changed`` says
    whether this call moved the pointer (False for the idempotent "already champion" case).
    ``champion_version``/``champion_miou`` are the champion the candidate was compared with.
    """

    promoted: bool
    version: str
    candidate_miou: float
    champion_version: str | None
    champion_miou: float | None
    margin: float
    reason: str
    model_name: str = ""
    changed: bool = False
    decided_at: str = ""
    attempts: int = 1
    #: True when the held-out gate passed but the shadow criteria are not met (yet).
    awaiting_shadow: bool = False
    shadow: dict[str, Any] | None = None  # the shadow evidence the decision saw, if required

    @property
    def outcome(self) -> str:
        """``promoted``, ``already-champion``, ``awaiting-shadow`` or ``challenger``."""
        if not self.promoted:
            return "awaiting-shadow" if self.awaiting_shadow else "challenger"
        return "promoted" if self.changed else "already-champion"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (also what the history record holds)."""
        out = asdict(self)
        out["outcome"] = self.outcome
        out["improvement"] = (
            None if self.champion_miou is None else round(self.candidate_miou - self.champion_miou, 10)
        )
        return out


@dataclass(frozen=True)
class ShadowCriteria:
    """What a candidate must show in shadow on live imagery, on top of the held-out gate.

    ``evidence`` is :func:`inference.ledger.repository.shadow_evidence` of the candidate beside
    the current champion: scenes compared, pixel-weighted agreement and per-class area shift.
    ``min_scenes`` 0 means no shadow requirement (the held-out gate alone decides).
    """

    min_scenes: int = 0
    min_agreement: float = 0.0
    max_area_shift: float = 1.0

    def __post_init__(self) -> None:
        if (
            self.min_scenes < 0
            or not 0.0 <= self.min_agreement <= 1.0
            or not 0.0 <= self.max_area_shift <= 1.0
        ):
            raise ValueError(f"shadow criteria need min_scenes >= 0 and shares in [0, 1], got {self}")

    @property
    def required(self) -> bool:
        return self.min_scenes > 0

    def unmet(self, evidence: Mapping[str, Any] | None, champion_version: str) -> str | None:
        """Why ``evidence`` does not meet the criteria beside ``champion_version``; None when it does."""
        if evidence is None:
            return f"no shadow evidence yet (needs {self.min_scenes} scenes)"
        if evidence.get("champion_version") != champion_version:
            return f"the shadow evidence is beside {evidence.get('champion_version')}, not champion {champion_version}"
        scenes = int(evidence.get("scenes") or 0)
        if scenes < self.min_scenes:
            return f"{scenes} of {self.min_scenes} scenes compared in shadow"
        agreement = evidence.get("agreement")
        if agreement is None or float(agreement) < self.min_agreement:
            return f"shadow agreement {agreement} is below {self.min_agreement}"
        shifts = {k: abs(float(v)) for k, v in (evidence.get("area_shift") or {}).items()}
        worst = max(shifts, key=shifts.__getitem__, default=None)
        if worst is not None and shifts[worst] > self.max_area_shift:
            return f"class {worst!r} area shifts by {shifts[worst]:.4f}, beyond {self.max_area_shift}"
        return None


# ----------------------------------------------------------------------------- helpers


def _now() -> datetime:
    return datetime.now(UTC)


def _iso(moment: datetime) -> str:
    return moment.isoformat(timespec="microseconds").replace("+00:00", "Z")


def _compact(moment: datetime) -> str:
    return moment.strftime("%Y%m%dT%H%M%S%fZ")


def new_version_id(moment: datetime | None = None) -> str:
    """A fresh, time-sortable, collision-resistant version id (see the module docstring)."""
    return f"{_compact(moment or _now())}-{secrets.token_hex(6)}"


def _check_name(value: str, what: str) -> str:
    if not isinstance(value, str) or not _NAME_RE.match(value):
        raise ValueError(
            f"invalid {what} {value!r}: use 1-128 characters from letters, digits, '.', '_' and '-', "
            "starting with a letter or digit"
        )
    return value


def _model_uri(root: str, model_name: str) -> str:
    return artifacts.model_uri(root, _check_name(model_name, "model name"))


def version_uri(root: str, model_name: str, version: str) -> str:
    """URI of the folder of one version (registered or not)."""
    return artifacts.version_uri(
        root, _check_name(model_name, "model name"), _check_name(version, "version id")
    )


def champion_uri(root: str, model_name: str) -> str:
    """URI of the champion pointer object."""
    return artifacts.champion_uri(root, _check_name(model_name, "model name"))


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


def _dumps(obj: Any) -> bytes:
    return (json.dumps(_json_safe(obj), indent=2, sort_keys=True, allow_nan=False) + "\n").encode("utf-8")


def _read_json(uri: str) -> Any:
    text = storage.read_text(uri)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise RegistryError(f"{uri} is not valid JSON ({exc}); inspect or restore that object") from exc


def _validate_miou(metrics: Mapping[str, Any]) -> float:
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
    miou = _validate_miou(metrics)
    if not isinstance(config_yaml, str):
        raise TypeError("config_yaml must be the config as YAML text; use core.config.to_yaml(cfg)")
    created = _now()
    version = _check_name(version, "version id") if version is not None else new_version_id(created)
    prefix = version_uri(root, model_name, version)
    manifest_uri = storage.join(prefix, VERSION_MANIFEST_NAME)
    if storage.exists(manifest_uri):
        raise VersionExistsError(
            f"version {version} of {model_name} is already registered at {prefix}; versions are "
            "immutable, so register under a new version id (omit version= to get a fresh one)"
        )
    claim = {"version": version, "claimed_at": _iso(created), "token": secrets.token_hex(8)}
    try:
        storage.put_if_match(storage.join(prefix, VERSION_CLAIM_NAME), _dumps(claim), None)
    except storage.PreconditionFailed as exc:
        raise VersionExistsError(
            f"version {version} of {model_name} is claimed by another writer ({prefix}/{VERSION_CLAIM_NAME}); "
            "versions are immutable: pick another version id, or delete that folder if the writer "
            f"crashed before writing {VERSION_MANIFEST_NAME}"
        ) from exc

    export_uri = storage.join(prefix, EXPORT_NAME)
    sha256, size = _copy_export(export, export_uri)
    if baseline is None and isinstance(metrics.get("majority_baseline"), Mapping):
        baseline = metrics["majority_baseline"]
    created_at = _iso(created)
    storage.write_text(storage.join(prefix, CONFIG_NAME), config_yaml)
    storage.write_bytes(storage.join(prefix, METRICS_NAME), _dumps(metrics))
    card = render_model_card(
        model_name=model_name,
        version=version,
        created_at=created_at,
        version_uri=prefix,
        metrics=_json_safe(metrics),
        run_id=run_id,
        source=source,
        data_description=data_description,
        baseline=_json_safe(baseline) if baseline else None,
        caveat=caveat,
        intended_use=intended_use,
        class_names=class_names,
        export_sha256=sha256,
        export_bytes=size,
    )
    storage.write_text(storage.join(prefix, CARD_NAME), card)

    manifest = {
        "schema": MANIFEST_SCHEMA,
        "model_name": model_name,
        "version": version,
        "created_at": created_at,
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
        "files": {
            "export": EXPORT_NAME,
            "config": CONFIG_NAME,
            "metrics": METRICS_NAME,
            "model_card": CARD_NAME,
        },
    }
    try:
        storage.put_if_match(manifest_uri, _dumps(manifest), None)
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


# ----------------------------------------------------------------------------- champion


def champion(root: str, model_name: str) -> dict[str, Any] | None:
    """The champion pointer (one small GET), or None when nothing has been promoted yet."""
    try:
        return _read_json(champion_uri(root, model_name))
    except FileNotFoundError:
        return None


def _read_pointer_with_tag(uri: str) -> tuple[dict[str, Any] | None, str | None]:
    # Tag first, content second: a write in between leaves us with a stale tag, so the CAS
    # fails and we retry; the other order could pair old content with a new tag.
    tag = storage.version_tag(uri)
    try:
        pointer = _read_json(uri)
    except FileNotFoundError:
        pointer = None
    return pointer, tag


def _write_history(root: str, model_name: str, decision: PromotionDecision, moment: datetime) -> None:
    prefix = artifacts.history_uri(root, _check_name(model_name, "model name"))
    name = f"{_compact(moment)}-{decision.version}"
    data = _dumps(decision.to_dict())
    for suffix in ("", *(f"-{secrets.token_hex(3)}" for _ in range(3))):
        try:
            storage.put_if_match(storage.join(prefix, f"{name}{suffix}.json"), data, None)
            return
        except storage.PreconditionFailed:
            continue
    raise RegistryError(f"could not write a history record under {prefix}")


def promote_if_better(
    root: str,
    model_name: str,
    version: str,
    margin: float = 0.0,
    *,
    shadow: ShadowCriteria | None = None,
    evidence: Mapping[str, Any] | None = None,
    max_attempts: int = 32,
) -> PromotionDecision:
    """Make ``version`` the champion if its held-out mIoU beats the champion's by more than ``margin``.

    No champion yet means promoted. Otherwise the candidate is recorded as a challenger. With
    ``shadow`` criteria that are required, a candidate that passes the held-out gate is promoted
    only when ``evidence`` (its shadow comparison beside the current champion) meets them;
    otherwise the decision is ``awaiting-shadow``.
    Promoting the current champion again is an idempotent no-op (``promoted=True,
    changed=False``). Every call appends one history record.

    Raises:
        VersionNotFoundError: ``version`` is not registered.
        PromotionConflictError: the pointer changed under every one of ``max_attempts`` tries.
    """
    margin = float(margin)
    if not (math.isfinite(margin) and margin >= 0.0):
        raise ValueError(f"margin must be a finite number >= 0 (an mIoU difference), got {margin!r}")
    if max_attempts < 1:
        raise ValueError(f"max_attempts must be >= 1, got {max_attempts}")
    info = get_version(root, model_name, version)
    candidate = _validate_miou(info["metrics"])
    pointer_uri = champion_uri(root, model_name)

    decision: PromotionDecision | None = None
    for attempt in range(1, max_attempts + 1):
        pointer, tag = _read_pointer_with_tag(pointer_uri)
        moment = _now()
        base = dict(
            version=version,
            candidate_miou=candidate,
            margin=margin,
            model_name=model_name,
            decided_at=_iso(moment),
            attempts=attempt,
            champion_version=None if pointer is None else pointer["version"],
            champion_miou=None if pointer is None else float(pointer["miou"]),
        )
        if pointer is not None and pointer["version"] == version:
            decision = PromotionDecision(
                promoted=True, changed=False, reason=f"{version} is already the champion", **base
            )
            break
        if pointer is not None and not candidate - float(pointer["miou"]) > margin:
            decision = PromotionDecision(
                promoted=False,
                reason=(
                    f"mIoU {candidate:.4f} does not beat champion {pointer['version']} "
                    f"({float(pointer['miou']):.4f}) by more than the margin {margin:.4f}"
                ),
                **base,
            )
            break
        unmet = (
            shadow.unmet(evidence, str(pointer["version"]))
            if pointer is not None and shadow is not None and shadow.required
            else None
        )
        if unmet is not None:
            decision = PromotionDecision(
                promoted=False,
                awaiting_shadow=True,
                shadow=None if evidence is None else dict(evidence),
                reason=(
                    f"mIoU {candidate:.4f} beats champion {pointer['version']} "
                    f"({float(pointer['miou']):.4f}) by more than the margin {margin:.4f}, "
                    f"but the shadow criteria are not met: {unmet}"
                ),
                **base,
            )
            break
        new_pointer = {
            "model_name": model_name,
            "version": version,
            "miou": candidate,
            "promoted_at": _iso(moment),
            "margin": margin,
            "export_uri": info["export_uri"],
            "version_uri": info["uri"],
            "run_id": info.get("run_id"),
            "previous": None if pointer is None else {"version": pointer["version"], "miou": pointer["miou"]},
        }
        try:
            storage.put_if_match(pointer_uri, _dumps(new_pointer), tag)
        except storage.PreconditionFailed:
            time.sleep(random.uniform(0.005, 0.05) * min(attempt, 4))
            continue
        reason = (
            "no champion yet"
            if pointer is None
            else (
                f"mIoU {candidate:.4f} beats champion {pointer['version']} "
                f"({float(pointer['miou']):.4f}) by more than the margin {margin:.4f}"
            )
        )
        if shadow is not None and shadow.required and evidence is not None:
            reason += f", and its shadow evidence meets the criteria ({evidence.get('scenes')} scenes)"
        decision = PromotionDecision(
            promoted=True,
            changed=True,
            reason=reason,
            shadow=None if evidence is None else dict(evidence),
            **base,
        )
        break
    if decision is None:
        raise PromotionConflictError(
            f"the champion pointer {pointer_uri} changed under each of {max_attempts} attempts; "
            "retry the promotion (or raise max_attempts)"
        )
    _write_history(root, model_name, decision, _now())
    return decision


# ----------------------------------------------------------------------------- challenger


def challenger_uri(root: str, model_name: str) -> str:
    """URI of the challenger pointer object."""
    return artifacts.challenger_uri(root, _check_name(model_name, "model name"))


def challenger(root: str, model_name: str) -> dict[str, Any] | None:
    """The challenger pointer, or None when no model predicts in shadow."""
    try:
        return _read_json(challenger_uri(root, model_name))
    except FileNotFoundError:
        return None


def name_challenger(root: str, model_name: str, version: str, reason: str) -> dict[str, Any]:
    """Name registered ``version`` the challenger: the inference chain predicts with it in shadow.

    Raises:
        VersionNotFoundError: ``version`` is not registered.
        RegistryError: ``version`` is the champion (it would shadow itself).
    """
    info = get_version(root, model_name, version)
    current = champion(root, model_name)
    if current is not None and current["version"] == version:
        raise RegistryError(
            f"{version} is the champion of {model_name}; a challenger must be another version"
        )
    pointer = {
        "model_name": model_name,
        "version": version,
        "miou": _validate_miou(info["metrics"]),
        "named_at": _iso(_now()),
        "reason": reason,
        "export_uri": info["export_uri"],
        "version_uri": info["uri"],
    }
    storage.write_bytes(challenger_uri(root, model_name), _dumps(pointer))
    return pointer


def clear_challenger(root: str, model_name: str, version: str | None = None) -> bool:
    """Remove the challenger pointer (only if it names ``version``, when given); True if removed."""
    uri = challenger_uri(root, model_name)
    current = challenger(root, model_name)
    if current is None or (version is not None and current["version"] != version):
        return False
    storage.delete(uri)
    return True


# ----------------------------------------------------------------------------- MLflow


def register_in_mlflow(
    version_info: Mapping[str, Any],
    tracking_uri: str,
    run_id: str | None = None,
    *,
    promoted: bool,
    registered_model_name: str | None = None,
    model_source: str | None = None,
) -> dict[str, Any]:
    """Mirror a registry version into MLflow's model registry; move the ``champion`` alias if promoted.

    Idempotent: the MLflow model version is found again by its ``registry_version`` tag. The
    alias only moves when ``promoted`` and the registry's champion pointer still names this
    version (the S3 pointer is the source of truth; a slower run must not drag the alias back).

    Args:
        version_info: The manifest from :func:`register_version` / :func:`get_version`.
        tracking_uri: MLflow tracking URI (also used as the registry URI).
        run_id: MLflow run that produced the weights; default the manifest's ``run_id``.
        promoted: Whether :func:`promote_if_better` made this version the champion.
        registered_model_name: MLflow model name; default the registry model name.
        model_source: the logged MLflow model a new version points to (``models:/...`` or
            ``runs:/...``, see :func:`training.mlflow_model.log_served_model`), so
            ``mlflow.pyfunc.load_model("models:/<name>@champion")`` works; default the registry
            version folder (a pointer only, not loadable by MLflow).

    Returns:
        ``{"name", "version", "registry_version", "alias_moved"}`` (``version`` is MLflow's).
    """
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    for key in ("model_name", "version", "uri", "export_uri"):
        if key not in version_info:
            raise ValueError(f"version_info lacks {key!r}; pass the manifest from register_version()")
    name = _check_name(registered_model_name or version_info["model_name"], "MLflow model name")
    registry_version = _check_name(version_info["version"], "version id")
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)

    try:
        client.create_registered_model(
            name, description=f"Mirror of the S3 registry model {version_info['model_name']}."
        )
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise

    # Both names were validated against _NAME_RE, so they cannot break out of the quotes.
    found = client.search_model_versions(f"name = '{name}' and tags.registry_version = '{registry_version}'")
    if found:
        model_version = found[0]
    else:
        tags = {
            "registry_version": registry_version,
            "registry_uri": version_info["uri"],
            "export_uri": version_info["export_uri"],
        }
        if version_info.get("miou") is not None:
            tags["miou"] = str(version_info["miou"])
        if version_info.get("export_sha256"):
            tags["export_sha256"] = version_info["export_sha256"]
        model_version = client.create_model_version(
            name=name,
            source=model_source or version_info["uri"],
            run_id=run_id or version_info.get("run_id"),
            tags=tags,
            description=f"Registry version {registry_version} ({version_info['uri']}).",
        )
    client.set_model_version_tag(
        name, model_version.version, "promotion", "champion" if promoted else "challenger"
    )

    alias_moved = False
    if promoted:
        model_uri = version_info.get("model_uri") or version_info["uri"].rsplit("/", 1)[0]
        pointer = champion(model_uri.rsplit("/", 1)[0], version_info["model_name"])
        if pointer is not None and pointer["version"] == registry_version:
            client.set_registered_model_alias(name, CHAMPION_ALIAS, model_version.version)
            alias_moved = True
    return {
        "name": name,
        "version": str(model_version.version),
        "registry_version": registry_version,
        "alias_moved": alias_moved,
    }

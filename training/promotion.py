"""The promotion gate of the model registry, and naming the challenger beside the champion.

:func:`promote_if_better` moves the champion pointer (:mod:`core.registry` stores it) only to a
version whose held-out mIoU beats the champion's by more than a margin and, when
:class:`ShadowCriteria` are required, whose shadow evidence on live imagery meets them. Every
decision is appended as one immutable record under ``<root>/<model_name>/history/``.

Promotion is a compare-and-swap loop on ``champion.json``: read its version tag, then its
content (:func:`core.registry.read_pointer_with_tag`), decide, and write with
:func:`core.registry.write_pointer_if_match`; when another writer moved it in between, re-read
and re-decide. Reading the tag *before* the content makes a concurrent change between the two
reads fail the CAS instead of slipping through. The pointer only ever moves to a strictly better
mIoU, so a "challenger" verdict stays true however the pointer moves later and needs no CAS.
"""

from __future__ import annotations

import math
import random
import secrets
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from core import registry, storage


class PromotionConflictError(registry.RegistryError):
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


# ----------------------------------------------------------------------------- the gate


def _beats_champion(candidate: float, pointer: Mapping[str, Any], margin: float) -> str:
    return (
        f"mIoU {candidate:.4f} beats champion {pointer['version']} "
        f"({float(pointer['miou']):.4f}) by more than the margin {margin:.4f}"
    )


def _comparison(
    model_name: str,
    version: str,
    candidate: float,
    margin: float,
    pointer: Mapping[str, Any] | None,
    attempt: int,
    moment: datetime,
) -> dict[str, Any]:
    """The fields every decision of one attempt shares: the candidate and the champion it met."""
    return dict(
        version=version,
        candidate_miou=candidate,
        margin=margin,
        model_name=model_name,
        decided_at=registry.iso_timestamp(moment),
        attempts=attempt,
        champion_version=None if pointer is None else pointer["version"],
        champion_miou=None if pointer is None else float(pointer["miou"]),
    )


def _held_back(
    comparison: Mapping[str, Any],
    pointer: Mapping[str, Any] | None,
    shadow: ShadowCriteria | None,
    evidence: Mapping[str, Any] | None,
) -> PromotionDecision | None:
    """The decision that leaves the pointer where it is, or None when the candidate takes it."""
    if pointer is None:
        return None
    version, candidate, margin = comparison["version"], comparison["candidate_miou"], comparison["margin"]
    if pointer["version"] == version:
        return PromotionDecision(
            promoted=True, changed=False, reason=f"{version} is already the champion", **comparison
        )
    if not candidate - float(pointer["miou"]) > margin:
        return PromotionDecision(
            promoted=False,
            reason=(
                f"mIoU {candidate:.4f} does not beat champion {pointer['version']} "
                f"({float(pointer['miou']):.4f}) by more than the margin {margin:.4f}"
            ),
            **comparison,
        )
    unmet = (
        shadow.unmet(evidence, str(pointer["version"])) if shadow is not None and shadow.required else None
    )
    if unmet is None:
        return None
    return PromotionDecision(
        promoted=False,
        awaiting_shadow=True,
        shadow=None if evidence is None else dict(evidence),
        reason=f"{_beats_champion(candidate, pointer, margin)}, but the shadow criteria are not met: {unmet}",
        **comparison,
    )


def _champion_pointer(
    info: Mapping[str, Any], comparison: Mapping[str, Any], pointer: Mapping[str, Any] | None
) -> dict[str, Any]:
    """The new ``champion.json`` naming the candidate of ``comparison`` (manifest ``info``)."""
    return {
        "model_name": comparison["model_name"],
        "version": comparison["version"],
        "miou": comparison["candidate_miou"],
        "promoted_at": comparison["decided_at"],
        "margin": comparison["margin"],
        "export_uri": info["export_uri"],
        "version_uri": info["uri"],
        "run_id": info.get("run_id"),
        "previous": None if pointer is None else {"version": pointer["version"], "miou": pointer["miou"]},
    }


def _promoted(
    comparison: Mapping[str, Any],
    pointer: Mapping[str, Any] | None,
    shadow: ShadowCriteria | None,
    evidence: Mapping[str, Any] | None,
) -> PromotionDecision:
    """The decision once the pointer names the candidate."""
    reason = (
        "no champion yet"
        if pointer is None
        else _beats_champion(comparison["candidate_miou"], pointer, comparison["margin"])
    )
    if shadow is not None and shadow.required and evidence is not None:
        reason += f", and its shadow evidence meets the criteria ({evidence.get('scenes')} scenes)"
    return PromotionDecision(
        promoted=True,
        changed=True,
        reason=reason,
        shadow=None if evidence is None else dict(evidence),
        **comparison,
    )


def _write_history(root: str, model_name: str, decision: PromotionDecision, moment: datetime) -> None:
    """Append ``decision`` as a new, never overwritten record (a random suffix on a name clash)."""
    prefix = registry.history_uri(root, model_name)
    name = f"{registry.compact_timestamp(moment)}-{decision.version}"
    data = registry.json_bytes(decision.to_dict())
    for suffix in ("", *(f"-{secrets.token_hex(3)}" for _ in range(3))):
        try:
            storage.put_if_match(storage.join(prefix, f"{name}{suffix}.json"), data, None)
            return
        except storage.PreconditionFailed:
            continue
    raise registry.RegistryError(f"could not write a history record under {prefix}")


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
    info = registry.get_version(root, model_name, version)
    candidate = registry.validate_miou(info["metrics"])
    pointer_uri = registry.champion_uri(root, model_name)

    for attempt in range(1, max_attempts + 1):
        pointer, tag = registry.read_pointer_with_tag(pointer_uri)
        comparison = _comparison(model_name, version, candidate, margin, pointer, attempt, registry.utc_now())
        decision = _held_back(comparison, pointer, shadow, evidence)
        if decision is None:
            if not registry.write_pointer_if_match(
                pointer_uri, _champion_pointer(info, comparison, pointer), tag
            ):
                # Another writer moved the pointer since we read it: back off, re-read, re-decide.
                time.sleep(random.uniform(0.005, 0.05) * min(attempt, 4))
                continue
            decision = _promoted(comparison, pointer, shadow, evidence)
        _write_history(root, model_name, decision, registry.utc_now())
        return decision
    raise PromotionConflictError(
        f"the champion pointer {pointer_uri} changed under each of {max_attempts} attempts; "
        "retry the promotion (or raise max_attempts)"
    )


# ----------------------------------------------------------------------------- challenger


def name_challenger(root: str, model_name: str, version: str, reason: str) -> dict[str, Any]:
    """Name registered ``version`` the challenger: the inference chain predicts with it in shadow.

    Raises:
        VersionNotFoundError: ``version`` is not registered.
        RegistryError: ``version`` is the champion (it would shadow itself).
    """
    info = registry.get_version(root, model_name, version)
    current = registry.champion(root, model_name)
    if current is not None and current["version"] == version:
        raise registry.RegistryError(
            f"{version} is the champion of {model_name}; a challenger must be another version"
        )
    pointer = {
        "model_name": model_name,
        "version": version,
        "miou": registry.validate_miou(info["metrics"]),
        "named_at": registry.iso_timestamp(registry.utc_now()),
        "reason": reason,
        "export_uri": info["export_uri"],
        "version_uri": info["uri"],
    }
    storage.write_bytes(registry.challenger_uri(root, model_name), registry.json_bytes(pointer))
    return pointer


def clear_challenger(root: str, model_name: str, version: str | None = None) -> bool:
    """Remove the challenger pointer (only if it names ``version``, when given); True if removed."""
    uri = registry.challenger_uri(root, model_name)
    current = registry.challenger(root, model_name)
    if current is None or (version is not None and current["version"] != version):
        return False
    storage.delete(uri)
    return True

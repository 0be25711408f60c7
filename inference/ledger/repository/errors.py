"""The ledger's domain errors."""

from __future__ import annotations

from inference.ledger.models import ALLOWED_TRANSITIONS, Scene, SceneStatus, ShadowComparison


class LedgerError(RuntimeError):
    """Base class of the ledger's domain errors."""


class IllegalTransition(LedgerError):
    """A scene status change that :data:`~inference.ledger.models.ALLOWED_TRANSITIONS` forbids."""

    def __init__(self, scene: Scene, current: SceneStatus, requested: SceneStatus) -> None:
        allowed = sorted(s.value for s in ALLOWED_TRANSITIONS[current]) or ["(none)"]
        super().__init__(
            f"scene {scene.id} (sha256 {scene.sha256[:12]}…) cannot go from {current.value!r} to "
            f"{requested.value!r}; allowed from {current.value!r}: {', '.join(allowed)}"
        )
        self.scene_id = scene.id
        self.current = current
        self.requested = requested


class RunNotFound(LedgerError):
    """No run with the given execution id."""


class LeaseHeld(LedgerError):
    """Another live execution holds the scene's prediction lease."""

    def __init__(self, scene: Scene) -> None:
        super().__init__(
            f"scene {scene.id} is being predicted by {scene.lease_owner!r} until {scene.lease_expires_at}"
        )
        self.scene_id = scene.id
        self.owner = scene.lease_owner
        self.expires_at = scene.lease_expires_at


class ShadowLeaseHeld(LeaseHeld):
    """Another live execution holds the lease of a scene's shadow comparison."""

    def __init__(self, row: ShadowComparison) -> None:
        LedgerError.__init__(
            self,
            f"the shadow comparison of scene {row.scene_id} by {row.challenger_version} is held by "
            f"{row.lease_owner!r} until {row.lease_expires_at}",
        )
        self.scene_id = row.scene_id
        self.owner = row.lease_owner
        self.expires_at = row.lease_expires_at

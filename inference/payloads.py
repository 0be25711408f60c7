"""What the state machine hands the chain's steps: the manifest items and the caught error.

State payloads carry ids and URIs only; the manifests of items live in object storage.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel

from inference.ledger.models import Scene


class SceneItem(BaseModel):
    """One scene of a run: what the assembly Map hands each assemble call.

    ``model_version`` is the champion :func:`inference.steps.process.process` planned the run
    with: infer and assemble predict with it and never re-read the pointer, so a promotion
    mid-run cannot mix versions (the next run takes the new champion).
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

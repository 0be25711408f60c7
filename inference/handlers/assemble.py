"""Lambda ``assemble``: build one scene's outputs from its predicted blocks, record its prediction."""

from __future__ import annotations

from typing import Any

from inference import chain
from inference.handlers import InferEvent, cold_start, settings, time_budget

cold_start()


def handler(event: dict[str, Any], context: Any = None) -> dict[str, Any]:
    """``{"execution_id", "item": {"scene_id", "uri", "sha256"}}`` -> ``{"scene_id", "status",
    "class_uri", "model_version", ...}``."""
    parsed = InferEvent.model_validate(event)
    with time_budget(context):
        return chain.assemble(settings(), parsed.execution_id, parsed.item)

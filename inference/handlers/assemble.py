"""Lambda ``assemble``: build one scene's outputs from its predicted blocks, record its prediction
(or, in the shadow pass, the challenger's comparison with it)."""

from __future__ import annotations

from typing import Any

from inference.handlers import InferEvent, cold_start, settings, time_budget
from inference.steps.assemble import assemble

cold_start()


def handler(event: dict[str, Any], context: Any = None) -> dict[str, Any]:
    """``{"execution_id", "item": {"scene_id", "uri", "sha256"}}`` -> ``{"scene_id", "status",
    "class_uri", "model_version", ...}``; with ``"shadow": true, "challenger_version"`` the
    challenger's comparison of that scene."""
    parsed = InferEvent.model_validate(event)
    with time_budget(context):
        if parsed.shadow:
            from inference import shadow

            return shadow.assemble_scene(
                settings(), parsed.execution_id, parsed.item, parsed.challenger_version
            )
        return assemble(settings(), parsed.execution_id, parsed.item)

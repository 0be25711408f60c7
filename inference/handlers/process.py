"""Lambda ``process``: discover, register and validate new scenes; write the run's manifest."""

from __future__ import annotations

from typing import Any

from inference.handlers import ExecutionEvent, cold_start, settings, time_budget
from inference.steps.process import process

cold_start()


def handler(event: dict[str, Any], context: Any = None) -> dict[str, Any]:
    """``{"execution_id"}`` -> ``{"execution_id", "manifest_uri", "manifest_key", "scenes", ...}``."""
    with time_budget(context):
        return process(settings(), ExecutionEvent.model_validate(event).execution_id)

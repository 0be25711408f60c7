"""Lambda ``notify``: the completion notice of an execution (SNS, or a file in embedded mode)."""

from __future__ import annotations

from typing import Any

from inference import notify
from inference.handlers import ExecutionEvent, cold_start, settings, time_budget

cold_start()


class NotifyEvent(ExecutionEvent):
    """``{"execution_id", "outcome", "error"?}``: what the Notify states pass."""

    outcome: str  # one of inference.notify.OUTCOMES (checked there)
    error: Any = None


def handler(event: dict[str, Any], context: Any = None) -> dict[str, Any]:
    """``{"execution_id", "outcome", "error"?}`` -> ``{"execution_id", "channel", "uri", "status", ...}``."""
    parsed = NotifyEvent.model_validate(event)
    with time_budget(context):
        return notify.notify(settings(), parsed.execution_id, parsed.outcome, parsed.error)

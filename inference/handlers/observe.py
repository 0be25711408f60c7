"""Lambda ``observe``: run metrics, drift flags, and closing the run in the ledger."""

from __future__ import annotations

from typing import Any

from inference.handlers import ExecutionEvent, cold_start, settings, time_budget
from inference.steps.observe import observe

cold_start()


def handler(event: dict[str, Any], context: Any = None) -> dict[str, Any]:
    """``{"execution_id"}`` -> ``{"execution_id", "scenes", "failed", "drift", "model_version"}``."""
    with time_budget(context):
        return observe(settings(), ExecutionEvent.model_validate(event).execution_id)

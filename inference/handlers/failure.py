"""Lambda ``failure``: the state machine's Catch path records the failed run in the ledger."""

from __future__ import annotations

from typing import Any

from inference.handlers import FailureEvent, cold_start, settings, time_budget
from inference.steps.failure import record_failure

cold_start()


def handler(event: dict[str, Any], context: Any = None) -> dict[str, Any]:
    """``{"execution_id", "error": {"Error", "Cause"}}`` -> ``{"execution_id", "status", "error"}``."""
    parsed = FailureEvent.model_validate(event)
    with time_budget(context):
        return record_failure(settings(), parsed.execution_id, parsed.error)

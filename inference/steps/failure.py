"""The failure step: the state machine's Catch path records the failed run (see :mod:`inference.steps`)."""

from __future__ import annotations

import logging
from typing import Any

from inference import retry
from inference.ledger import repository
from inference.payloads import error_text
from inference.settings import ChainSettings
from inference.transactions import transaction

log = logging.getLogger(__name__)


def record_failure(
    settings: ChainSettings, execution_id: str, error: dict[str, Any] | None
) -> dict[str, Any]:
    """Mark the run failed with the state machine's error (``{"Error", "Cause"}``)."""
    text = error_text(error or {})[:4000]
    log.error("execution %s failed: %s", execution_id, text)
    try:
        status = transaction(
            settings,
            f"record the failure of {execution_id}",
            lambda s: str(repository.fail_run(s, execution_id, text).status),
        )
    except retry.TransientFaultError as exc:
        # The ledger stayed unreachable: the run stays "running" until its deadline, when the next
        # process closes it as abandoned. Raised to the state machine, which does not retry it (this
        # layer spent the budget on it) and goes on to the notice.
        log.error("could not record the failure of %s in the ledger: %s", execution_id, exc)
        raise
    return {"execution_id": execution_id, "status": status, "error": text}

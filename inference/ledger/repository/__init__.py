"""Ledger operations used by the process / infer / observe steps.

Every write is idempotent, because Step Functions retries, redrives and re-runs: registering
the same bytes twice, recording the same prediction twice, re-running observe or starting the
same execution twice leaves one row each. Upserts use ``INSERT ... ON CONFLICT`` through the
dialect's own ``insert`` (Postgres and SQLite share the syntax). All SQL is built by the ORM or
Core with bound parameters; no value is ever formatted into a SQL string.

Functions take a :class:`~sqlalchemy.orm.Session` and never commit: the caller owns the
transaction (see :func:`inference.ledger.db.session_scope`).

One module per table: :mod:`~inference.ledger.repository.scenes`,
:mod:`~inference.ledger.repository.predictions`, :mod:`~inference.ledger.repository.blocks`,
:mod:`~inference.ledger.repository.shadows`, :mod:`~inference.ledger.repository.runs` and
:mod:`~inference.ledger.repository.metrics`; the domain errors in
:mod:`~inference.ledger.repository.errors`. Callers use this package's names
(``repository.start_run(...)``).
"""

from inference.ledger.repository.blocks import (
    blocks_of,
    blocks_of_run,
    blocks_to_predict,
    claim_block,
    fail_block,
    get_block,
    plan_blocks,
    record_block,
)
from inference.ledger.repository.common import DEFAULT_MAX_ATTEMPTS
from inference.ledger.repository.errors import (
    IllegalTransition,
    LeaseHeld,
    LedgerError,
    RunNotFound,
    ShadowLeaseHeld,
)
from inference.ledger.repository.metrics import metrics_for, record_metrics
from inference.ledger.repository.predictions import prediction_by, predictions_for, record_prediction
from inference.ledger.repository.runs import (
    abandon_stale_runs,
    fail_run,
    finish_run,
    get_run,
    model_changes,
    predicted_by_run,
    predictions_of_run,
    start_run,
    touch_run,
    update_run,
)
from inference.ledger.repository.scenes import (
    claim_for_prediction,
    describe_scene,
    fail,
    fail_attempt,
    known_source,
    quarantine,
    quarantined,
    record_source,
    register_scene,
    scenes_to_predict,
    transition,
)
from inference.ledger.repository.shadows import (
    SHADOW_AGREEMENT,
    SHADOW_AREA_DELTA,
    SHADOW_COST_USD,
    SHADOW_IOU,
    SHADOW_RUN_METRICS,
    SHADOW_SCENES,
    SHADOW_SECONDS,
    claim_shadow,
    fail_shadow,
    get_shadow,
    record_shadow,
    shadow_evidence,
    shadows_of_run,
    unfinished_shadows,
)

__all__ = [
    "DEFAULT_MAX_ATTEMPTS",
    "SHADOW_AGREEMENT",
    "SHADOW_AREA_DELTA",
    "SHADOW_COST_USD",
    "SHADOW_IOU",
    "SHADOW_RUN_METRICS",
    "SHADOW_SCENES",
    "SHADOW_SECONDS",
    "IllegalTransition",
    "LeaseHeld",
    "LedgerError",
    "RunNotFound",
    "ShadowLeaseHeld",
    "abandon_stale_runs",
    "blocks_of",
    "blocks_of_run",
    "blocks_to_predict",
    "claim_block",
    "claim_for_prediction",
    "claim_shadow",
    "describe_scene",
    "fail",
    "fail_attempt",
    "fail_block",
    "fail_run",
    "fail_shadow",
    "finish_run",
    "get_block",
    "get_run",
    "get_shadow",
    "known_source",
    "metrics_for",
    "model_changes",
    "plan_blocks",
    "predicted_by_run",
    "prediction_by",
    "predictions_for",
    "predictions_of_run",
    "quarantine",
    "quarantined",
    "record_block",
    "record_metrics",
    "record_prediction",
    "record_shadow",
    "record_source",
    "register_scene",
    "scenes_to_predict",
    "shadow_evidence",
    "shadows_of_run",
    "start_run",
    "touch_run",
    "transition",
    "unfinished_shadows",
    "update_run",
]

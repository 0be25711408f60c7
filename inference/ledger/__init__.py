"""The inference ledger: every input, prediction, run and metric, on Postgres or SQLite.

- :mod:`inference.ledger.models` — the tables (SQLAlchemy 2 declarative).
- :mod:`inference.ledger.repository` — idempotent operations used by the Lambda steps.
- :mod:`inference.ledger.db` — engines, sessions, and ``migrate``/``downgrade`` (Alembic).

Importing this package builds no engine and opens no connection.
"""

from inference.ledger.db import make_engine, migrate, session_scope
from inference.ledger.models import (
    ALLOWED_TRANSITIONS,
    Metric,
    Prediction,
    Run,
    RunStatus,
    Scene,
    SceneStatus,
)
from inference.ledger.repository import IllegalTransition, LedgerError, RunNotFound

__all__ = [
    "ALLOWED_TRANSITIONS",
    "IllegalTransition",
    "LedgerError",
    "Metric",
    "Prediction",
    "Run",
    "RunNotFound",
    "RunStatus",
    "Scene",
    "SceneStatus",
    "make_engine",
    "migrate",
    "session_scope",
]

"""What the ledger's table modules share: the attempt budget, the dialect's upsert, hash checks."""

from __future__ import annotations

from typing import Any

from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from inference.ledger.models import SHA256_LENGTH
from inference.ledger.repository.errors import LedgerError

#: A scene gets this many prediction attempts before scenes_to_predict stops offering it.
DEFAULT_MAX_ATTEMPTS = 3


def dialect_insert(session: Session) -> Any:
    """The dialect's own ``insert`` construct, which supports ``ON CONFLICT``."""
    name = session.get_bind().dialect.name
    if name == "postgresql":
        return postgresql.insert
    if name == "sqlite":
        return sqlite.insert
    raise LedgerError(f"the ledger supports postgresql and sqlite, not {name!r}")


def check_sha256(sha256: str) -> str:
    value = sha256.lower()
    if len(value) != SHA256_LENGTH or any(c not in "0123456789abcdef" for c in value):
        raise ValueError(f"sha256 must be {SHA256_LENGTH} hex characters, got {sha256!r}")
    return value

"""Run the panels' SQL outside Grafana: Grafana macros become bound parameters.

Grafana expands its macros server-side (``$__timeFilter(col)`` becomes ``col BETWEEN
'2026-01-01T00:00:00Z' AND '...'``). The report and the tests run the same SQL strings through
SQLAlchemy instead, so :func:`render` rewrites each macro into a bound parameter:

=====================  ==========================================
Grafana macro          rendered as
=====================  ==========================================
``$__timeFilter(c)``   ``c BETWEEN :time_from AND :time_to``
``$__timeFrom()``      ``:time_from``
``$__timeTo()``        ``:time_to``
=====================  ==========================================

The parameters are typed with the ledger's :class:`~inference.ledger.models.UTCDateTime`, so
they compare correctly with stored timestamps on both Postgres (``timestamptz``) and SQLite
(UTC text in SQLAlchemy's storage format). Any other ``$__`` macro is an error: the report must
not silently run a query Grafana would run differently.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from inference.ledger.models import UTCDateTime
from observability.panels import Query

_TIME_FILTER = re.compile(r"\$__timeFilter\(\s*([A-Za-z_][A-Za-z0-9_.]*)\s*\)")
_TIME_FROM = re.compile(r"\$__timeFrom\(\s*\)")
_TIME_TO = re.compile(r"\$__timeTo\(\s*\)")
_ANY_MACRO = re.compile(r"\$__\w+")

#: Default report range: everything the ledger holds.
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class UnsupportedMacro(ValueError):
    """The SQL uses a Grafana macro that :func:`render` does not translate."""


def render_text(sql: str) -> str:
    """``sql`` with Grafana's time macros replaced by ``:time_from`` / ``:time_to`` placeholders."""
    out = _TIME_FILTER.sub(r"\1 BETWEEN :time_from AND :time_to", sql)
    out = _TIME_FROM.sub(":time_from", out)
    out = _TIME_TO.sub(":time_to", out)
    leftover = _ANY_MACRO.findall(out)
    if leftover:
        raise UnsupportedMacro(f"untranslated Grafana macro(s) {sorted(set(leftover))} in SQL:\n{sql}")
    return out


def render(sql: str, time_from: datetime, time_to: datetime) -> sa.TextClause:
    """A ready-to-execute statement: macros rewritten, the time range bound (never formatted)."""
    text = render_text(sql)
    stmt = sa.text(text)
    params = {"time_from": time_from, "time_to": time_to}
    used = [name for name in params if f":{name}" in text]
    if used:
        stmt = stmt.bindparams(*(sa.bindparam(name, params[name], type_=UTCDateTime()) for name in used))
    return stmt


@dataclass(frozen=True)
class Result:
    columns: tuple[str, ...]
    rows: list[tuple[Any, ...]]


def run_query(
    conn: sa.Connection,
    query: Query,
    *,
    time_from: datetime = EPOCH,
    time_to: datetime | None = None,
) -> Result:
    """Execute a panel/alert query on ``conn`` in that connection's dialect."""
    time_to = time_to or datetime.now(UTC)
    stmt = render(query.for_dialect(conn.dialect.name), time_from, time_to)
    result = conn.execute(stmt)
    return Result(columns=tuple(result.keys()), rows=[tuple(r) for r in result])


def to_datetime(value: Any) -> datetime | None:
    """A result cell holding a timestamp as an aware UTC datetime (SQLite hands back text)."""
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    parsed = datetime.fromisoformat(str(value))
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)

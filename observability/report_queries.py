"""The report's data: the ledger opened and checked, every panel, alert and annotation query run
(the Grafana panels' own SQL, bound by :mod:`observability.sql`), and the latest quicklooks."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import sqlalchemy as sa

from observability import panels as P
from observability.sql import Result, run_query, to_datetime


class ReportError(RuntimeError):
    """The report cannot be built (no ledger, not migrated...)."""


@dataclass
class PanelResult:
    panel: P.Panel
    result: Result | None
    error: str | None = None


@dataclass
class AlertState:
    rule: P.AlertRule
    value: float | None
    firing: bool
    error: str | None = None


def open_ledger(url: str) -> sa.Engine:
    """An engine on the ledger at ``url``, after checking it exists and is migrated."""
    from inference.ledger.db import make_engine, redact_url

    parsed = sa.make_url(url)
    is_file = parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:")
    if is_file and not Path(parsed.database).exists():
        # Connecting would silently create an empty database file.
        raise ReportError(
            f"no ledger at {parsed.database}: run `make run_inference` first "
            "(or pass --ledger-url / set LEDGER_URL)"
        )
    engine = make_engine(url)
    try:
        tables = set(sa.inspect(engine).get_table_names())
    except sa.exc.SQLAlchemyError as exc:
        engine.dispose()
        raise ReportError(f"cannot open the ledger {redact_url(url)}: {exc}") from exc
    missing = {"scenes", "runs", "metrics", "predictions"} - tables
    if missing:
        engine.dispose()
        raise ReportError(
            f"the ledger {redact_url(url)} has no {sorted(missing)} table(s): it was never migrated "
            "(inference.ledger.db.migrate) or is not a ledger"
        )
    return engine


def collect(
    engine: sa.Engine,
    time_from: datetime,
    time_to: datetime,
    drift_threshold: float,
    *,
    now: datetime | None = None,
) -> tuple[list[PanelResult], list[AlertState], list[tuple[datetime, str]]]:
    """Run every panel, alert and annotation query. Alerts look back from ``now`` over their
    own window, as Grafana evaluates them."""
    results: list[PanelResult] = []
    with engine.connect() as conn:
        for panel in P.panels(drift_threshold):
            try:
                results.append(
                    PanelResult(panel, run_query(conn, panel.query, time_from=time_from, time_to=time_to))
                )
            except sa.exc.SQLAlchemyError as exc:
                conn.rollback()
                results.append(PanelResult(panel, None, error=str(exc.orig if hasattr(exc, "orig") else exc)))
        alerts = []
        alert_to = now or datetime.now(UTC)
        for rule in P.alert_rules(drift_threshold):
            try:
                res = run_query(
                    conn, rule.query, time_from=alert_to - timedelta(seconds=rule.window_s), time_to=alert_to
                )
                value = res.rows[0][0] if res.rows else None
                value = None if value is None else float(value)
                firing = value is not None and (
                    value > rule.threshold if rule.op == "gt" else value < rule.threshold
                )
                if value is None and rule.no_data_state == "Alerting":
                    firing = True
                alerts.append(AlertState(rule, value, firing))
            except sa.exc.SQLAlchemyError as exc:
                conn.rollback()
                alerts.append(AlertState(rule, None, False, error=str(exc)))
        notes = run_query(conn, P.MODEL_CHANGES_SQL, time_from=time_from, time_to=time_to)
        annotations = [(to_datetime(row[0]), str(row[1])) for row in notes.rows]
    return results, alerts, annotations


#: Quicklooks shown at the top of the report: the latest predicted scenes.
QUICKLOOKS = 6


@dataclass
class Quicklook:
    """The newest prediction of a scene, with its quicklook PNG (None when unreadable)."""

    scene: str
    model_version: str
    finished_at: datetime
    png: bytes | None
    note: str = ""


def latest_quicklooks(
    engine: sa.Engine, time_from: datetime, time_to: datetime, limit: int = QUICKLOOKS
) -> list[Quicklook]:
    """The ``limit`` most recent predictions in range and their quicklooks, found through each
    prediction's STAC item (its ``thumbnail`` asset). A missing item or picture is noted, not fatal:
    the report still describes the ledger."""
    import json

    from core import storage
    from inference.ledger.models import Prediction, Scene

    query = (
        sa.select(Prediction.stac_uri, Prediction.model_version, Prediction.finished_at, Scene.source_uri)
        .join(Scene, Scene.id == Prediction.scene_id)
        .where(
            Prediction.finished_at >= time_from,
            Prediction.finished_at <= time_to,
        )
        .order_by(Prediction.finished_at.desc(), Prediction.id.desc())
        .limit(limit)
    )
    with engine.connect() as conn:
        rows = conn.execute(query).all()
    found = []
    for stac_uri, version, finished, source in rows:
        png, note = None, ""
        try:
            if not stac_uri:
                raise FileNotFoundError("no STAC item recorded")
            thumbnail = json.loads(storage.read_text(stac_uri)).get("assets", {}).get("thumbnail")
            if not thumbnail:
                raise FileNotFoundError("its STAC item has no thumbnail asset")
            png = storage.read_bytes(thumbnail["href"])
        except (OSError, ValueError, KeyError) as exc:
            note = f"no quicklook ({type(exc).__name__}: {exc})"
        found.append(
            Quicklook(str(source).rsplit("/", 1)[-1], str(version), to_datetime(finished), png, note)
        )
    return found

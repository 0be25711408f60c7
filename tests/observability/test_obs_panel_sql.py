"""Every panel, annotation and alert query runs on a seeded ledger, on Postgres and on SQLite,
and returns the columns its panel expects."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from inference.ledger.db import make_engine
from observability import panels as P
from observability.report_queries import collect
from observability.sql import EPOCH, UnsupportedMacro, render_text, run_query, to_datetime
from tests.observability.seed import seed_ledger

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
THRESHOLD = 0.2


def _check_panel(panel: P.Panel, result) -> list[str]:
    problems = []
    if result.columns != panel.columns:
        problems.append(f"{panel.key}: columns {result.columns} != expected {panel.columns}")
        return problems
    if not result.rows:
        problems.append(f"{panel.key}: no rows on the seeded ledger")
        return problems
    if panel.kind == "timeseries":
        times = [to_datetime(r[0]) for r in result.rows]
        if times != sorted(times):
            problems.append(f"{panel.key}: not ordered by time (Grafana needs ascending time)")
        for row in result.rows:
            if (
                not isinstance(row[1], str)
                or not isinstance(row[2], int | float)
                or not math.isfinite(row[2])
            ):
                problems.append(f"{panel.key}: bad row {row!r} (want time, str metric, finite number)")
                break
    if panel.kind == "stat" and (len(result.rows) != 1 or not isinstance(result.rows[0][0], int | float)):
        problems.append(f"{panel.key}: a stat must return one numeric row, got {result.rows!r}")
    return problems


@pytest.fixture
def seeded(postgres_url, tmp_path):
    """The same ledger seeded twice: on Postgres (Grafana's datasource) and SQLite (embedded)."""
    sqlite_url = f"sqlite:///{tmp_path / 'ledger.db'}"
    return {url: seed_ledger(url, now=NOW) for url in (postgres_url, sqlite_url)}


def test_every_panel_query_runs_on_both_ledgers(seeded):
    """One seeding (the slow part), every check: columns and values, the time filter, and
    Postgres/SQLite agreement."""
    for ledger_url, seed in seeded.items():
        _check_ledger(ledger_url, seed)
        _check_time_filter(ledger_url)
    _check_dialects_agree(list(seeded))


def _check_ledger(ledger_url, seeded):
    engine = make_engine(ledger_url)
    try:
        with engine.connect() as conn:
            problems = []
            results = {}
            for panel in P.panels(THRESHOLD):
                result = run_query(conn, panel.query, time_to=NOW + timedelta(hours=1))
                results[panel.key] = result
                problems += _check_panel(panel, result)
            assert not problems, "\n".join(problems)

            # A few exact values the seed pins down.
            assert results["backlog"].rows == [(seeded.backlog,)]
            assert dict(results["quarantine_reasons"].rows) == seeded.quarantined
            assert dict(results["backlog_by_status"].rows) == {"discovered": 1, "failed": 1, "validated": 1}
            assert results["failure_rate"].rows[0][0] == pytest.approx(40.0)  # one failed, one abandoned of 5
            class_area = {r[1] for r in results["class_area"].rows}
            assert {"Water", "Water (reference)"} <= class_area
            assert {r[1] for r in results["run_duration"].rows} == {"succeeded", "failed", "abandoned"}
            assert ("run abandoned", 1.0) in {(r[1], r[2]) for r in results["run_outcomes"].rows}
            assert any(r[-1] and "timed out" in r[-1] for r in results["recent_runs"].rows)

            notes = run_query(conn, P.MODEL_CHANGES_SQL, time_to=NOW)
            assert notes.columns == P.MODEL_CHANGES_COLUMNS
            assert [r[1] for r in notes.rows] == ["champion v1 (first)", "champion v2 (was v1)"]

            alerts = {rule.uid: run_query(conn, rule.query, time_to=NOW) for rule in P.alert_rules(THRESHOLD)}
            for uid, res in alerts.items():
                assert res.columns == ("value",), uid
                assert len(res.rows) == 1, uid
            assert alerts["landcover-drift"].rows[0][0] > THRESHOLD  # the seed's v2 run drifts
            assert alerts["landcover-failure-rate"].rows[0][0] == pytest.approx(40.0)
            since = alerts["landcover-no-success"].rows[0][0]
            last_success = NOW - timedelta(days=1)
            assert since >= (datetime.now(UTC) - last_success).total_seconds() - 600
        # The report's collector runs the same queries without error (charts are tested elsewhere).
        results, alert_states, annotations = collect(
            engine, EPOCH, NOW + timedelta(hours=1), THRESHOLD, now=NOW + timedelta(hours=1)
        )
        assert [r.panel.key for r in results if r.error] == []
        assert [a.rule.uid for a in alert_states if a.error] == []
        firing = {a.rule.uid for a in alert_states if a.firing}
        stale = datetime.now(UTC) - (NOW - timedelta(days=1)) > timedelta(hours=P.NO_SUCCESS_HOURS, minutes=5)
        assert firing == {"landcover-drift"} | ({"landcover-no-success"} if stale else set())
        assert len(annotations) == 2
    finally:
        engine.dispose()


def _check_time_filter(ledger_url):
    engine = make_engine(ledger_url)
    try:
        with engine.connect() as conn:
            panel = next(p for p in P.panels(THRESHOLD) if p.key == "throughput")
            everything = run_query(conn, panel.query, time_to=NOW)
            recent = run_query(conn, panel.query, time_from=NOW - timedelta(days=1, hours=1), time_to=NOW)
            nothing = run_query(
                conn, panel.query, time_from=NOW + timedelta(days=1), time_to=NOW + timedelta(days=2)
            )
        assert len(everything.rows) == 3  # the three runs with metrics
        assert len(recent.rows) == 1
        assert to_datetime(recent.rows[0][0]) == NOW - timedelta(days=1)
        assert nothing.rows == []
    finally:
        engine.dispose()


def _check_dialects_agree(urls):
    """The same SQL gives the same numbers on both ledgers (the report and Grafana agree)."""
    out = {}
    for url in urls:
        engine = make_engine(url)
        with engine.connect() as conn:
            out[url] = {
                # sorted: string order within one timestamp follows each database's collation
                p.key: sorted(
                    tuple(round(v, 6) if isinstance(v, float) else v for v in row[1:])
                    for row in run_query(conn, p.query, time_to=NOW).rows
                )
                for p in P.panels(THRESHOLD)
                if p.kind in ("timeseries", "barchart") and p.key != "run_duration"
            }
        engine.dispose()
    postgres_out, sqlite_out = out.values()
    assert postgres_out == sqlite_out


def test_macros_render_to_bind_parameters():
    text = render_text("SELECT 1 FROM runs r WHERE $__timeFilter(r.started_at) AND x < $__timeTo()")
    assert text == "SELECT 1 FROM runs r WHERE r.started_at BETWEEN :time_from AND :time_to AND x < :time_to"
    with pytest.raises(UnsupportedMacro, match=r"\$__timeGroup"):
        render_text("SELECT $__timeGroup(t, '1h') FROM runs")
    for panel in P.panels():
        for dialect in P.DIALECTS:
            rendered = render_text(panel.query.for_dialect(dialect))
            assert "$__" not in rendered
            # Values are bound, never formatted: the only parameters are the time range.
            params = set(sa.text(rendered).compile().params)
            assert params <= {"time_from", "time_to"}, (panel.key, params)

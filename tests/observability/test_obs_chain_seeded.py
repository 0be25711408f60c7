"""Every panel's SQL against a Postgres ledger seeded by the real handlers (process → infer →
observe, and the failure handler), on a tiny champion and small synthetic scenes."""

from __future__ import annotations

import math

import pytest

from inference.ledger.db import make_engine
from observability import panels as P
from observability.sql import run_query

#: Run-level metric names the observe step must write for the panels to be complete.
RUN_LEVEL = set(P.METRIC_NAMES)


@pytest.mark.slow
def test_every_panel_on_a_ledger_written_by_the_real_chain(postgres_url, tmp_uri):
    from tests.observability.seed import seed_with_chain

    predicted = seed_with_chain(postgres_url, tmp_uri)
    assert predicted == {"chain-001": 2, "chain-002": 1}
    engine = make_engine(postgres_url)
    try:
        with engine.connect() as conn:
            names = {
                r[0] for r in conn.exec_driver_sql("SELECT DISTINCT name FROM metrics WHERE scene_id IS NULL")
            }
            missing = RUN_LEVEL - names  # asserted last, so the panel checks below still run
            problems = []
            for panel in P.panels(0.2):
                result = run_query(conn, panel.query)
                if result.columns != panel.columns:
                    problems.append(f"{panel.key}: columns {result.columns} != {panel.columns}")
                elif not result.rows:
                    problems.append(f"{panel.key}: no rows")
                elif panel.kind == "timeseries" and not all(
                    isinstance(r[2], float | int) and math.isfinite(r[2]) for r in result.rows
                ):
                    problems.append(f"{panel.key}: non-finite values")
            assert not problems, "\n".join(problems)
            by_key = {p.key: run_query(conn, p.query) for p in P.panels(0.2)}
            assert by_key["backlog"].rows == [(1,)]  # scene d: discovered by the failed run
            assert dict(by_key["quarantine_reasons"].rows) == {"band_count": 1}
            assert {r[1] for r in by_key["run_duration"].rows} == {"succeeded", "failed"}
            notes = run_query(conn, P.MODEL_CHANGES_SQL)
            assert len(notes.rows) == 2  # v1 first, then the promoted v2
            for rule in P.alert_rules(0.2):
                result = run_query(conn, rule.query)
                assert result.columns == ("value",) and len(result.rows) == 1, rule.uid
            assert not missing, f"observe does not write the run-level metric(s) {sorted(missing)}"
            assert any(r[1].endswith("(reference)") for r in by_key["class_area"].rows)
            assert any(r[1].endswith("(reference)") for r in by_key["class_share"].rows)
    finally:
        engine.dispose()

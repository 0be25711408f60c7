"""A static, self-contained HTML report of the ledger, built from the Grafana panels' own SQL.

    python -m observability.report [--ledger-url URL] [--out outputs/report.html] [--days N]

Every panel of :mod:`observability.panels` is executed (in the ledger's dialect, Grafana macros
bound by :mod:`observability.sql`; :mod:`observability.report_queries`) and drawn with matplotlib
(:mod:`observability.report_charts`) into one page (:mod:`observability.report_html`). Charts are SVG embedded as
``data:`` URIs, styles are inline and the only script is a few inline lines that check the
charts decoded: the file opens from disk with no server and no network. The alert rules are
evaluated on the same data and shown at the top.

The default ledger is the Hydra ``inference.ledger_url`` (``$LEDGER_URL``, else the embedded
SQLite ``outputs/inference/ledger.db`` that ``make run_inference`` writes). The default time
range is the whole ledger; ``--days`` narrows it like Grafana's time picker.
"""

from __future__ import annotations

import argparse
import math
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from observability import panels as P
from observability.report_html import render_html
from observability.report_queries import ReportError, collect, latest_quicklooks, open_ledger
from observability.sql import EPOCH


def build_report(
    ledger_url: str,
    out: Path,
    *,
    time_from: datetime = EPOCH,
    time_to: datetime | None = None,
    drift_threshold: float | None = None,
) -> Path:
    from inference.ledger.db import redact_url

    time_to = time_to or datetime.now(UTC)
    threshold = P.default_drift_threshold() if drift_threshold is None else drift_threshold
    engine = open_ledger(ledger_url)
    try:
        results, alerts, annotations = collect(engine, time_from, time_to, threshold)
        quicklooks = latest_quicklooks(engine, time_from, time_to)
        dialect = engine.dialect.name
    finally:
        engine.dispose()
    page = render_html(
        results, alerts, annotations, ledger=redact_url(ledger_url), dialect=dialect,
        time_from=time_from, time_to=time_to, generated_at=datetime.now(UTC), quicklooks=quicklooks,
    )  # fmt: skip
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(out)
    return out


def _default_ledger_url() -> str:
    from core.config import compose

    return str(compose().inference.ledger_url)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write the static HTML ledger report (same SQL as Grafana).")
    parser.add_argument("--ledger-url", help="SQLAlchemy URL (default: Hydra inference.ledger_url)")
    parser.add_argument("--out", type=Path, default=Path("outputs/report.html"))
    parser.add_argument("--days", type=float, help="only the last N days (default: the whole ledger)")
    args = parser.parse_args(argv)
    url = args.ledger_url or _default_ledger_url()
    now = datetime.now(UTC)
    time_from = now - timedelta(days=args.days) if args.days else EPOCH
    if args.days is not None and (math.isnan(args.days) or args.days <= 0):
        parser.error("--days must be > 0")
    try:
        path = build_report(url, args.out, time_from=time_from, time_to=now)
    except ReportError as exc:
        print(f"report: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {path} (open it from disk: file://{path.resolve()})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

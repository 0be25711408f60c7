"""The report page: one self-contained HTML document (inline styles, charts as ``data:`` URIs,
a few inline lines of script that check the charts decoded)."""

from __future__ import annotations

import base64
import html
from datetime import datetime

from observability import panels as P
from observability.report_charts import bar_chart, timeseries_chart
from observability.report_format import format_cell, format_value
from observability.report_queries import AlertState, PanelResult, Quicklook
from observability.sql import EPOCH, Result

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;margin:0;background:#f4f5f7;color:#1d2330}
header{background:#1d2330;color:#fff;padding:16px 24px}
header h1{margin:0 0 4px;font-size:20px}
header p{margin:2px 0;font-size:12px;color:#c7ccd6}
main{padding:16px 24px;display:flex;flex-wrap:wrap;gap:14px}
section{background:#fff;border-radius:6px;box-shadow:0 1px 2px rgba(0,0,0,.08);padding:12px 14px;box-sizing:border-box}
section h2{font-size:14px;margin:0 0 4px}
section p.desc{font-size:11px;color:#5b6475;margin:0 0 8px}
.w6{flex:0 0 calc(25% - 11px)}.w4{flex:0 0 calc(16.66% - 12px)}.w8{flex:0 0 calc(33.33% - 10px)}
.w12{flex:0 0 calc(50% - 7px)}.w16{flex:0 0 calc(66.66% - 5px)}.w24{flex:0 0 100%}
.stat{font-size:28px;font-weight:600;padding:6px 0}
.stat.red{color:#c62828}.stat.green{color:#2e7d32}
img.chart{max-width:100%;height:auto;display:block}
.quicklooks{display:flex;flex-wrap:wrap;gap:10px}
figure.quicklook{margin:0;flex:0 0 calc(50% - 5px)}
figure.quicklook img{width:100%;height:auto;display:block;border:1px solid #e3e6eb}
figure.quicklook figcaption{font-size:11px;color:#5b6475;padding-top:3px}
table{border-collapse:collapse;font-size:11px;width:100%}
th,td{border-bottom:1px solid #e3e6eb;padding:3px 6px;text-align:left;vertical-align:top}
th{background:#f0f2f5}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.nodata{color:#8a93a3;font-style:italic;padding:24px 0;text-align:center}
.error{color:#c62828;font-family:monospace;font-size:11px;white-space:pre-wrap}
details{font-size:11px;margin-top:6px}
pre{background:#f6f8fa;padding:6px;overflow-x:auto;font-size:10.5px}
.alerts{flex:0 0 100%}
.badge{display:inline-block;border-radius:3px;padding:1px 8px;font-weight:600;font-size:11px;color:#fff}
.badge.firing{background:#c62828}.badge.ok{background:#2e7d32}.badge.err{background:#8a6d00}
#charts-status{font-size:11px;color:#c7ccd6}
"""

SCRIPT = """
(function () {
  function check() {
    var imgs = document.querySelectorAll('img.chart');
    var ok = 0;
    imgs.forEach(function (img) { if (img.complete && img.naturalWidth > 0) { ok++; } });
    document.body.setAttribute('data-charts-total', String(imgs.length));
    document.body.setAttribute('data-charts-rendered', String(ok));
    var looks = document.querySelectorAll('img.quicklook');
    var shown = 0;
    looks.forEach(function (img) { if (img.complete && img.naturalWidth > 0) { shown++; } });
    document.body.setAttribute('data-quicklooks-total', String(looks.length));
    document.body.setAttribute('data-quicklooks-rendered', String(shown));
    document.getElementById('charts-status').textContent = ok + ' of ' + imgs.length + ' charts rendered';
  }
  if (document.readyState === 'complete') { check(); } else { window.addEventListener('load', check); }
})();
"""


def _sql_details(panel_or_rule: P.Panel | P.AlertRule, dialect: str) -> str:
    return (
        f"<details><summary>SQL ({html.escape(dialect)}; the Grafana panel runs the postgresql variant)</summary>"
        f"<pre>{html.escape(panel_or_rule.query.for_dialect(dialect))}</pre></details>"
    )


def _table_html(result: Result) -> str:
    if not result.rows:
        return '<div class="nodata">No data in range</div>'
    head = "".join(f"<th>{html.escape(c)}</th>" for c in result.columns)
    body = []
    for row in result.rows:
        cells = []
        for v in row:
            cls = ' class="num"' if isinstance(v, int | float) and not isinstance(v, bool) else ""
            cells.append(f"<td{cls}>{html.escape(format_cell(v))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _panel_html(pr: PanelResult, annotations: list[tuple[datetime, str]], dialect: str) -> str:
    panel = pr.panel
    parts = [
        f'<section class="w{panel.width}" id="panel-{panel.key}" data-panel="{panel.key}" data-kind="{panel.kind}">',
        f"<h2>{html.escape(panel.title)}</h2>",
        f'<p class="desc">{html.escape(panel.description)}</p>',
    ]
    if pr.error is not None or pr.result is None:
        parts.append(f'<div class="error">query failed: {html.escape(pr.error or "")}</div>')
    elif panel.kind == "stat":
        value = pr.result.rows[0][0] if pr.result.rows else None
        cls = ""
        if panel.threshold is not None and value is not None:
            cls = " red" if float(value) > panel.threshold else " green"
        parts.append(
            f'<div class="stat{cls}">{html.escape(format_value(value, panel.unit, panel.decimals))}</div>'
        )
    elif panel.kind == "table":
        parts.append(_table_html(pr.result))
    else:
        uri = (
            timeseries_chart(panel, pr.result, annotations)
            if panel.kind == "timeseries"
            else bar_chart(panel, pr.result)
        )
        if uri is None:
            parts.append('<div class="nodata">No data in range</div>')
        else:
            parts.append(f'<img class="chart" alt="{html.escape(panel.title)}" src="{uri}">')
    parts.append(_sql_details(panel, dialect))
    parts.append("</section>")
    return "\n".join(parts)


def _quicklooks_html(quicklooks: list[Quicklook]) -> str:
    if not quicklooks:
        body = '<div class="nodata">No predictions in range</div>'
    else:
        figures = []
        for q in quicklooks:
            caption = f"{html.escape(q.scene)} · model {html.escape(q.model_version)} · {html.escape(format_cell(q.finished_at))}"
            if q.png is None:
                figures.append(
                    f'<figure class="quicklook"><div class="nodata">{html.escape(q.note)}</div>'
                    f"<figcaption>{caption}</figcaption></figure>"
                )
                continue
            src = "data:image/png;base64," + base64.b64encode(q.png).decode("ascii")
            figures.append(
                f'<figure class="quicklook"><img class="quicklook" alt="quicklook of {html.escape(q.scene)}" '
                f'src="{src}"><figcaption>{caption}</figcaption></figure>'
            )
        body = f'<div class="quicklooks">{"".join(figures)}</div>'
    return (
        '<section class="w24" id="quicklooks" data-panel="quicklooks"><h2>Latest scenes</h2>'
        '<p class="desc">The newest predictions: NAIP RGB beside the predicted classes, in the class '
        "table's colours (each scene's STAC thumbnail).</p>"
        f"{body}</section>"
    )


def _alerts_html(alerts: list[AlertState], dialect: str) -> str:
    rows = []
    for a in alerts:
        if a.error:
            badge, value = '<span class="badge err">ERROR</span>', html.escape(a.error)
        else:
            badge = (
                '<span class="badge firing">FIRING</span>' if a.firing else '<span class="badge ok">OK</span>'
            )
            panel_unit = {"landcover-no-success": "s", "landcover-failure-rate": "percent"}.get(
                a.rule.uid, "short"
            )
            value = html.escape(format_value(a.value, panel_unit))
        threshold = format_value(
            a.rule.threshold,
            {"landcover-no-success": "s", "landcover-failure-rate": "percent"}.get(a.rule.uid, "short"),
        )
        rows.append(
            f"<tr><td>{badge}</td><td>{html.escape(a.rule.title)}</td><td>{value}</td>"
            f"<td>{html.escape(a.rule.op)} {html.escape(threshold)}</td><td>{html.escape(a.rule.summary)}</td></tr>"
        )
    return (
        '<section class="alerts w24" id="alerts"><h2>Alert rules (evaluated now, same SQL as Grafana)</h2>'
        "<table><thead><tr><th>state</th><th>rule</th><th>value</th><th>condition</th><th>meaning</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table></section>"
    )


def render_html(
    results: list[PanelResult],
    alerts: list[AlertState],
    annotations: list[tuple[datetime, str]],
    *,
    ledger: str,
    dialect: str,
    time_from: datetime,
    time_to: datetime,
    generated_at: datetime,
    quicklooks: list[Quicklook] | None = None,
) -> str:
    rng = f"{'beginning' if time_from <= EPOCH else format_cell(time_from)} → {format_cell(time_to)}"
    changes = ", ".join(f"{html.escape(t)} at {format_cell(w)}" for w, t in annotations) or "none in range"
    body = "\n".join(_panel_html(pr, annotations, dialect) for pr in results)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(P.DASHBOARD_TITLE)}: ledger report</title>
<style>{CSS}</style></head>
<body>
<header><h1>{html.escape(P.DASHBOARD_TITLE)}</h1>
<p>Ledger: {html.escape(ledger)} ({html.escape(dialect)}) · range: {html.escape(rng)} · generated {html.escape(format_cell(generated_at))}</p>
<p>Champion model changes (purple lines): {changes}</p>
<p id="charts-status">charts not checked (scripts disabled)</p></header>
<main>
{_alerts_html(alerts, dialect)}
{_quicklooks_html(quicklooks or [])}
{body}
</main>
<script>{SCRIPT}</script>
</body></html>
"""

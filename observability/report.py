"""A static, self-contained HTML report of the ledger, built from the Grafana panels' own SQL.

    python -m observability.report [--ledger-url URL] [--out outputs/report.html] [--days N]

Every panel of :mod:`observability.panels` is executed (in the ledger's dialect, Grafana macros
bound by :mod:`observability.sql`) and drawn with matplotlib. Charts are SVG embedded as
``data:`` URIs, styles are inline and the only script is a few inline lines that check the
charts decoded: the file opens from disk with no server and no network. The alert rules are
evaluated on the same data and shown at the top.

The default ledger is the Hydra ``inference.ledger_url`` (``$LEDGER_URL``, else the embedded
SQLite ``outputs/inference/ledger.db`` that ``make run_inference`` writes). The default time
range is the whole ledger; ``--days`` narrows it like Grafana's time picker.
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import itertools
import math
import re
import sys
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from observability import panels as P
from observability.sql import EPOCH, Result, run_query, to_datetime


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


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------


def _check_ledger(url: str) -> sa.Engine:
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


# ---------------------------------------------------------------------------------------------
# Formatting
# ---------------------------------------------------------------------------------------------


def format_value(value: Any, unit: str, decimals: int | None = None) -> str:
    if value is None:
        return "no data"
    value = float(value)
    if unit == "s":
        if value < 120:
            return f"{value:.0f} s"
        if value < 2 * 3600:
            return f"{value / 60:.1f} min"
        if value < 3 * 86400:
            return f"{value / 3600:.1f} h"
        return f"{value / 86400:.1f} d"
    if unit == "percent":
        return f"{value:.{1 if decimals is None else decimals}f} %"
    if unit == "percentunit":
        return f"{100 * value:.1f} %"
    if unit == "currencyUSD":
        return f"${value:,.{4 if decimals is None else decimals}f}"
    if unit == "km²":
        return f"{value:,.{2 if decimals is None else decimals}f} km²"
    if value == int(value) and abs(value) < 1e15:
        return f"{int(value):,}"
    return f"{value:,.{3 if decimals is None else decimals}f}"


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:,.1f}" if abs(value) >= 100 else f"{value:.3g}"
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    text = str(value)
    # SQLite hands timestamps back as text
    if len(text) >= 19 and text[4] == "-" and text[10] in " T" and text[13] == ":":
        try:
            return _cell(to_datetime(text))
        except ValueError:
            pass
    return text


# ---------------------------------------------------------------------------------------------
# Charts (matplotlib → SVG data: URIs)
# ---------------------------------------------------------------------------------------------


def _matplotlib():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    plt.rcParams.update(
        {
            "svg.fonttype": "none",  # text as <text>: small, fast; any sans-serif font displays it
            "svg.hashsalt": "landcover-report",  # deterministic ids
            "font.size": 9,
            "axes.spines.top": False,
            "axes.spines.right": False,
            "axes.grid": True,
            "grid.alpha": 0.3,
        }
    )
    return plt, mdates


def _class_colors() -> dict[str, str]:
    try:
        from core.classes import CLASSES

        return {c.name: "#{:02x}{:02x}{:02x}".format(*c.color[:3]) for c in CLASSES}
    except Exception:  # pragma: no cover
        return {}


def _svg_uri(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})
    return "data:image/svg+xml;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _series(result: Result) -> OrderedDict[str, tuple[list[datetime], list[float]]]:
    """Long (time, metric, value) or wide (time, v1, v2...) rows → {name: (times, values)}."""
    cols = list(result.columns)
    ti = cols.index("time")
    series: OrderedDict[str, tuple[list[datetime], list[float]]] = OrderedDict()
    if "metric" in cols:
        mi, vi = cols.index("metric"), cols.index("value")
        for row in result.rows:
            if row[vi] is None:
                continue
            times, values = series.setdefault(str(row[mi]), ([], []))
            times.append(to_datetime(row[ti]))
            values.append(float(row[vi]))
    else:
        for j, name in enumerate(cols):
            if j == ti:
                continue
            times, values = series.setdefault(name, ([], []))
            for row in result.rows:
                if row[j] is not None:
                    times.append(to_datetime(row[ti]))
                    values.append(float(row[j]))
    return OrderedDict(sorted(series.items()))


def _too_light(color: str) -> bool:
    from matplotlib.colors import to_rgb

    r, g, b = to_rgb(color)
    return 0.2126 * r + 0.7152 * g + 0.0722 * b > 0.85


OUTLINE = "0.35"  # edge of light class colours (Low Vegetation, No Data) on the white chart


def _series_colors(names: list[str], palette: list[str]) -> dict[str, str]:
    """A colour per series: the class table's for a class (and its " (reference)" twin), else
    the next palette colour not already taken by a class."""
    from matplotlib.colors import to_hex

    classes = _class_colors()
    taken = {c.lower() for c in classes.values()}
    spare = [to_hex(c) for c in palette if to_hex(c) not in taken] or [to_hex(c) for c in palette]
    out: dict[str, str] = {}
    others: dict[str, str] = {}
    for name in names:
        base = name.removesuffix(" (reference)")
        if base in classes:
            out[name] = classes[base]
        else:
            out[name] = others.setdefault(base, spare[len(others) % len(spare)])
    return out


def _outline(color: str, width: float) -> list:
    """Path effects that draw a thin dark edge around a light line, so it reads on white."""
    from matplotlib import patheffects

    if not _too_light(color):
        return []
    return [patheffects.withStroke(linewidth=width + 1.4, foreground=OUTLINE), patheffects.Normal()]


def _value_label(value: float, unit: str) -> str:
    return format_value(value, unit if unit not in ("", "short") else "short", None)


def snapshot_chart(panel: P.Panel, series: OrderedDict[str, tuple[list[datetime], list[float]]]) -> str:
    """One point in time (a single run): a labelled horizontal bar per series, not a lone dot
    on a day-wide time axis."""
    plt, _ = _matplotlib()
    palette = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    names = list(series)
    colors = _series_colors(names, palette)
    values = [series[n][1][-1] for n in names]
    when = max(t for times, _ in series.values() for t in times)
    fig, ax = plt.subplots(figsize=(max(7.6 * panel.width / 12, 4.6), 0.9 + 0.32 * len(names)), dpi=100)
    bars = ax.barh(
        names,
        values,
        color=[colors[n] for n in names],
        edgecolor=[OUTLINE if _too_light(colors[n]) else colors[n] for n in names],
        hatch=None,
        alpha=0.9,
    )
    for bar, name in zip(bars, names, strict=True):
        if name.endswith(" (reference)"):
            bar.set_hatch("///")
            bar.set_alpha(0.45)
    ax.bar_label(bars, labels=[_value_label(v, panel.unit) for v in values], padding=3, fontsize=7.5)
    if panel.threshold is not None:
        ax.axvline(panel.threshold, color="#d62728", linestyle="--", linewidth=1.2)
        ax.annotate(
            f"threshold {panel.threshold:g}", xy=(panel.threshold, 1.0), xycoords=("data", "axes fraction"),
            fontsize=7, color="#d62728", ha="left", va="bottom",
        )  # fmt: skip
    ax.invert_yaxis()
    ax.grid(axis="y", visible=False)
    ax.margins(x=0.18)
    if panel.unit == "percentunit":
        ax.xaxis.set_major_formatter(plt.FuncFormatter(lambda v, _: f"{100 * v:.0f} %"))
    ax.set_xlabel(f"one run, {_cell(when)}", fontsize=8)
    ax.tick_params(axis="y", labelsize=7.5)
    uri = _svg_uri(fig)
    plt.close(fig)
    return uri


def _short_versions(text: str) -> str:
    """Annotation text with long model versions cut to their tail (they are timestamps + hash)."""
    return re.sub(
        r"\S{15,}",
        lambda m: "…" + m.group(0).rstrip(")")[-6:] + (")" if m.group(0).endswith(")") else ""),
        text,
    )


def timeseries_chart(panel: P.Panel, result: Result, annotations: list[tuple[datetime, str]]) -> str | None:
    series = _series(result)
    if not series:
        return None
    all_times = [t for times, _ in series.values() for t in times]
    if len(set(all_times)) == 1:
        return snapshot_chart(panel, series)
    plt, mdates = _matplotlib()
    palette = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    colors = _series_colors(list(series), palette)
    fig, ax = plt.subplots(figsize=(max(7.6 * panel.width / 12, 4.6), 3.0), dpi=100)
    # Few points: write each value next to it (a handful of runs reads better as numbers).
    label_points = len(set(all_times)) <= 6 and len(series) <= 4
    bars = bool(panel.extra.get("bars"))
    bar_names = list(series)
    distinct = sorted(set(all_times))
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(distinct) if b > a]
    # Bars of one timestamp share 80 % of the smallest gap between runs (1 h if a single run).
    slot_days = 0.8 * (min(gaps) if gaps else 3600.0) / 86400
    bar_width_days = slot_days / max(len(bar_names), 1)
    for i, (name, (times, values)) in enumerate(series.items()):
        reference = name.endswith(" (reference)")
        color = colors[name]  # the class table's colour for a class, never swapped
        if bars:
            offset = timedelta(days=bar_width_days * (i - (len(bar_names) - 1) / 2))
            drawn = ax.bar(
                [t + offset for t in times], values, width=bar_width_days, color=color, label=name,
                alpha=0.85, edgecolor=OUTLINE if _too_light(color) else color, linewidth=0.6,
            )  # fmt: skip
            if label_points:
                ax.bar_label(drawn, labels=[_value_label(v, panel.unit) for v in values], fontsize=7)
        else:
            width = 1.3 if reference else 1.8
            ax.plot(
                times, values, label=name, color=color, marker="" if reference else "o", markersize=4,
                linestyle="--" if reference else "-", linewidth=width, path_effects=_outline(color, width),
                markeredgecolor=OUTLINE if _too_light(color) else color,
            )  # fmt: skip
            if label_points and not reference:
                for t, v in zip(times, values, strict=True):
                    ax.annotate(
                        _value_label(v, panel.unit), (t, v), textcoords="offset points", xytext=(0, 5),
                        ha="center", fontsize=7, color="0.25",
                    )  # fmt: skip
    if panel.threshold is not None:
        ax.axhline(
            panel.threshold,
            color="#d62728",
            linestyle="--",
            linewidth=1.2,
            label=f"threshold {panel.threshold:g}",
        )
    lo, hi = (min(all_times), max(all_times)) if all_times else (None, None)
    for when, text in annotations:
        if when is None or lo is None or not (lo - timedelta(days=1) <= when <= hi + timedelta(days=1)):
            continue
        ax.axvline(when, color="#9467bd", linestyle=":", linewidth=1.5)
        ax.annotate(
            _short_versions(text), xy=(when, 0.98), xycoords=("data", "axes fraction"), rotation=90,
            va="top", ha="right", fontsize=7, color="#6a3d9a", annotation_clip=True, clip_on=True,
        )  # fmt: skip
    formatter = ax.yaxis.get_major_formatter()
    if hasattr(formatter, "set_useOffset"):
        formatter.set_useOffset(False)  # near-constant series: plain numbers, not "1e-6 + 0.9995"
    if panel.unit == "percentunit":
        ax.yaxis.set_major_formatter(plt.FuncFormatter(lambda v, _: f"{100 * v:.0f} %"))
    elif panel.unit not in ("short", ""):
        ax.set_ylabel({"s": "seconds", "currencyUSD": "USD"}.get(panel.unit, panel.unit))
    if lo is not None and lo == hi:
        ax.set_xlim(lo - timedelta(hours=12), hi + timedelta(hours=12))
    locator = mdates.AutoDateLocator(minticks=3, maxticks=8)
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
    n_labels = len(series) + (panel.threshold is not None)
    ax.legend(
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
        fontsize=7,
        frameon=False,
        ncol=1 if n_labels <= 14 else 2,
    )
    uri = _svg_uri(fig)
    plt.close(fig)
    return uri


def bar_chart(panel: P.Panel, result: Result) -> str | None:
    if not result.rows:
        return None
    plt, _ = _matplotlib()
    labels = [str(r[0]) for r in result.rows]
    values = [float(r[1]) for r in result.rows]
    fig, ax = plt.subplots(figsize=(4.6, 0.5 + 0.45 * len(labels)), dpi=100)
    bars = ax.barh(labels, values, color="#1f77b4")
    ax.bar_label(bars, labels=[f"{v:g}" for v in values], padding=3, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel(panel.columns[1])
    ax.grid(axis="y", visible=False)
    uri = _svg_uri(fig)
    plt.close(fig)
    return uri


# ---------------------------------------------------------------------------------------------
# HTML
# ---------------------------------------------------------------------------------------------

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
            cells.append(f"<td{cls}>{html.escape(_cell(v))}</td>")
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
            caption = f"{html.escape(q.scene)} · model {html.escape(q.model_version)} · {html.escape(_cell(q.finished_at))}"
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
    rng = f"{'beginning' if time_from <= EPOCH else _cell(time_from)} → {_cell(time_to)}"
    changes = ", ".join(f"{html.escape(t)} at {_cell(w)}" for w, t in annotations) or "none in range"
    body = "\n".join(_panel_html(pr, annotations, dialect) for pr in results)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(P.DASHBOARD_TITLE)}: ledger report</title>
<style>{CSS}</style></head>
<body>
<header><h1>{html.escape(P.DASHBOARD_TITLE)}</h1>
<p>Ledger: {html.escape(ledger)} ({html.escape(dialect)}) · range: {html.escape(rng)} · generated {html.escape(_cell(generated_at))}</p>
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
    engine = _check_ledger(ledger_url)
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

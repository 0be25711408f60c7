"""The report's charts: matplotlib figures of panel results, as SVG ``data:`` URIs."""

from __future__ import annotations

import base64
import io
import itertools
import re
from collections import OrderedDict
from datetime import datetime, timedelta

from observability import panels as P
from observability.report_format import format_cell, format_value
from observability.sql import Result, to_datetime


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
    ax.set_xlabel(f"one run, {format_cell(when)}", fontsize=8)
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


def _draw_series(
    ax, panel: P.Panel, series: OrderedDict[str, tuple[list[datetime], list[float]]], colors: dict[str, str]
) -> None:
    """Each series as grouped bars (``panel.extra["bars"]``) or a line, "(reference)" twins dashed."""
    all_times = [t for times, _ in series.values() for t in times]
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


def _draw_model_changes(
    ax, annotations: list[tuple[datetime, str]], lo: datetime | None, hi: datetime | None
) -> None:
    """A purple line per champion change within a day of the plotted range."""
    for when, text in annotations:
        if when is None or lo is None or not (lo - timedelta(days=1) <= when <= hi + timedelta(days=1)):
            continue
        ax.axvline(when, color="#9467bd", linestyle=":", linewidth=1.5)
        ax.annotate(
            _short_versions(text), xy=(when, 0.98), xycoords=("data", "axes fraction"), rotation=90,
            va="top", ha="right", fontsize=7, color="#6a3d9a", annotation_clip=True, clip_on=True,
        )  # fmt: skip


def _format_axes(
    ax, plt, mdates, panel: P.Panel, lo: datetime | None, hi: datetime | None, n_labels: int
) -> None:
    """The value axis in the panel's unit, a concise date axis and the legend beside the plot."""
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
    ax.legend(
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
        fontsize=7,
        frameon=False,
        ncol=1 if n_labels <= 14 else 2,
    )


def timeseries_chart(panel: P.Panel, result: Result, annotations: list[tuple[datetime, str]]) -> str | None:
    """A time series panel over its runs, with the threshold and the champion changes; a single
    run's values as a :func:`snapshot_chart`. None when the result has no points."""
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
    _draw_series(ax, panel, series, colors)
    if panel.threshold is not None:
        ax.axhline(
            panel.threshold,
            color="#d62728",
            linestyle="--",
            linewidth=1.2,
            label=f"threshold {panel.threshold:g}",
        )
    lo, hi = (min(all_times), max(all_times)) if all_times else (None, None)
    _draw_model_changes(ax, annotations, lo, hi)
    _format_axes(ax, plt, mdates, panel, lo, hi, len(series) + (panel.threshold is not None))
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

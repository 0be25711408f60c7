"""How the report writes values: Grafana units and table cells."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from observability.sql import to_datetime


def format_value(value: Any, unit: str, decimals: int | None = None) -> str:
    """A value in a Grafana unit (``s``, ``percent``, ``percentunit``, ``currencyUSD``, ``km²``...)."""
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


def format_cell(value: Any) -> str:
    """A table cell or caption: compact floats, UTC timestamps (SQLite hands them back as text)."""
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
            return format_cell(to_datetime(text))
        except ValueError:
            pass
    return text

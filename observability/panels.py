"""The single source of truth for every dashboard query: panels, annotations and alert rules.

Each :class:`Panel` holds the SQL Grafana runs (the Postgres ledger datasource) and the static
report runs (Postgres or the embedded SQLite ledger). ``python -m observability.build_dashboards``
generates the committed dashboard JSON and alert-rule YAML from this module; ``python -m
observability.report`` executes the very same strings. Edit SQL here, never in the JSON.

Dialects. Most queries are portable SQL (Postgres and SQLite ≥ 3.25). The few that need date
arithmetic (durations, "seconds since") give one variant per dialect side by side in a
``{"postgresql": ..., "sqlite": ...}`` mapping; Grafana gets the ``postgresql`` one.

Grafana macros. Queries may use ``$__timeFilter(col)``, ``$__timeFrom()`` and ``$__timeTo()``.
Grafana expands them itself; everywhere else :func:`observability.sql.render` rewrites them
into bound parameters (``col BETWEEN :time_from AND :time_to``), so no value is ever
formatted into SQL. Metric names and statuses appear as SQL literals: they are constants of the
ledger contract, not values.

Metric contract (``metrics`` table, written by the observe step): run-level rows have
``scene_id IS NULL``; names are those of :data:`METRIC_NAMES`. The shadow challenger's figures
(:mod:`inference.shadow`) are the ``shadow_comparisons`` table (one row per compared scene) and
its scene metrics ``shadow_iou``/``shadow_area_delta`` per class.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from inference.ledger.repository import SHADOW_AREA_DELTA, SHADOW_IOU, SHADOW_RUN_METRICS
from inference.settings import DEFAULTS as CHAIN_DEFAULTS

#: Datasource uid/type shared by the datasource provisioning YAML and every panel reference.
DATASOURCE_UID = "ledger"
DATASOURCE_TYPE = "grafana-postgresql-datasource"
DATASOURCE_NAME = "Ledger"
DASHBOARD_UID = "landcover-inference"
DASHBOARD_TITLE = "Land cover inference"
FOLDER = "Land cover"

#: Metric names the panels read from the ledger's metrics table (written by inference/monitor.py).
METRIC_NAMES = (
    "class_fraction",
    "class_area_km2",
    "reference_class_fraction",
    "area_km2",
    "mean_max_softmax",
    "low_confidence_share",
    "entropy",
    "band_mean",
    "band_std",
    "psi_class",
    "js_class",
    "psi_band",
    "js_band",
    "drift_flag",
    "scenes_predicted",
    "seconds_total",
    "cost_usd",
    "cost_usd_per_km2",
)
#: Run-level names of the shadow challenger's figures (written by inference/shadow.py).
SHADOW_METRIC_NAMES = SHADOW_RUN_METRICS

#: Alert thresholds that are not part of the Hydra config. The drift threshold is the chain's
#: own (``inference.drift_threshold``, see :func:`default_drift_threshold`).
NO_SUCCESS_HOURS = 26
FAILURE_RATE_PCT = 20.0
FAILURE_RATE_WINDOW_S = 24 * 3600

Dialect = Literal["postgresql", "sqlite"]
DIALECTS: tuple[Dialect, ...] = ("postgresql", "sqlite")
TIMESERIES_COLUMNS = ("time", "metric", "value")


@dataclass(frozen=True)
class Query:
    """SQL text, portable (a ``str``) or one variant per dialect (a mapping)."""

    sql: str | Mapping[str, str]

    def for_dialect(self, dialect: str) -> str:
        if isinstance(self.sql, str):
            return self.sql
        try:
            return self.sql[dialect]
        except KeyError:
            raise ValueError(f"no SQL variant for dialect {dialect!r}; have {sorted(self.sql)}") from None

    @property
    def grafana_sql(self) -> str:
        return self.for_dialect("postgresql")


@dataclass(frozen=True)
class Panel:
    """One dashboard panel and its report twin."""

    key: str  # stable slug: the panel's identity in tests, report anchors and alert links
    title: str
    kind: Literal["timeseries", "stat", "barchart", "table"]
    query: Query
    columns: tuple[str, ...]  # the columns the panel expects, in order
    description: str
    unit: str = "short"
    width: int = 12  # Grafana grid units (24 per row)
    height: int = 8
    threshold: float | None = None  # drawn as a red line (timeseries) or colour step (stat)
    decimals: int | None = None
    extra: Mapping[str, object] = field(default_factory=dict)

    @property
    def format(self) -> str:
        return "time_series" if self.kind == "timeseries" else "table"


@dataclass(frozen=True)
class AlertRule:
    uid: str
    title: str
    query: Query  # returns one row with a numeric ``value`` column
    op: Literal["gt", "lt"]
    threshold: float
    window_s: int  # relative time range handed to $__timeFilter
    summary: str
    panel_key: str  # the panel showing the same SQL
    no_data_state: Literal["OK", "NoData", "Alerting"] = "OK"
    severity: str = "warning"


# ---------------------------------------------------------------------------------------------
# SQL. Time series return (time, metric, value) in long format, ordered by time: Grafana turns
# each distinct ``metric`` into a series; the report does the same.
# ---------------------------------------------------------------------------------------------

_RUN_METRIC = """
SELECT r.started_at AS time, {label} AS metric, m.value AS value
FROM metrics m
JOIN runs r ON r.id = m.run_id
WHERE m.scene_id IS NULL
  AND m.name IN ({names})
  AND $__timeFilter(r.started_at)
ORDER BY 1, 2
""".strip()


def _run_metric(names: tuple[str, ...], label: str = "m.key") -> Query:
    # Built once at import from constants of this module (never from user input).
    quoted = ", ".join(f"'{n}'" for n in names)
    assert all(n in METRIC_NAMES + SHADOW_METRIC_NAMES for n in names), names
    return Query(_RUN_METRIC.format(label=label, names=quoted))


CLASS_AREA_SQL = Query(
    """
SELECT r.started_at AS time, m.key AS metric, m.value AS value
FROM metrics m
JOIN runs r ON r.id = m.run_id
WHERE m.scene_id IS NULL
  AND m.name = 'class_area_km2'
  AND $__timeFilter(r.started_at)
UNION ALL
SELECT r.started_at AS time, f.key || ' (reference)' AS metric, f.value * a.value AS value
FROM metrics f
JOIN metrics a ON a.run_id = f.run_id AND a.scene_id IS NULL AND a.name = 'area_km2' AND a.key = ''
JOIN runs r ON r.id = f.run_id
WHERE f.scene_id IS NULL
  AND f.name = 'reference_class_fraction'
  AND $__timeFilter(r.started_at)
ORDER BY 1, 2
""".strip()
)

CLASS_SHARE_SQL = _run_metric(
    ("class_fraction", "reference_class_fraction"),
    label="m.key || CASE WHEN m.name = 'reference_class_fraction' THEN ' (reference)' ELSE '' END",
)
CLASS_DRIFT_SQL = _run_metric(("psi_class", "js_class"), label="m.name")
BAND_DRIFT_SQL = _run_metric(("psi_band", "js_band"), label="m.name || ' ' || m.key")
CONFIDENCE_SQL = _run_metric(("mean_max_softmax", "low_confidence_share"), label="m.name")
ENTROPY_SQL = _run_metric(("entropy",), label="m.name")
BAND_MEAN_SQL = _run_metric(("band_mean",))
BAND_STD_SQL = _run_metric(("band_std",))
THROUGHPUT_SQL = _run_metric(("area_km2",), label="'km² per run'")
COST_PER_KM2_SQL = _run_metric(("cost_usd_per_km2",), label="'USD per km²'")
SHADOW_AGREEMENT_SQL = _run_metric(("shadow_agreement",), label="'challenger agrees with champion'")
SHADOW_COST_SQL = _run_metric(
    ("shadow_seconds", "seconds_total"),
    label="CASE WHEN m.name = 'shadow_seconds' THEN 'challenger (shadow)' ELSE 'champion (served)' END",
)

_SHADOW_CLASS = """
SELECT m.key AS class, SUM(m.value * c.pixels) / SUM(c.pixels) AS {column}
FROM metrics m
JOIN shadow_comparisons c
  ON c.scene_id = m.scene_id AND c.run_id = m.run_id AND c.challenger_version = m.model_version
WHERE m.name = '{name}'
  AND c.status = 'compared'
  AND $__timeFilter(c.compared_at)
  AND c.challenger_version = (
    SELECT l.challenger_version FROM shadow_comparisons l
    WHERE l.status = 'compared' AND $__timeFilter(l.compared_at)
    ORDER BY l.compared_at DESC, l.id DESC LIMIT 1
  )
GROUP BY m.key
ORDER BY m.key
""".strip()
# Per class, pixel-weighted over the latest challenger's compared scenes.
SHADOW_IOU_SQL = Query(_SHADOW_CLASS.format(column="iou", name=SHADOW_IOU))
SHADOW_AREA_DELTA_SQL = Query(_SHADOW_CLASS.format(column="area_delta", name=SHADOW_AREA_DELTA))
SHADOW_TABLE_SQL = Query(
    """
SELECT c.scene_id, c.champion_version, c.challenger_version, c.agreement, c.pixels,
       c.seconds AS challenger_s, p.seconds AS champion_s, c.class_uri, c.compared_at
FROM shadow_comparisons c
LEFT JOIN predictions p ON p.scene_id = c.scene_id AND p.model_version = c.champion_version
WHERE c.status = 'compared'
  AND $__timeFilter(c.compared_at)
ORDER BY c.compared_at DESC, c.id DESC
LIMIT 50
""".strip()
)

BACKLOG_SQL = Query(
    """
SELECT COUNT(*) AS value
FROM scenes s
WHERE s.status <> 'quarantined'
  AND NOT EXISTS (SELECT 1 FROM predictions p WHERE p.scene_id = s.id)
""".strip()
)

BACKLOG_BY_STATUS_SQL = Query(
    """
SELECT s.status AS status, COUNT(*) AS scenes
FROM scenes s
WHERE s.status <> 'quarantined'
  AND NOT EXISTS (SELECT 1 FROM predictions p WHERE p.scene_id = s.id)
GROUP BY s.status
ORDER BY s.status
""".strip()
)

# Seconds since the last successful run finished. With no success ever, seconds since the first
# run started (a fresh stack is not "26 h without success" on minute one); 0 with no runs at all.
SINCE_SUCCESS_SQL = Query(
    {
        "postgresql": """
SELECT CAST(EXTRACT(EPOCH FROM (now() - COALESCE(
    (SELECT MAX(finished_at) FROM runs WHERE status = 'succeeded'),
    (SELECT MIN(started_at) FROM runs),
    now()))) AS double precision) AS value
""".strip(),
        "sqlite": """
SELECT (julianday('now') - COALESCE(
    julianday((SELECT MAX(finished_at) FROM runs WHERE status = 'succeeded')),
    julianday((SELECT MIN(started_at) FROM runs)),
    julianday('now'))) * 86400.0 AS value
""".strip(),
    }
)

FAILURE_RATE_SQL = Query(
    """
SELECT CAST(COALESCE(100.0 * SUM(CASE WHEN r.status IN ('failed', 'abandoned') THEN 1 ELSE 0 END)
                     / NULLIF(COUNT(*), 0), 0.0) AS double precision) AS value
FROM runs r
WHERE r.status <> 'running'
  AND $__timeFilter(r.started_at)
""".strip()
)

_DURATION = {
    "postgresql": "CAST(EXTRACT(EPOCH FROM (r.finished_at - r.started_at)) AS double precision)",
    "sqlite": "(julianday(r.finished_at) - julianday(r.started_at)) * 86400.0",
}

RUN_DURATION_SQL = Query(
    {
        dialect: f"""
SELECT r.started_at AS time, r.status AS metric, {expr} AS value
FROM runs r
WHERE r.finished_at IS NOT NULL
  AND $__timeFilter(r.started_at)
ORDER BY 1, 2
""".strip()
        for dialect, expr in _DURATION.items()
    }
)

RUN_OUTCOMES_SQL = Query(
    """
SELECT r.started_at AS time, 'predicted' AS metric, CAST(r.scenes_predicted AS double precision) AS value
FROM runs r WHERE $__timeFilter(r.started_at)
UNION ALL
SELECT r.started_at, 'failed', CAST(r.scenes_failed AS double precision)
FROM runs r WHERE $__timeFilter(r.started_at)
UNION ALL
SELECT r.started_at, 'quarantined', CAST(r.scenes_quarantined AS double precision)
FROM runs r WHERE $__timeFilter(r.started_at)
UNION ALL
SELECT r.started_at, 'run failed', CAST(1 AS double precision)
FROM runs r WHERE r.status = 'failed' AND $__timeFilter(r.started_at)
UNION ALL
SELECT r.started_at, 'run abandoned', CAST(1 AS double precision)
FROM runs r WHERE r.status = 'abandoned' AND $__timeFilter(r.started_at)
ORDER BY 1, 2
""".strip()
)

RECENT_RUNS_SQL = Query(
    {
        dialect: f"""
SELECT r.execution_id AS execution_id, r.status AS status, r.model_version AS model_version,
       r.started_at AS started_at, {expr} AS duration_s,
       r.scenes_discovered AS discovered, r.scenes_predicted AS predicted,
       r.scenes_quarantined AS quarantined, r.scenes_failed AS failed, r.error AS error
FROM runs r
WHERE $__timeFilter(r.started_at)
ORDER BY r.started_at DESC, r.id DESC
LIMIT 50
""".strip()
        for dialect, expr in _DURATION.items()
    }
)

QUARANTINE_REASONS_SQL = Query(
    """
SELECT q.reason AS reason, COUNT(*) AS scenes
FROM quarantine q
GROUP BY q.reason
ORDER BY scenes DESC, reason
""".strip()
)

QUARANTINE_TABLE_SQL = Query(
    """
SELECT q.scene_id AS scene_id, q.source_uri AS source_uri, q.reason AS reason,
       q.message AS message, q.quarantined_at AS quarantined_at
FROM quarantine q
ORDER BY q.quarantined_at DESC, q.scene_id DESC
LIMIT 100
""".strip()
)

AREA_TOTAL_SQL = Query(
    """
SELECT COALESCE(SUM(m.value), 0.0) AS value
FROM metrics m
JOIN runs r ON r.id = m.run_id
WHERE m.scene_id IS NULL AND m.name = 'area_km2' AND $__timeFilter(r.started_at)
""".strip()
)

COST_TOTAL_SQL = Query(
    """
SELECT COALESCE(SUM(m.value), 0.0) AS value
FROM metrics m
JOIN runs r ON r.id = m.run_id
WHERE m.scene_id IS NULL AND m.name = 'cost_usd' AND $__timeFilter(r.started_at)
""".strip()
)

# The latest run that recorded drift, and its worst PSI (class or any band).
MAX_PSI_SQL = Query(
    """
SELECT MAX(m.value) AS value
FROM metrics m
WHERE m.scene_id IS NULL
  AND m.name IN ('psi_class', 'psi_band')
  AND m.run_id = (
    SELECT x.run_id
    FROM metrics x
    JOIN runs r ON r.id = x.run_id
    WHERE x.scene_id IS NULL AND x.name IN ('psi_class', 'psi_band')
      AND $__timeFilter(r.started_at)
    ORDER BY r.started_at DESC, r.id DESC
    LIMIT 1
  )
""".strip()
)

#: Grafana annotations wherever the champion model changed (the ledger's model_changes view).
MODEL_CHANGES_SQL = Query(
    """
SELECT c.started_at AS time,
       'champion ' || c.model_version
         || CASE WHEN c.previous_model_version IS NULL THEN ' (first)'
                 ELSE ' (was ' || c.previous_model_version || ')' END AS text,
       'model-change' AS tags
FROM model_changes c
WHERE $__timeFilter(c.started_at)
ORDER BY 1
""".strip()
)
MODEL_CHANGES_COLUMNS = ("time", "text", "tags")


def default_drift_threshold() -> float:
    """The observe step's own drift threshold: ``inference.drift_threshold`` from the Hydra
    config, or the chain's default when the config leaves it null."""
    from core.config import compose

    value = compose().inference.drift_threshold
    return CHAIN_DEFAULTS.drift_threshold if value is None else float(value)


def panels(drift_threshold: float = CHAIN_DEFAULTS.drift_threshold) -> list[Panel]:
    """Every panel, in dashboard order (rows of 24 grid units)."""
    no_success_s = NO_SUCCESS_HOURS * 3600
    return [
        # --- operations at a glance ---
        Panel(
            "backlog",
            "Backlog: scenes discovered, not predicted",
            "stat",
            BACKLOG_SQL,
            ("value",),
            "Scenes in the ledger that are not quarantined and have no prediction by any model.",
            width=4,
            height=5,
        ),
        Panel(
            "since_success",
            "Time since last successful run",
            "stat",
            SINCE_SUCCESS_SQL,
            ("value",),
            f"Seconds since the last run finished with status succeeded (since the first run if none "
            f"has). Red past {NO_SUCCESS_HOURS} h: the alert threshold.",
            unit="s",
            width=4,
            height=5,
            threshold=float(no_success_s),
        ),
        Panel(
            "max_psi",
            "Worst PSI, latest run",
            "stat",
            MAX_PSI_SQL,
            ("value",),
            "The highest PSI (class distribution or any band) of the latest run with drift metrics. "
            f"Red above the drift threshold {drift_threshold:g}.",
            width=4,
            height=5,
            threshold=drift_threshold,
            decimals=3,
        ),
        Panel(
            "failure_rate",
            "Run failure rate",
            "stat",
            FAILURE_RATE_SQL,
            ("value",),
            f"Failed runs / finished runs in the time range. Red above {FAILURE_RATE_PCT:g} %.",
            unit="percent",
            width=4,
            height=5,
            threshold=FAILURE_RATE_PCT,
            decimals=1,
        ),
        Panel(
            "area_total",
            "Area predicted",
            "stat",
            AREA_TOTAL_SQL,
            ("value",),
            "Total km² predicted by runs in the time range.",
            unit="km²",
            width=4,
            height=5,
            decimals=2,
        ),
        Panel(
            "cost_total",
            "Estimated cost",
            "stat",
            COST_TOTAL_SQL,
            ("value",),
            "Sum of the runs' estimated cost in the time range.",
            unit="currencyUSD",
            width=4,
            height=5,
            decimals=4,
        ),
        # --- land cover ---
        Panel(
            "class_area",
            "Class area per run vs training reference",
            "timeseries",
            CLASS_AREA_SQL,
            TIMESERIES_COLUMNS,
            "km² of each class per run (solid) against the training reference fractions scaled to "
            "the run's area (dashed).",
            unit="km²",
        ),
        Panel(
            "class_share",
            "Class share vs training reference",
            "timeseries",
            CLASS_SHARE_SQL,
            TIMESERIES_COLUMNS,
            "Fraction of valid pixels per class per run (solid) against the training reference (dashed).",
            unit="percentunit",
        ),
        # --- drift ---
        Panel(
            "class_drift",
            "Class-distribution drift (PSI / JS)",
            "timeseries",
            CLASS_DRIFT_SQL,
            TIMESERIES_COLUMNS,
            "Population stability index and Jensen-Shannon divergence of the predicted class "
            f"distribution against the training reference. Red line: drift threshold {drift_threshold:g}.",
            threshold=drift_threshold,
        ),
        Panel(
            "band_drift",
            "Band drift (PSI / JS)",
            "timeseries",
            BAND_DRIFT_SQL,
            TIMESERIES_COLUMNS,
            "PSI and JS divergence of each band's histogram against the training reference. Red "
            f"line: drift threshold {drift_threshold:g}.",
            threshold=drift_threshold,
        ),
        # --- confidence ---
        Panel(
            "confidence",
            "Confidence: mean max-softmax and low-confidence share",
            "timeseries",
            CONFIDENCE_SQL,
            TIMESERIES_COLUMNS,
            "Mean of the per-pixel max softmax, and the share of pixels below the low-confidence "
            "threshold, per run.",
            unit="percentunit",
        ),
        Panel(
            "entropy",
            "Mean predictive entropy",
            "timeseries",
            ENTROPY_SQL,
            TIMESERIES_COLUMNS,
            "Mean per-pixel entropy of the softmax, normalised by ln K (0 = certain, 1 = uniform), per run.",
        ),
        # --- bands ---
        Panel(
            "band_mean",
            "Per-band mean",
            "timeseries",
            BAND_MEAN_SQL,
            TIMESERIES_COLUMNS,
            "Mean digital number of each band over valid pixels, per run.",
        ),
        Panel(
            "band_std",
            "Per-band standard deviation",
            "timeseries",
            BAND_STD_SQL,
            TIMESERIES_COLUMNS,
            "Standard deviation of each band over valid pixels, per run.",
        ),
        # --- runs ---
        Panel(
            "run_duration",
            "Run durations",
            "timeseries",
            RUN_DURATION_SQL,
            TIMESERIES_COLUMNS,
            "Wall time of each finished run (finished_at - started_at), by final status.",
            unit="s",
        ),
        Panel(
            "run_outcomes",
            "Scenes per run and failed runs",
            "timeseries",
            RUN_OUTCOMES_SQL,
            TIMESERIES_COLUMNS,
            "Scenes predicted / failed / quarantined by each run; 'run failed' and 'run abandoned' mark "
            "runs that failed or whose execution stopped without closing them.",
            extra={"bars": True},
        ),
        Panel(
            "backlog_by_status",
            "Backlog by status",
            "barchart",
            BACKLOG_BY_STATUS_SQL,
            ("status", "scenes"),
            "Unpredicted, unquarantined scenes by their ledger status.",
            width=8,
        ),
        Panel(
            "quarantine_reasons",
            "Quarantined inputs by reason",
            "barchart",
            QUARANTINE_REASONS_SQL,
            ("reason", "scenes"),
            "Rejected inputs grouped by reason code (the ledger's quarantine view).",
            width=8,
        ),
        Panel(
            "throughput",
            "Throughput: km² per run",
            "timeseries",
            THROUGHPUT_SQL,
            TIMESERIES_COLUMNS,
            "Area predicted by each run.",
            unit="km²",
            width=8,
            extra={"bars": True},
        ),
        Panel(
            "cost_per_km2",
            "Cost per km²",
            "timeseries",
            COST_PER_KM2_SQL,
            TIMESERIES_COLUMNS,
            "Estimated cost (USD) per km² predicted, per run.",
            unit="currencyUSD",
            width=8,
        ),
        Panel(
            "recent_runs",
            "Recent runs",
            "table",
            RECENT_RUNS_SQL,
            (
                "execution_id",
                "status",
                "model_version",
                "started_at",
                "duration_s",
                "discovered",
                "predicted",
                "quarantined",
                "failed",
                "error",
            ),
            "The last 50 runs in the time range, newest first, with their failure cause.",
            width=16,
            height=9,
        ),
        Panel(
            "quarantine",
            "Quarantined inputs",
            "table",
            QUARANTINE_TABLE_SQL,
            ("scene_id", "source_uri", "reason", "message", "quarantined_at"),
            "Every quarantined input with its reason code and message (newest first).",
            width=24,
            height=8,
        ),
        # --- the shadow challenger (predicts beside the champion, never served) ---
        Panel(
            "shadow_agreement",
            "Shadow: challenger agreement per run",
            "timeseries",
            SHADOW_AGREEMENT_SQL,
            TIMESERIES_COLUMNS,
            "Share of pixels where the registry's challenger gives the champion's class, weighted by "
            "pixels over the scenes each run compared.",
            unit="percentunit",
            width=8,
            decimals=3,
        ),
        Panel(
            "shadow_iou",
            "Shadow: challenger vs champion IoU by class",
            "barchart",
            SHADOW_IOU_SQL,
            ("class", "iou"),
            "Per class, |both say it| / |either says it| over the latest challenger's compared scenes "
            "(pixel-weighted). Low bars are where the two models disagree.",
            width=8,
        ),
        Panel(
            "shadow_area_delta",
            "Shadow: class-area delta (challenger - champion)",
            "barchart",
            SHADOW_AREA_DELTA_SQL,
            ("class", "area_delta"),
            "Per class, the challenger's share of the pixels minus the champion's, over the latest "
            "challenger's compared scenes (pixel-weighted): what promoting it would shift.",
            unit="percentunit",
            width=8,
        ),
        Panel(
            "shadow_cost",
            "Shadow: prediction seconds per run, challenger vs champion",
            "timeseries",
            SHADOW_COST_SQL,
            TIMESERIES_COLUMNS,
            "Lambda prediction seconds of each run: the champion's (served) and the challenger's "
            "(shadow, run after the champion's outputs are written). Their ratio is the added cost.",
            unit="s",
            width=8,
            extra={"bars": True},
        ),
        Panel(
            "shadow_scenes",
            "Shadow comparisons",
            "table",
            SHADOW_TABLE_SQL,
            (
                "scene_id",
                "champion_version",
                "challenger_version",
                "agreement",
                "pixels",
                "challenger_s",
                "champion_s",
                "class_uri",
                "compared_at",
            ),
            "The last 50 scenes compared in shadow: agreement, pixels, both models' seconds and the "
            "challenger's class COG (under the shadow prefix).",
            width=24,
            height=8,
        ),
    ]


def alert_rules(drift_threshold: float = CHAIN_DEFAULTS.drift_threshold) -> list[AlertRule]:
    """The provisioned alert rules; each reuses the SQL of the panel it names."""
    return [
        AlertRule(
            uid="landcover-drift",
            title="Drift above threshold",
            query=MAX_PSI_SQL,
            op="gt",
            threshold=drift_threshold,
            window_s=7 * 24 * 3600,
            summary=f"The latest run's worst PSI (class distribution or a band) is above {drift_threshold:g}.",
            panel_key="max_psi",
        ),
        AlertRule(
            uid="landcover-no-success",
            title=f"No successful run for {NO_SUCCESS_HOURS} h",
            query=SINCE_SUCCESS_SQL,
            op="gt",
            threshold=float(NO_SUCCESS_HOURS * 3600),
            window_s=FAILURE_RATE_WINDOW_S,
            summary=f"No inference run has succeeded for more than {NO_SUCCESS_HOURS} hours.",
            panel_key="since_success",
            no_data_state="Alerting",
            severity="critical",
        ),
        AlertRule(
            uid="landcover-failure-rate",
            title=f"Run failure rate above {FAILURE_RATE_PCT:g} %",
            query=FAILURE_RATE_SQL,
            op="gt",
            threshold=FAILURE_RATE_PCT,
            window_s=FAILURE_RATE_WINDOW_S,
            summary=f"More than {FAILURE_RATE_PCT:g} % of the runs finished in the last 24 h failed or were abandoned.",
            panel_key="failure_rate",
        ),
    ]

"""Grafana provisioning sanity: generated files up to date, unique uids, resolvable datasources,
no panel without a query, alert rules tied to real panels and the same SQL."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from observability import build_dashboards as B
from observability import panels as P

GRAFANA = Path(B.GRAFANA_DIR)
BUILTIN_DATASOURCES = {"-- Grafana --", "__expr__"}


def _dashboards() -> dict[Path, dict]:
    return {
        p: json.loads(p.read_text(encoding="utf-8")) for p in sorted((GRAFANA / "dashboards").glob("*.json"))
    }


def _datasources() -> dict[str, str]:
    found = {}
    for path in (GRAFANA / "provisioning" / "datasources").glob("*.yaml"):
        for ds in yaml.safe_load(path.read_text())["datasources"]:
            assert ds["uid"] not in found, f"datasource uid {ds['uid']} provisioned twice"
            found[ds["uid"]] = ds["type"]
    return found


def _alert_rules() -> list[dict]:
    rules = []
    for path in (GRAFANA / "provisioning" / "alerting").glob("*.yaml"):
        for group in yaml.safe_load(path.read_text()).get("groups", []):
            rules += group["rules"]
    return rules


def test_generated_files_are_up_to_date():
    for path, content in B.render_files().items():
        assert path.exists(), f"{path} missing: run `python -m observability.build_dashboards`"
        assert path.read_text(encoding="utf-8") == content, (
            f"{path.name} is stale: run `python -m observability.build_dashboards` (make dashboards)"
        )


def test_uids_are_unique_and_panels_have_queries():
    dashboards = _dashboards()
    assert dashboards, "no dashboard JSON"
    uids = [d["uid"] for d in dashboards.values()]
    assert len(uids) == len(set(uids)), uids
    for path, dash in dashboards.items():
        ids = [p["id"] for p in dash["panels"]]
        assert len(ids) == len(set(ids)), f"{path.name}: duplicate panel ids"
        for panel in dash["panels"]:
            targets = panel.get("targets") or []
            assert targets, f"{path.name}: panel {panel['title']!r} has no query"
            for target in targets:
                assert target.get("rawSql", "").strip(), f"{panel['title']!r}: empty rawSql"
                assert target["rawQuery"] is True and target["editorMode"] == "code"
            # Grid: inside 24 columns, no overlaps.
            g = panel["gridPos"]
            assert g["x"] >= 0 and g["x"] + g["w"] <= 24
        cells = set()
        for panel in dash["panels"]:
            g = panel["gridPos"]
            mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
            assert not (cells & mine), f"panel {panel['title']!r} overlaps another"
            cells |= mine
    rule_uids = [r["uid"] for r in _alert_rules()]
    assert len(rule_uids) == len(set(rule_uids)) == len(P.alert_rules())


def test_datasource_references_resolve():
    datasources = _datasources()
    assert datasources == {P.DATASOURCE_UID: P.DATASOURCE_TYPE}

    def check(ref, where):
        if isinstance(ref, dict):
            assert ref.get("uid") in datasources or ref.get("uid") in BUILTIN_DATASOURCES, f"{where}: {ref}"
            if ref.get("uid") in datasources:
                assert ref.get("type") == datasources[ref["uid"]], f"{where}: type {ref}"
        else:
            raise AssertionError(f"{where}: datasource must be a {{type, uid}} reference, got {ref!r}")

    for path, dash in _dashboards().items():
        for panel in dash["panels"]:
            check(panel["datasource"], f"{path.name}/{panel['title']}")
            for target in panel["targets"]:
                check(target["datasource"], f"{path.name}/{panel['title']}/{target['refId']}")
        for note in dash["annotations"]["list"]:
            check(note["datasource"], f"{path.name}/annotation {note['name']}")
    for rule in _alert_rules():
        for query in rule["data"]:
            uid = query["datasourceUid"]
            assert uid in datasources or uid in BUILTIN_DATASOURCES, f"alert {rule['uid']}: {uid}"


def test_dashboard_sql_is_the_panels_sql():
    """Single source of truth: every panel's rawSql is panels.py's Postgres variant, verbatim."""
    dash = json.loads(B.DASHBOARD_PATH.read_text(encoding="utf-8"))
    threshold = P.default_drift_threshold()
    by_title = {p["title"]: p for p in dash["panels"]}
    for panel in P.panels(threshold):
        grafana = by_title[panel.title]
        assert grafana["targets"][0]["rawSql"] == panel.query.grafana_sql
        assert grafana["targets"][0]["format"] == panel.format
        assert grafana["type"] == panel.kind
    notes = {n["name"]: n for n in dash["annotations"]["list"]}
    assert notes["Champion model changes"]["target"]["rawSql"] == P.MODEL_CHANGES_SQL.grafana_sql
    drift = by_title["Class-distribution drift (PSI / JS)"]
    assert drift["fieldConfig"]["defaults"]["custom"]["thresholdsStyle"]["mode"] == "line"
    assert drift["fieldConfig"]["defaults"]["thresholds"]["steps"][-1]["value"] == threshold


def test_alert_rules_use_panel_sql_and_point_at_panels():
    dash = json.loads(B.DASHBOARD_PATH.read_text(encoding="utf-8"))
    panel_ids = {p["id"]: p for p in dash["panels"]}
    rules = {r["uid"]: r for r in _alert_rules()}
    for rule in P.alert_rules(P.default_drift_threshold()):
        provisioned = rules[rule.uid]
        assert provisioned["dashboardUid"] == dash["uid"]
        panel = panel_ids[provisioned["panelId"]]
        query = next(q for q in provisioned["data"] if q["refId"] == "A")
        assert query["model"]["rawSql"] == rule.query.grafana_sql
        condition = next(q for q in provisioned["data"] if q["refId"] == provisioned["condition"])
        assert condition["model"]["conditions"][0]["evaluator"] == {
            "type": rule.op,
            "params": [rule.threshold],
        }
        assert panel["targets"][0]["rawSql"] == rule.query.grafana_sql  # literally the panel's SQL
    assert rules["landcover-no-success"]["data"][2]["model"]["conditions"][0]["evaluator"]["params"] == [
        26 * 3600
    ]


def test_provisioning_points_at_the_mounted_folders():
    providers = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "landcover.yaml").read_text())
    assert providers["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
    ds = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "ledger.yaml").read_text())[
        "datasources"
    ][0]
    # Credentials come from the environment, never from the file.
    assert ds["secureJsonData"]["password"] == "${LEDGER_DB_PASSWORD}"
    assert ds["url"] == "${LEDGER_DB_HOST}:${LEDGER_DB_PORT}"

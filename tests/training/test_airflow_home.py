"""One Airflow home for the in-process runner and the UI, INFO task logs, manual DAGs, and the
task log files the in-process runner writes for the UI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from training import airflow_runner
from training.airflow_embedded import log_record, task_log_path
from training.airflow_runner import AirflowClient, airflow_env, airflow_home, running_ui
from training.airflow_ui import ui_env


def test_runner_and_ui_share_one_airflow_home(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("LANDCOVER_HOME", str(tmp_path))
    monkeypatch.delenv("AIRFLOW__LOGGING__LOGGING_LEVEL", raising=False)
    runner, ui = airflow_env(), ui_env(8123)
    assert runner["AIRFLOW_HOME"] == ui["AIRFLOW_HOME"] == str(tmp_path / "outputs" / "airflow")
    assert airflow_home() == tmp_path / "outputs" / "airflow"
    assert runner["AIRFLOW__LOGGING__LOGGING_LEVEL"] == ui["AIRFLOW__LOGGING__LOGGING_LEVEL"] == "INFO"


class RecordingClient(AirflowClient):
    """The real trigger logic over a recorded fake API (no server)."""

    def __init__(self, dag: dict):  # no login
        self.dag = dag
        self.calls: list[tuple[str, str, dict | None]] = []

    def _call(self, method: str, path: str, **kwargs) -> dict:
        self.calls.append((method, path, kwargs.get("json")))
        return self.dag if method == "GET" else {}


def test_trigger_unpauses_an_unscheduled_dag_then_starts_one_run() -> None:
    client = RecordingClient({"is_paused": True, "timetable_summary": None})
    client.trigger("baseline", "r1", {"run_id": "r1"})
    assert [(m, p) for m, p, _ in client.calls] == [
        ("GET", "/dags/baseline"),
        ("PATCH", "/dags/baseline"),
        ("POST", "/dags/baseline/dagRuns"),
    ]
    assert client.calls[2][2]["dag_run_id"] == "r1"


def test_trigger_never_unpauses_a_scheduled_dag() -> None:
    client = RecordingClient({"is_paused": True, "timetable_summary": "@daily"})
    with pytest.raises(RuntimeError, match="would also start a scheduled run"):
        client.trigger("baseline", "r1", {})
    assert [m for m, _, _ in client.calls] == ["GET"]
    unpaused = RecordingClient({"is_paused": False, "timetable_summary": "@daily"})
    unpaused.trigger("baseline", "r1", {})
    assert [m for m, _, _ in unpaused.calls] == ["GET", "POST"]


def test_running_ui_ignores_missing_and_dead_state(tmp_path) -> None:
    assert running_ui(tmp_path) is None
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / airflow_runner.UI_STATE_FILE).write_text(
        json.dumps({"url": "http://127.0.0.1:1", "pid": dead.pid})
    )
    assert running_ui(tmp_path) is None
    # Alive but not serving (this test process): still not a UI.
    (tmp_path / airflow_runner.UI_STATE_FILE).write_text(
        json.dumps({"url": "http://127.0.0.1:1", "pid": os.getpid()})
    )
    assert running_ui(tmp_path) is None


def test_task_log_path_follows_airflows_template(tmp_path) -> None:
    code = (
        "from training.airflow_embedded import task_log_path\n"
        "print(task_log_path('baseline', 'manual__x', 'train_head', -1, 2))"
    )
    env = airflow_env(tmp_path / "af")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    path = Path(out.stdout.strip())
    assert (
        path
        == tmp_path
        / "af"
        / "logs"
        / "dag_id=baseline"
        / "run_id=manual__x"
        / "task_id=train_head"
        / "attempt=2.log"
    )
    assert callable(task_log_path)


def test_log_record_is_airflow_structured_json() -> None:
    from airflow.utils.log.file_task_handler import StructuredLogMessage

    record = log_record("\x1b[32m[train_head] epoch 3: val_miou=0.5\x1b[0m\n")
    parsed = StructuredLogMessage.model_validate_json(record)
    assert parsed.event == "[train_head] epoch 3: val_miou=0.5"
    assert json.loads(record)["level"] == "info"
    assert json.loads(log_record("Traceback (most recent call last):"))["level"] == "error"
    console = json.loads(
        log_record("2026-12-01T21:02:43.485382Z [warning  ] [train_head] slow   [training.pipeline]")
    )
    assert console["timestamp"] == "2026-12-01T21:02:43.485382Z" and console["level"] == "warning"
    assert console["event"] == "[train_head] slow   [training.pipeline]"

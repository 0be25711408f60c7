"""The Airflow UI in headless Chromium shows a run made in-process (``make train_baseline``'s
path) with its task log: one Airflow home, INFO logs, log files where the UI reads them.

The UI is Airflow's API server (what ``make airflow_ui`` serves the UI with), started on the
environment :func:`training.airflow_ui.ui_env` builds. Only the API server runs: showing a finished
run needs no scheduler, and it starts in seconds rather than minutes. The login is switched off
for the browser (``simple_auth_manager_all_admins``): Chromium's command line cannot fill in a
form, and authentication is covered by the REST runner's tests.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

import pytest
import requests

from core.config import REPO_ROOT
from tests.chromium import run_headless_chromium
from tests.ports import free_port
from tests.training.pipeline_fixtures import TINY_OVERRIDES, make_tiny_home
from training.airflow_runner import run_embedded
from training.airflow_ui import ui_env

STARTUP_SECONDS = 180
LEAKY_ENV = ("MLFLOW_TRACKING_URI", "AWS_ENDPOINT_URL", "AWS_PROFILE", "LANDCOVER_OVERRIDES", "AIRFLOW_URL")


@contextlib.contextmanager
def api_server(port: int, log: Path):
    env = {k: v for k, v in ui_env(port).items() if k not in LEAKY_ENV}
    env.update(AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS="True", AIRFLOW__API__WORKERS="1")
    airflow = str(Path(sys.executable).parent / "airflow")
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [airflow, "api-server"], cwd=REPO_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_SECONDS
        while True:
            if proc.poll() is not None:
                pytest.fail(f"airflow api-server exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
            with contextlib.suppress(requests.RequestException):
                if requests.get(f"{url}/api/v2/monitor/health", timeout=5).ok:
                    break
            if time.monotonic() > deadline:
                pytest.fail(
                    f"airflow api-server not up after {STARTUP_SECONDS} s:\n{log.read_text()[-3000:]}"
                )
            time.sleep(1)
        yield url
    finally:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=15)
                break


@pytest.mark.slow
def test_ui_shows_the_in_process_run_and_its_task_log(tmp_path, monkeypatch) -> None:
    for name in LEAKY_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("LANDCOVER_HOME", str(make_tiny_home(tmp_path)))
    monkeypatch.setenv("WANDB_MODE", "offline")
    overrides = [*TINY_OVERRIDES, "training.epochs=2", "training.precision=32-true"]
    run_embedded("baseline", overrides, "ui-run")

    with api_server(free_port(), tmp_path / "api-server.log") as url:
        runs = requests.get(f"{url}/api/v2/dags/baseline/dagRuns", timeout=30).json()["dag_runs"]
        assert [(r["state"], r["run_type"]) for r in runs] == [("success", "manual")]
        run_id = runs[0]["dag_run_id"]
        page = f"{url}/dags/baseline/runs/{urllib.parse.quote(run_id, safe='')}/tasks/train_head"
        proc = run_headless_chromium(tmp_path, page, "--window-size=1500,1000", "--dump-dom")
        assert proc.returncode == 0, proc.stderr[-2000:]
        dom = re.sub(r"<[^>]+>", " ", proc.stdout)
        # The grid's tasks, the task's state and its log lines (per step and per epoch, from 1).
        for text in ("validate_data", "promote", "train_head", "Success"):
            assert text in dom, text
        assert "[train_head] starting (run ui-run)" in dom, dom[-3000:]
        assert "[train_head] epoch 2:" in dom and "[train_head] epoch 3:" not in dom
        assert "[train_head] done in" in dom
        shot = tmp_path / "airflow-ui.png"
        proc = run_headless_chromium(tmp_path, page, "--window-size=1500,1000", f"--screenshot={shot}")
        assert proc.returncode == 0 and shot.exists(), proc.stderr[-2000:]
    print(f"screenshot: {shot}")

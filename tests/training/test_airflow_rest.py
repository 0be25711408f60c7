"""End to end over HTTP: ``airflow standalone`` (as ``make airflow_ui`` starts it) runs a tiny
baseline DAG triggered and followed through the REST API v2 by :func:`run_remote`."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from core.config import REPO_ROOT
from core.env_file import AIRFLOW_ADMIN_PASSWORD_VAR, read_env
from setup import compose_env
from tests.ports import free_port
from training.airflow_runner import AirflowClient, default_credentials, run_remote
from training.airflow_ui import PASSWORDS_FILE, ensure_password, serve_ui, ui_env

STARTUP_SECONDS = 240
RUN_SECONDS = 900  # 6 tasks; each re-imports torch, Lightning and MLflow (30-45 s at load ~10)
# Environment that would send the run elsewhere than tmp_path.
LEAKY_ENV = ("MLFLOW_TRACKING_URI", "AWS_ENDPOINT_URL", "AWS_PROFILE", "LANDCOVER_OVERRIDES", "AIRFLOW_URL")


def _tail(path: Path, chars: int = 4000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else "(no log)"


def _wait_until(check, seconds: float, what: str, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(
                f"airflow standalone exited ({proc.returncode}) while waiting for {what}:\n{_tail(log)}"
            )
        try:
            if check():
                return
        except (requests.RequestException, RuntimeError):
            pass
        time.sleep(2)
    pytest.fail(f"timed out after {seconds:.0f} s waiting for {what}:\n{_tail(log)}")


@pytest.fixture
def standalone(tmp_path: Path) -> Iterator[tuple[str, str, subprocess.Popen, Path]]:
    """``python -m training.airflow_ui`` on a free port; everything under tmp_path. Yields
    ``(url, password, process, log)`` once the API is healthy and the baseline DAG is parsed."""
    port = free_port()
    airflow_home = tmp_path / "airflow"
    password = ensure_password(airflow_home)
    env = {k: v for k, v in os.environ.items() if k not in LEAKY_ENV}
    env.update(
        LANDCOVER_HOME=str(tmp_path / "home"),
        WANDB_MODE="offline",
        AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL="5",
    )
    log = tmp_path / "standalone.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "training.airflow_ui",
                "--port",
                str(port),
                "--airflow-home",
                str(airflow_home),
            ],
            cwd=REPO_ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: killed as one below
        )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_until(
            lambda: requests.get(f"{url}/api/v2/monitor/health", timeout=5).ok,
            STARTUP_SECONDS,
            "/api/v2/monitor/health",
            proc,
            log,
        )
        client = AirflowClient(url, "admin", password)
        _wait_until(
            lambda: bool(client._call("GET", "/dags/baseline")),
            STARTUP_SECONDS,
            "the baseline DAG",
            proc,
            log,
        )
        yield url, password, proc, log
    finally:
        for sig, grace in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(timeout=grace)
                break
            except subprocess.TimeoutExpired:
                continue
        with contextlib.suppress(ProcessLookupError):  # stragglers (task supervisors) of the group
            os.killpg(proc.pid, signal.SIGKILL)


def test_ui_password_is_generated_once(tmp_path: Path) -> None:
    first = ensure_password(tmp_path)
    assert len(first) >= 12
    assert ensure_password(tmp_path) == first
    assert (tmp_path / PASSWORDS_FILE).stat().st_mode & 0o077 == 0


def test_ui_env_matches_port_and_execution_api(tmp_path: Path) -> None:
    env = ui_env(8123, tmp_path / "af")
    assert env["AIRFLOW__API__HOST"] == "127.0.0.1"
    assert env["AIRFLOW__API__PORT"] == "8123"
    assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://127.0.0.1:8123/execution/"
    assert env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS"] == "admin:admin"
    assert env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"] == str(tmp_path / "af" / PASSWORDS_FILE)
    assert env["PATH"].split(os.pathsep)[0] == str(Path(sys.executable).parent)


def test_serve_ui_refuses_a_taken_port(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        with pytest.raises(SystemExit, match="is taken"):
            serve_ui(sock.getsockname()[1], tmp_path / "af")


def test_default_credentials_use_the_generated_password(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("LANDCOVER_HOME", str(tmp_path))
    monkeypatch.delenv("AIRFLOW_USERNAME", raising=False)
    monkeypatch.delenv("AIRFLOW_PASSWORD", raising=False)
    env_file = tmp_path / ".env"
    monkeypatch.setattr("core.env_file.ENV_FILE", env_file)  # where the REST runner looks
    with pytest.raises(SystemExit, match="No Airflow password"):  # no admin/admin fallback
        default_credentials()
    compose_env.ensure_env_file(env_file)  # the compose stack's generated .env
    stack_password = read_env(env_file)[AIRFLOW_ADMIN_PASSWORD_VAR]
    assert default_credentials() == ("admin", stack_password)
    password = ensure_password(tmp_path / "outputs" / "airflow")  # the one Airflow home
    assert default_credentials() == ("admin", password)
    monkeypatch.setenv("AIRFLOW_PASSWORD", "explicit")
    assert default_credentials() == ("admin", "explicit")


def test_run_remote_keeps_following_through_a_timeout(monkeypatch, capsys) -> None:
    """A busy API server (a read timeout) must not abort following a long run."""
    from training import airflow_runner

    class FakeClient:
        polls = 0

        def __init__(self, url: str, username: str, password: str) -> None:
            pass

        def trigger(self, dag_id: str, run_id: str, conf: dict) -> dict:
            return {}

        def task_states(self, dag_id: str, run_id: str) -> dict[str, str | None]:
            FakeClient.polls += 1
            if FakeClient.polls == 1:
                raise requests.ReadTimeout("busy")
            return {"promote": "success"}

        def dag_run(self, dag_id: str, run_id: str) -> dict:
            return {"state": "success"}

        def xcom(self, dag_id: str, run_id: str, task_id: str) -> object:
            return {"version": "1", "outcome": "promoted"}

    monkeypatch.setattr(airflow_runner, "AirflowClient", FakeClient)
    monkeypatch.setenv("AIRFLOW_PASSWORD", "unused-by-the-fake-client")
    result = run_remote("http://127.0.0.1:1", "baseline", [], "r1", poll_seconds=0)
    assert result["promote"]["outcome"] == "promoted"
    assert FakeClient.polls == 2
    assert "no answer from http://127.0.0.1:1 (ReadTimeout); retrying" in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.skipif(
    os.environ.get("RUN_AIRFLOW_REST") != "1",
    reason="opt-in (2-9 min: a real airflow standalone runs the DAG): set RUN_AIRFLOW_REST=1",
)
def test_rest_run_of_the_baseline_dag(standalone, tmp_path: Path, monkeypatch, capsys) -> None:
    from training.data.synthetic import generate_dataset

    url, password, _proc, log = standalone
    data_root = tmp_path / "data"
    generate_dataset(str(data_root), scenes_per_split=1, size=256, workers=1)
    overrides = [
        "training.epochs=1",
        "training.chips_per_scene=2",
        "training.val_chips_per_scene=1",
        "training.precision=32-true",
        "model.head_width=16",
        "data.chip_size=64",
        f"data.root_uri=file://{data_root}",
        f"storage.root_uri=file://{tmp_path}/artifacts",
        f"storage.registry_uri=file://{tmp_path}/registry",
        f"logging.mlflow.tracking_uri=sqlite:///{tmp_path}/mlflow.db",
        f"logging.mlflow.artifact_uri=file://{tmp_path}/mlruns",
    ]
    monkeypatch.setenv("AIRFLOW_USERNAME", "admin")
    monkeypatch.setenv("AIRFLOW_PASSWORD", password)

    started = time.monotonic()
    try:
        result = run_remote(
            url, "baseline", overrides, "rest-e2e", poll_seconds=3, timeout_seconds=RUN_SECONDS
        )
    except (RuntimeError, TimeoutError) as exc:
        pytest.fail(f"{exc}\n--- standalone log ---\n{_tail(log)}")
    seconds = time.monotonic() - started

    assert result["dag_run"]["state"] == "success"
    assert result["promote"] == {"version": result["promote"]["version"], "outcome": "promoted"}
    assert (tmp_path / "artifacts" / "runs" / "rest-e2e" / "steps" / "promote.json").exists()
    assert (tmp_path / "registry").is_dir()
    progress = capsys.readouterr().out
    assert "[airflow] promote: success" in progress
    # Unpausing the (unscheduled) DAG started nothing else: the requested run is the only one.
    runs = AirflowClient(url, "admin", password)._call("GET", "/dags/baseline/dagRuns")["dag_runs"]
    assert [r["dag_run_id"] for r in runs] == ["rest-e2e"]
    print(f"DAG run over REST took {seconds:.0f} s")

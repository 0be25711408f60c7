"""Run a training DAG: in-process (``dag.test``, SQLite metadata) or, with ``AIRFLOW_URL`` set
(or ``make airflow_ui`` running), on a running Airflow 3 through its REST API v2.

    python -m training.airflow_runner baseline [hydra overrides...]

This is what ``make train_baseline`` calls. The embedded path needs no Docker: the tasks run in
this machine's venv. Airflow's home is ``outputs/airflow`` (:func:`airflow_home`), shared with
``make airflow_ui``: one metadata database (``airflow.db``) and one log folder, so a run made
here shows in the UI's grid with its task logs. While the UI is running, this runner triggers
through its REST API instead (two writers on one SQLite file would lock each other).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import requests

from core import env_file
from core.config import REPO_ROOT, home

DAGS_FOLDER = REPO_ROOT / "training" / "dags"
TERMINAL_STATES = {"success", "failed"}
# Written by ``make airflow_ui`` while it serves: {"url": ..., "pid": ...}.
UI_STATE_FILE = "ui.json"
PASSWORDS_FILE = "simple_auth_manager_passwords.json.generated"


def airflow_home() -> Path:
    """The one Airflow home of this checkout (``<LANDCOVER_HOME>/outputs/airflow``): metadata
    database, task logs and the UI's password, shared by ``make train_baseline`` and ``make airflow_ui``."""
    return home() / "outputs" / "airflow"


def airflow_env(airflow_home_dir: Path | None = None) -> dict[str, str]:
    """Environment for the embedded Airflow: SQLite metadata in :func:`airflow_home`, our DAGs
    only, task logs at INFO (the per-step and per-epoch lines are what a user reads in the UI)."""
    airflow_home_dir = airflow_home_dir or airflow_home()
    airflow_home_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.update(
        AIRFLOW_HOME=str(airflow_home_dir),
        AIRFLOW__CORE__DAGS_FOLDER=str(DAGS_FOLDER),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION="False",
    )
    env.setdefault("AIRFLOW__LOGGING__LOGGING_LEVEL", "INFO")
    env.setdefault("PYTHONWARNINGS", "ignore")
    return env


def _airflow(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([str(Path(sys.executable).parent / "airflow"), *args], env=env, check=False)


def migrate_metadata(env: dict[str, str]) -> None:
    """``airflow db migrate`` once per metadata database (a few seconds on SQLite)."""
    stamp = Path(env["AIRFLOW_HOME"]) / ".migrated"
    if stamp.exists():
        return
    print("[airflow] creating the metadata database (SQLite)", flush=True)
    quiet = {**env, "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING"}  # a page of alembic lines otherwise
    if _airflow("db", "migrate", env=quiet).returncode != 0:
        raise RuntimeError("airflow db migrate failed; see the output above")
    stamp.touch()


def run_embedded(dag_id: str, overrides: Sequence[str], run_id: str) -> None:
    """Run every task of ``dag_id`` in-process (``dag.test``, see :mod:`training.airflow_embedded`),
    recorded in the shared metadata database with a log file per task for the UI."""
    env = airflow_env()
    migrate_metadata(env)
    conf = json.dumps({"overrides": list(overrides), "run_id": run_id})
    print(f"[airflow] running DAG {dag_id} in-process (run {run_id})", flush=True)
    result = subprocess.run(
        [sys.executable, "-m", "training.airflow_embedded", dag_id, conf], env=env, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"DAG {dag_id} failed (exit {result.returncode}); see the task output above")


def running_ui(airflow_home_dir: Path | None = None) -> str | None:
    """The URL of the ``make airflow_ui`` serving this Airflow home, or None when none is running."""
    path = (airflow_home_dir or airflow_home()) / UI_STATE_FILE
    try:
        state = json.loads(path.read_text())
        os.kill(int(state["pid"]), 0)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    try:
        if requests.get(f"{state['url']}/api/v2/monitor/health", timeout=5).ok:
            return str(state["url"])
    except requests.RequestException:
        pass
    return None


class AirflowClient:
    """The few REST API v2 calls needed to trigger a DAG and follow it."""

    def __init__(self, url: str, username: str, password: str, timeout: float = 30.0):
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.session = requests.Session()
        response = self.session.post(
            f"{self.url}/auth/token", json={"username": username, "password": password}, timeout=timeout
        )
        if response.status_code >= 400:
            raise RuntimeError(
                f"Airflow at {self.url} refused the login ({response.status_code}): {response.text[:200]}"
            )
        self.session.headers["Authorization"] = f"Bearer {response.json()['access_token']}"

    def _call(self, method: str, path: str, **kwargs) -> dict:
        response = self.session.request(method, f"{self.url}/api/v2{path}", timeout=self.timeout, **kwargs)
        if response.status_code >= 400:
            raise RuntimeError(f"{method} /api/v2{path} -> {response.status_code}: {response.text[:300]}")
        return response.json() if response.content else {}

    def trigger(self, dag_id: str, run_id: str, conf: dict) -> dict:
        """Start one manual run. A paused DAG is unpaused only when it has no schedule: unpausing
        a scheduled DAG would also start the latest scheduled run, which nobody asked for."""
        dag = self._call("GET", f"/dags/{dag_id}")
        if dag.get("is_paused"):
            if dag.get("timetable_summary"):
                raise RuntimeError(
                    f"DAG {dag_id} is paused and scheduled ({dag['timetable_summary']}): unpausing it "
                    "would also start a scheduled run. Unpause it in the UI if that is wanted, or "
                    "leave training.schedule unset (manual only)."
                )
            self._call("PATCH", f"/dags/{dag_id}", json={"is_paused": False})
        return self._call(
            "POST", f"/dags/{dag_id}/dagRuns", json={"dag_run_id": run_id, "logical_date": None, "conf": conf}
        )

    def dag_run(self, dag_id: str, run_id: str) -> dict:
        return self._call("GET", f"/dags/{dag_id}/dagRuns/{run_id}")

    def task_states(self, dag_id: str, run_id: str) -> dict[str, str | None]:
        found = self._call("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances")
        return {ti["task_id"]: ti["state"] for ti in found.get("task_instances", [])}

    def xcom(self, dag_id: str, run_id: str, task_id: str) -> object:
        entry = self._call(
            "GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/return_value"
        )
        return entry.get("value")


def default_credentials() -> tuple[str, str]:
    """``AIRFLOW_USERNAME``/``AIRFLOW_PASSWORD``; without a password, the one ``make airflow_ui``
    generated (in :func:`airflow_home`), else the compose stack's (``.env``, ``make env_file``)."""
    username = os.environ.get("AIRFLOW_USERNAME", "admin")
    password = os.environ.get("AIRFLOW_PASSWORD")
    if password is None:
        generated = airflow_home() / PASSWORDS_FILE
        if generated.exists():
            password = json.loads(generated.read_text()).get(username)
    if password is None and env_file.ENV_FILE.exists():
        password = env_file.read_env(env_file.ENV_FILE).get(env_file.AIRFLOW_ADMIN_PASSWORD_VAR)
    if not password:
        raise SystemExit(
            f"No Airflow password for {username!r}: set AIRFLOW_PASSWORD, run `make airflow_ui`, "
            f"or `make launch_training_infra` (its password is {env_file.AIRFLOW_ADMIN_PASSWORD_VAR} in .env)"
        )
    return username, password


def run_remote(
    url: str,
    dag_id: str,
    overrides: Sequence[str],
    run_id: str,
    poll_seconds: float = 10.0,
    timeout_seconds: float = 4 * 3600,
    result_task: str | None = "promote",
) -> dict:
    """Trigger ``dag_id`` on a running Airflow and wait for it, printing task progress; the
    result holds the DAG run and, under its name, ``result_task``'s XCom (None: no XCom)."""
    client = AirflowClient(url, *default_credentials())
    client.trigger(dag_id, run_id, {"overrides": list(overrides), "run_id": run_id})
    print(f"[airflow] triggered {dag_id} run {run_id} on {url}", flush=True)
    deadline = time.monotonic() + timeout_seconds
    shown: dict[str, str | None] = {}
    while time.monotonic() < deadline:
        try:
            states = client.task_states(dag_id, run_id)
            run = client.dag_run(dag_id, run_id)
        except requests.RequestException as exc:  # a busy or restarting API server: keep following
            print(f"[airflow] no answer from {url} ({type(exc).__name__}); retrying", flush=True)
            time.sleep(poll_seconds)
            continue
        for task_id, state in states.items():
            if shown.get(task_id) != state:
                print(f"[airflow] {task_id}: {state}", flush=True)
        shown = states
        if run["state"] in TERMINAL_STATES:
            if run["state"] != "success":
                raise RuntimeError(
                    f"DAG run {run_id} ended {run['state']}; see the task logs in the Airflow UI"
                )
            result: dict = {"dag_run": run}
            if result_task:
                result[result_task] = client.xcom(dag_id, run_id, result_task)
            return result
        time.sleep(poll_seconds)
    raise TimeoutError(f"DAG run {run_id} did not finish within {timeout_seconds:.0f} s")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("dag_id", help="baseline, useful or class_weighted")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. training.epochs=3")
    parser.add_argument("--run-id", default=None, help="name (or resume) a run; default: <dag>-<UTC time>")
    args = parser.parse_args(argv)

    from core.config import compose, training_variants, variant_overrides
    from training import pipeline

    if args.dag_id not in training_variants():
        parser.error(f"unknown DAG {args.dag_id!r}; choose from {', '.join(training_variants())}")
    run_id = args.run_id or pipeline.new_run_id(args.dag_id)
    started = time.perf_counter()
    url = os.environ.get("AIRFLOW_URL")
    if not url and (url := running_ui()):
        print(
            f"[airflow] make airflow_ui is serving this Airflow home at {url}: triggering there", flush=True
        )
    if url:
        result = run_remote(url, args.dag_id, args.overrides, run_id)
        print(f"\nDAG run {run_id} succeeded: {json.dumps(result['promote'])}")
        print(f"  task logs             {url}/dags/{args.dag_id}")
    else:
        # The promote task prints the run's summary (so the UI's log has it too): not repeated here.
        run_embedded(args.dag_id, args.overrides, run_id)
        run_uri = pipeline.run_uri_for(compose([*variant_overrides(args.dag_id), *args.overrides]), run_id)
        print(f"  run folder            {run_uri}")
        print("  Airflow UI            make airflow_ui (this run is in its grid, with task logs)")
    print(f"  wall time             {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

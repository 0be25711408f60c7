"""Airflow 3 with its UI on 127.0.0.1, without Docker: ``airflow standalone`` set up for this repo.

    python -m training.airflow_ui [--port 8080]       # what ``make airflow_ui`` runs

The API server (UI + REST API v2 + execution API) listens on ``127.0.0.1:<port>`` and the
workers reach the execution API at the matching ``http://127.0.0.1:<port>/execution/``. The
simple auth manager has one user, ``admin``, whose password is generated once and kept in
``$AIRFLOW_HOME/simple_auth_manager_passwords.json.generated``. The Airflow home is the one
``make train_baseline`` uses (:func:`training.airflow_runner.airflow_home`, ``outputs/airflow``):
one SQLite metadata database and one log folder, so runs made in-process show here with their
task logs. While the UI serves, ``make train_baseline`` triggers through it instead of writing
to the same SQLite file (it finds the UI through ``ui.json`` in the Airflow home).
DAGs are manual unless ``training.schedule`` is set; new DAGs start paused.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import socket
import sys
from collections.abc import Sequence
from pathlib import Path

from training.airflow_runner import PASSWORDS_FILE, UI_STATE_FILE, airflow_env, migrate_metadata

HOST = "127.0.0.1"
USERNAME = "admin"
SIMPLE_AUTH_MANAGER = "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"


def default_port() -> int:
    """``AIRFLOW_PORT`` or 8080."""
    return int(os.environ.get("AIRFLOW_PORT") or 8080)


def ui_url(port: int) -> str:
    return f"http://{HOST}:{port}"


def ensure_password(airflow_home: Path, username: str = USERNAME) -> str:
    """The user's password from the simple auth manager's passwords file; generated once."""
    path = airflow_home / PASSWORDS_FILE
    passwords: dict[str, str] = {}
    if path.exists() and path.read_text().strip():
        passwords = json.loads(path.read_text())
    if username not in passwords:
        passwords[username] = secrets.token_urlsafe(12)
        airflow_home.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(passwords) + "\n")
        path.chmod(0o600)
    return passwords[username]


def ui_env(port: int, airflow_home: Path | None = None) -> dict[str, str]:
    """Environment for ``airflow standalone`` on ``127.0.0.1:<port>`` (on top of :func:`airflow_env`)."""
    env = airflow_env(airflow_home)
    airflow_home = Path(env["AIRFLOW_HOME"])
    env.update(
        AIRFLOW__API__HOST=HOST,
        AIRFLOW__API__PORT=str(port),
        AIRFLOW__CORE__EXECUTION_API_SERVER_URL=f"{ui_url(port)}/execution/",
        AIRFLOW__CORE__AUTH_MANAGER=SIMPLE_AUTH_MANAGER,
        AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS=f"{USERNAME}:admin",
        AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE=str(airflow_home / PASSWORDS_FILE),
        # New DAGs wait for the user; with training.schedule unset nothing runs on its own anyway.
        AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION=os.environ.get(
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION", "True"
        ),
    )
    # standalone starts its components as plain `airflow ...`: this venv's must come first.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def prepare(port: int, airflow_home: Path | None = None) -> tuple[dict[str, str], str]:
    """Environment, password and migrated metadata for the UI; returns ``(env, password)``."""
    env = ui_env(port, airflow_home)
    password = ensure_password(Path(env["AIRFLOW_HOME"]))
    migrate_metadata(env)
    return env, password


def serve_ui(port: int | None = None, airflow_home: Path | None = None) -> None:
    """Print the URL and login, then replace this process with ``airflow standalone``."""
    port = port or default_port()
    if not port_free(port):
        raise SystemExit(f"port {port} on {HOST} is taken: pick another with AIRFLOW_PORT=<port>")
    env, password = prepare(port, airflow_home)
    print(
        f"\n  Airflow UI   {ui_url(port)}\n"
        f"  login        {USERNAME} / {password}\n"
        f"  (password kept in {env['AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE']})\n"
        f"  REST client  AIRFLOW_URL={ui_url(port)} AIRFLOW_PASSWORD={password} make train_baseline\n"
        "  DAGs are manual (training.schedule unset); Ctrl-C stops every component.\n",
        flush=True,
    )
    # execve keeps this pid: make train_baseline finds the UI through this file while it lives.
    state = {"url": ui_url(port), "pid": os.getpid()}
    (Path(env["AIRFLOW_HOME"]) / UI_STATE_FILE).write_text(json.dumps(state) + "\n")
    airflow = str(Path(sys.executable).parent / "airflow")
    os.execve(airflow, [airflow, "standalone"], env)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--port", type=int, default=default_port(), help="API/UI port (default: AIRFLOW_PORT or 8080)"
    )
    parser.add_argument(
        "--airflow-home", type=Path, default=None, help="default: <LANDCOVER_HOME>/outputs/airflow"
    )
    args = parser.parse_args(argv)
    serve_ui(args.port, args.airflow_home)
    return 0  # pragma: no cover - serve_ui does not return


if __name__ == "__main__":
    sys.exit(main())

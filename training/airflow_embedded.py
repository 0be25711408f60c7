"""``airflow dags test`` for this repo, with task logs the Airflow UI can show.

    python -m training.airflow_embedded <dag_id> '<conf json>'    # what run_embedded() starts

``dag.test()`` runs every task in this process and records the run in the metadata database,
but it writes no task log files: the UI would show the run with empty logs. A task-instance
listener (Airflow's public listener hooks) therefore tees this process's stdout and stderr, at
the file-descriptor level so that C libraries and every logger are included, into the file the
UI reads for that try (``[logging] base_log_folder`` / ``log_filename_template``) while the task
runs. The terminal still sees everything.

Run it in a fresh process with :func:`training.airflow_runner.airflow_env` as its environment:
Airflow reads its configuration (``AIRFLOW_HOME``) once, on import.
"""

from __future__ import annotations

import json
import os
import re
import sys
import threading
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
# A line of Airflow's console renderer: "2026-12-01T21:02:43.471087Z [info     ] message ..."
CONSOLE_LINE = re.compile(r"^(\d{4}-\d\d-\d\dT\S+Z) \[(\w+)\s*\] (.*)$")


def task_log_path(dag_id: str, run_id: str, task_id: str, map_index: int, try_number: int) -> Path:
    """Where the UI looks for the log of one task try: ``[logging] log_filename_template``
    rendered under ``[logging] base_log_folder`` (both public Airflow settings)."""
    import jinja2
    from airflow.configuration import conf

    ti = type("TI", (), {"dag_id": dag_id, "run_id": run_id, "task_id": task_id, "map_index": map_index})
    template = conf.get("logging", "log_filename_template")
    relative = jinja2.Template(template).render(ti=ti, try_number=try_number)
    return Path(conf.get("logging", "base_log_folder")).expanduser() / relative


def log_record(line: str, now: datetime | None = None) -> str:
    """One line of task output as the JSON record Airflow 3's log reader parses."""
    text = ANSI.sub("", line).rstrip("\r\n")
    stamp = (now or datetime.now(UTC)).isoformat()
    level = "error" if re.search(r"\b(ERROR|Traceback|CRITICAL)\b", text) else "info"
    if console := CONSOLE_LINE.match(text):  # already a log record: keep its time and level
        stamp, level, text = console.group(1), console.group(2).lower(), console.group(3).rstrip()
    return json.dumps({"timestamp": stamp, "event": text, "level": level, "logger": "task"}) + "\n"


class _Tee:
    """While active, fds 1 and 2 go through a pipe; a thread copies each line to the original
    stdout and, as a JSON record, to the log file."""

    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        sys.stdout.flush()
        sys.stderr.flush()
        self._saved = (os.dup(1), os.dup(2))
        read_fd, write_fd = os.pipe()
        self._read = os.fdopen(read_fd, "rb", buffering=0)
        os.dup2(write_fd, 1)
        os.dup2(write_fd, 2)
        os.close(write_fd)
        self._log = path.open("a", encoding="utf-8")
        self._thread = threading.Thread(target=self._copy, name="task-log-tee", daemon=True)
        self._thread.start()

    def _copy(self) -> None:
        terminal = self._saved[0]
        pending = b""
        while chunk := self._read.read(65536):
            os.write(terminal, chunk)
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for raw in lines:
                self._write(raw)
        if pending:
            self._write(pending)

    def _write(self, raw: bytes) -> None:
        # Progress bars redraw with \r: keep only the last state of the line.
        text = raw.decode("utf-8", errors="replace").split("\r")[-1]
        if text.strip():
            self._log.write(log_record(text))
            self._log.flush()

    def close(self) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(self._saved[0], 1)
        os.dup2(self._saved[1], 2)  # the pipe's last writer is gone: the thread sees EOF
        self._thread.join(timeout=10)
        self._read.close()
        self._log.close()
        for fd in self._saved:
            os.close(fd)


class TaskLogFiles:
    """Airflow listener: tee each task's output into the log file the UI reads."""

    def __init__(self) -> None:
        self._tee: _Tee | None = None

    def _start(self, task_instance: Any) -> None:
        self._stop()
        path = task_log_path(
            task_instance.dag_id,
            task_instance.run_id,
            task_instance.task_id,
            getattr(task_instance, "map_index", -1),
            task_instance.try_number,
        )
        self._tee = _Tee(path)

    def _stop(self) -> None:
        if self._tee is not None:
            self._tee.close()
            self._tee = None

    def hooks(self) -> object:
        """The object to register with the listener manager (pluggy needs hookimpl markers)."""
        from airflow.listeners import hookimpl

        owner = self

        class _Hooks:
            @hookimpl
            def on_task_instance_running(self, previous_state: Any, task_instance: Any) -> None:
                owner._start(task_instance)

            @hookimpl
            def on_task_instance_success(self, previous_state: Any, task_instance: Any) -> None:
                owner._stop()

            @hookimpl
            def on_task_instance_failed(
                self, previous_state: Any, task_instance: Any, error: BaseException | str | None
            ) -> None:
                owner._stop()

            @hookimpl
            def on_task_instance_skipped(self, previous_state: Any, task_instance: Any) -> None:
                owner._stop()

        return _Hooks()


def dag_test(dag_id: str, conf: dict[str, Any]) -> str:
    """Run ``dag_id`` once in-process (``dag.test``) with task log files; returns the run state."""
    from airflow.dag_processing.dagbag import DagBag
    from airflow.sdk.listener import get_listener_manager

    from training.airflow_runner import DAGS_FOLDER

    bag = DagBag(dag_folder=str(DAGS_FOLDER))
    if dag_id not in bag.dags:
        raise SystemExit(f"DAG {dag_id!r} not found in {DAGS_FOLDER}; import errors: {bag.import_errors}")
    logs = TaskLogFiles()
    get_listener_manager().add_listener(logs.hooks())
    try:
        run = bag.dags[dag_id].test(run_conf=conf)
    finally:
        logs._stop()
    print(f"[airflow] DAG run {run.run_id}: {run.state}", flush=True)
    return str(run.state)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 2:
        raise SystemExit("usage: python -m training.airflow_embedded <dag_id> '<conf json>'")
    return 0 if dag_test(args[0], json.loads(args[1])) == "success" else 1


if __name__ == "__main__":
    sys.exit(main())

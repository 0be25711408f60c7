"""Fault-injection harness: a private Postgres cluster to stop and start, an S3 proxy that answers
with bursts of 5xx and throttling, a child process to SIGKILL, and the ledger's invariants.

Nothing here stands in for the system under test: the chain, its handlers, the state-machine
definition, Postgres and the moto S3 server are the real ones. What the harness adds is the fault.
"""

from __future__ import annotations

import glob
import http.client
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from inference import handlers, transactions
from inference.ledger import RunStatus, SceneStatus
from inference.ledger.models import Block, BlockStatus, Prediction, Run, Scene
from inference.settings import ChainSettings
from setup.tools import local_statemachine as local
from tests.ports import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
#: Set by `make faults`: the long cases (a 45 s database outage) run too.
FULL = os.environ.get("FAULTS_FULL") == "1"
OUTAGE_S = 45.0 if FULL else 4.0


# --- a Postgres cluster of the test's own --------------------------------------------------------


class PrivatePostgres:
    """``initdb`` + ``pg_ctl`` on a free loopback port, owned by this test (so it may stop it).

    As root, the server runs as the ``postgres`` user (initdb refuses root).
    """

    def __init__(self) -> None:
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
        if not found and shutil.which("pg_ctl") is None:
            raise RuntimeError("no pg_ctl found: install PostgreSQL's server binaries")
        self.bindir = Path(found[-1]).parent if found else Path(shutil.which("pg_ctl") or "").parent
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="faults-pg-"))
        self.data = self.root / "data"
        self.url = f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str) -> None:
        cmd = [str(self.bindir / args[0]), *args[1:]]
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        subprocess.run(cmd, check=True, capture_output=True, timeout=120)

    def init(self) -> PrivatePostgres:
        self.root.chmod(0o777)
        self.data.mkdir()
        if os.geteuid() == 0:
            shutil.chown(self.data, "postgres", "postgres")
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8")
        return self.start()

    def start(self) -> PrivatePostgres:
        opts = f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={self.root} -c fsync=off"
        self._run("pg_ctl", "-D", str(self.data), "-o", opts, "-l", str(self.root / "log"), "-w", "start")
        return self

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def destroy(self) -> None:
        with suppress(subprocess.CalledProcessError):
            self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


# --- an S3 endpoint that fails in bursts -----------------------------------------------------------

_ERROR_BODY = (
    '<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code><Message>{message}</Message>'
    "<RequestId>fault-proxy</RequestId></Error>"
)
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "upgrade", "proxy-connection"}


class S3FaultProxy:
    """A loopback HTTP proxy in front of an S3 API that fails ``burst`` requests in every ``period``.

    The failures alternate between ``503 SlowDown`` (throttling) and ``500 InternalError``. Every
    other request is forwarded unchanged. ``injected`` counts the failures served.
    """

    def __init__(self, target: str, period: int = 6, burst: int = 2) -> None:
        self.target = target.removeprefix("http://")
        self.period, self.burst = period, burst
        self.requests = self.injected = 0
        self.enabled = True
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    chunks = []
                    while True:
                        size = int(self.rfile.readline().strip().split(b";")[0], 16)
                        if size == 0:
                            self.rfile.readline()
                            return b"".join(chunks)
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _reply(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
                self.send_response(status)
                length = str(len(body))
                for key, value in headers:
                    if key.lower() == "content-length" and self.command == "HEAD":
                        length = value  # a HEAD answers with the object's size and no body
                    elif key.lower() not in _HOP_BY_HOP and key.lower() != "content-length":
                        self.send_header(key, value)
                self.send_header("Content-Length", length)
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def _handle(self) -> None:
                body = self._body()
                fault = proxy._next_fault()
                if fault is not None:
                    status, code = fault
                    text = _ERROR_BODY.format(code=code, message="injected by the fault proxy").encode()
                    self._reply(status, [("Content-Type", "application/xml")], text)
                    return
                conn = http.client.HTTPConnection(proxy.target, timeout=60)
                try:
                    headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
                    headers.pop("Content-Length", None)
                    conn.request(self.command, self.path, body=body or None, headers=headers)
                    response = conn.getresponse()
                    self._reply(response.status, response.getheaders(), response.read())
                finally:
                    conn.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def _next_fault(self) -> tuple[int, str] | None:
        with self._lock:
            self.requests += 1
            if not self.enabled or (self.requests % self.period) >= self.burst:
                return None
            self.injected += 1
            return (503, "SlowDown") if self.injected % 2 else (500, "InternalError")

    def __enter__(self) -> S3FaultProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


# --- running the chain ---------------------------------------------------------------------------


def run_chain(settings: ChainSettings, execution_id: str, handler_overrides: dict[str, Any] | None = None):
    """One execution of the real state machine with the real handlers (some may be wrapped)."""
    handlers.configure(settings)
    try:
        routes = {**local.default_handlers(), **(handler_overrides or {})}
        return local.run_execution(settings.manifest_prefix, execution_id=execution_id, handlers=routes)
    finally:
        handlers.configure(None)


def child_command(settings: ChainSettings, execution_id: str, stall_marker: Path | None = None) -> list[str]:
    """The command that runs one execution in a child process (see :mod:`tests.faults.child`)."""
    config = Path(tempfile.mkstemp(prefix="faults-settings-", suffix=".json")[1])
    config.write_text(settings.model_dump_json())
    cmd = [sys.executable, "-m", "tests.faults.child", str(config), execution_id]
    return [*cmd, "--stall-marker", str(stall_marker)] if stall_marker else cmd


@contextmanager
def ledger(settings: ChainSettings) -> Iterator[Any]:
    with transactions.session(settings) as s:
        yield s


# --- the invariants --------------------------------------------------------------------------------


def assert_consistent(settings: ChainSettings, good: int, quarantined: dict[str, str] | None = None) -> dict:
    """Every good scene predicted exactly once, every bad input quarantined with its reason, run
    totals exact, and nothing left in a non-terminal state. Returns a few figures."""
    quarantined = quarantined or {}
    with ledger(settings) as s:
        scenes = list(s.execute(sa.select(Scene)).scalars())
        runs = list(s.execute(sa.select(Run)).scalars())
        preds = list(s.execute(sa.select(Prediction)).scalars())
        blocks = list(s.execute(sa.select(Block)).scalars())
        sources = {uri: scene for scene in scenes for uri in [scene.source_uri]}
    predicted = [sc for sc in scenes if sc.status == SceneStatus.predicted]
    stuck = [
        (sc.id, sc.status.value)
        for sc in scenes
        if sc.status not in (SceneStatus.predicted, SceneStatus.quarantined)
    ]
    assert not stuck, f"scenes left in a non-terminal state: {stuck}"
    assert len(predicted) == good, [
        (sc.source_uri, sc.status.value, sc.error, sc.error_message) for sc in scenes
    ]
    per_scene: dict[int, int] = {}
    for p in preds:
        per_scene[p.scene_id] = per_scene.get(p.scene_id, 0) + 1
    assert sorted(per_scene) == sorted(sc.id for sc in predicted) and set(per_scene.values()) == {1}
    # A scene is predicted only once all of its blocks are.
    assert {b.scene_id for b in blocks if b.status != BlockStatus.predicted}.isdisjoint(per_scene)
    for uri, reason in quarantined.items():
        scene = sources[uri]
        assert scene.status == SceneStatus.quarantined and scene.error == reason, (uri, scene.error)
    open_runs = [(r.execution_id, r.status.value) for r in runs if r.status == RunStatus.running]
    assert not open_runs, f"runs left running: {open_runs}"
    by_run: dict[int | None, int] = {}
    for p in preds:
        by_run[p.run_id] = by_run.get(p.run_id, 0) + 1
    assert None not in by_run, "a prediction belongs to no run"
    for r in runs:
        assert r.scenes_predicted == by_run.get(r.id, 0), (
            r.execution_id,
            r.scenes_predicted,
            by_run.get(r.id),
        )
    assert sum(r.scenes_predicted for r in runs) == good
    return {
        "runs": {r.execution_id: (r.status.value, r.scenes_predicted, r.scenes_failed) for r in runs},
        "attempts": sorted(sc.attempts for sc in predicted),
    }


def wait_for(predicate: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(0.1)


def summary_line(case: str, started: float, figures: dict) -> str:
    return json.dumps({"case": case, "seconds": round(time.monotonic() - started, 1), **figures}, default=str)

"""A moto server on loopback that also answers the Step Functions calls moto lacks.

The AWS provider calls ``ValidateStateMachineDefinition`` before creating or updating a state
machine, and ``ListStateMachineVersions`` when reading one; moto's server implements neither.
This wraps moto's WSGI app and answers those itself: the definition must be JSON with
``StartAt`` and ``States`` (the real ASL checks are the asl-validator test's job), and there are
no published versions. Everything else goes to moto unchanged.

Usage::

    with MotoSfnServer() as endpoint:   # e.g. "http://127.0.0.1:54321"
        ...
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from threading import Thread
from typing import Any

from tests.ports import free_port

VALIDATE_TARGET = "AWSStepFunctions.ValidateStateMachineDefinition"
# The provider reads a machine's published versions after creating it; moto lacks the action.
# This stack never publishes versions, so "none" is the true answer.
LIST_VERSIONS_TARGET = "AWSStepFunctions.ListStateMachineVersions"


def validate_definition(body: bytes) -> dict[str, Any]:
    """The ValidateStateMachineDefinition answer for a request body."""
    try:
        definition = json.loads(json.loads(body or b"{}").get("definition", ""))
        ok = (
            isinstance(definition, dict)
            and "StartAt" in definition
            and isinstance(definition.get("States"), dict)
        )
        message = "definition needs StartAt and States"
    except (ValueError, TypeError, AttributeError) as exc:
        ok, message = False, f"definition is not JSON: {exc}"
    if ok:
        return {"result": "OK", "diagnostics": []}
    return {
        "result": "FAIL",
        "diagnostics": [{"severity": "ERROR", "code": "SCHEMA_VALIDATION_FAILED", "message": message}],
    }


class ValidateDefinitionMiddleware:
    """WSGI middleware: answer ValidateStateMachineDefinition, pass everything else to moto."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.validations = 0

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        target = environ.get("HTTP_X_AMZ_TARGET")
        if target in (VALIDATE_TARGET, LIST_VERSIONS_TARGET):
            # Read the whole body: an unread body breaks the kept-alive connection.
            body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
            if target == VALIDATE_TARGET:
                self.validations += 1
                return self._json(start_response, validate_definition(body))
            return self._json(start_response, {"stateMachineVersions": []})
        return self.app(environ, start_response)

    @staticmethod
    def _json(start_response: Any, payload: dict[str, Any]) -> list[bytes]:
        answer = json.dumps(payload).encode()
        start_response(
            "200 OK", [("Content-Type", "application/x-amz-json-1.0"), ("Content-Length", str(len(answer)))]
        )
        return [answer]


class MotoSfnServer:
    """moto's server (all services) on 127.0.0.1, plus ValidateStateMachineDefinition."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._server: Any = None
        self._thread: Thread | None = None
        self.app: ValidateDefinitionMiddleware | None = None

    def start(self) -> str:
        from moto.moto_server.threaded_moto_server import MotoRequestHandler
        from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
        from werkzeug.serving import make_server

        class QuietHandler(MotoRequestHandler):
            def log_request(self, *args: Any, **kwargs: Any) -> None:  # one line per call is noise here
                pass

        self.app = ValidateDefinitionMiddleware(DomainDispatcherApplication(create_backend_app))
        self._server = make_server(
            "127.0.0.1", self.port, self.app, threaded=True, request_handler=QuietHandler
        )
        self._thread = Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self.endpoint

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class MotoServerProcess:
    """Plain moto server in its own process on 127.0.0.1.

    Unlike the in-process servers, it shares no backend state with an in-process ``mock_aws``
    (the local Step Functions runner's emulator), so a client that reaches the wrong one shows.

    Usage::

        with MotoServerProcess() as endpoint:   # e.g. "http://127.0.0.1:54321"
            ...
    """

    def __init__(self, port: int | None = None, start_timeout_s: float = 60.0) -> None:
        self.port = port or free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.start_timeout_s = start_timeout_s
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> str:
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + self.start_timeout_s
        while True:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", self.port)) == 0:
                    return self.endpoint
            if self._proc.poll() is not None or time.monotonic() > deadline:
                code = self._proc.poll()
                self.stop()
                raise RuntimeError(f"moto server did not start on port {self.port} (exit code {code})")
            time.sleep(0.1)

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait(timeout=30)
            self._proc = None

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


if __name__ == "__main__":  # pragma: no cover - manual use: python tests/infra/moto_sfn_server.py
    server = MotoSfnServer(port=5055)
    print(f"moto (+ ValidateStateMachineDefinition) on {server.start()}; Ctrl-C stops it")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        server.stop()

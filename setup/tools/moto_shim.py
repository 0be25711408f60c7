"""The one place the local runner depends on how moto's Step Functions interpreter works inside.

Everything here is checked against the installed moto before a run starts:
:func:`check_moto_version` raises :class:`LocalRunError` naming the found and the supported
versions, so an upgrade fails at once with a clear message instead of hanging or running the
wrong code. To support a new moto: re-read the facts below in its source, rerun
``tests/inference/test_statemachine.py`` and add the version to :data:`SUPPORTED_MOTO_VERSIONS`.

What the runner relies on (moto 5.2.5):

1. **moto's server runs the interpreter; the interpreter calls back through boto3's default
   session.** The emulator is moto's own server (``moto.server.ThreadedMotoServer``, public) on
   a free loopback port in this process, switched to executing definitions with server mode's
   public config call (``POST /moto-api/config``, ``stepfunctions.execute_state_machine``; the
   previous setting is put back afterwards). Outside ``mock_aws``, the interpreter's Tasks and
   its Map ItemReader build their clients with ``boto3.client(...)`` and the endpoint
   ``http://localhost:$MOTO_PORT`` (``asl/utils/boto_client.py``), so ``MOTO_PORT`` is set to the
   server's port while a run is active, and a default session of the runner's own is installed
   (``boto3.setup_default_session``; the previous one is put back afterwards). On that session a
   ``before-send.lambda.Invoke`` handler (botocore's public event system: a handler that returns
   an ``AWSResponse`` fulfils the request, none is sent) passes each Lambda invoke to the route
   registered for the function's name prefix.

   No ``mock_aws``: nothing in this process is intercepted, so the storage layer's own sessions
   reach whatever they are configured for (``AWS_ENDPOINT_URL``, a moto server, real S3), while
   every emulator client is given the emulator's URL explicitly and never follows
   ``AWS_ENDPOINT_URL`` (the default session also sets botocore's
   ``ignore_configured_endpoint_urls``, and no proxy: the server is on loopback).

2. **moto's ASL parser is generated with ANTLR 4.13**, while Hydra/omegaconf pin the 4.9 runtime
   in the same environment and the two cannot share the ``antlr4`` name. ``make setup_env``
   installs a 4.13 runtime into its own folder (``.cache/sfn-antlr4``, or ``SFN_ANTLR4_PATH``);
   while a run is active the ``antlr4`` modules in ``sys.modules`` are swapped for it, and the 4.9
   ones are put back when the last active run ends. Nothing is installed at run time.

3. **moto's backends are process-global**: the emulator's state machines and manifest bucket
   live next to anything else moto holds in this process (an in-process test server's buckets).
   The server is started on first use and kept, idle, for the life of the process.

4. **moto's Wait state compares a timestamp with local time.** ``Timestamp._get_wait_seconds``
   (``asl/component/state/wait/wait_function/timestamp.py``) parses the ``...Z`` timestamp into
   a naive datetime and subtracts ``datetime.datetime.now()``, the machine's local time: outside
   UTC a triggered run would wait hours too long, or not at all. While a run is active that
   module's ``datetime`` is a stand-in whose ``datetime.now()`` is naive UTC (put back afterwards).
   It also truncates to whole seconds, so a wait may end up to a second early
   (:data:`inference.trigger.WAIT_MARGIN_S` covers that).

Overlapping runs in one process share one emulator (reference-counted); each run registers its
own Lambda route under a unique function-name prefix.
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import importlib
import importlib.metadata
import io
import json
import logging
import os
import socket
import sys
import threading
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any
from urllib.parse import unquote, urlsplit

from botocore.awsrequest import AWSPreparedRequest, AWSResponse, HeadersDict

from core.config import REPO_ROOT

#: moto versions this shim was checked against (the three facts in the module doc).
SUPPORTED_MOTO_VERSIONS = frozenset({"5.2.5"})
#: The ANTLR runtime series moto's generated ASL parser needs.
ANTLR_SERIES = "4.13"
#: The make target that installs the runtime into :func:`antlr_path`.
ANTLR_MAKE_TARGET = "setup_env"
REGION = "us-east-1"
_FAKE_KEYS = {"aws_access_key_id": "local", "aws_secret_access_key": "local"}
_INVOKE_EVENT = "before-send.lambda.Invoke"
_MOTO_PORT = "MOTO_PORT"

_WAIT_TIMESTAMP_MODULE = "moto.stepfunctions.parser.asl.component.state.wait.wait_function.timestamp"


class _UtcNaiveDatetime(datetime.datetime):
    """``datetime.now()`` as naive UTC: what moto's Wait compares its (naive UTC) timestamps with."""

    @classmethod
    def now(cls, tz: datetime.tzinfo | None = None) -> _UtcNaiveDatetime:  # type: ignore[override]
        now = datetime.datetime.now(tz or datetime.UTC)
        return (
            cls.fromtimestamp(now.timestamp(), tz)
            if tz
            else cls(*now.replace(tzinfo=None).timetuple()[:6], now.microsecond)
        )


#: Stands in for the ``datetime`` module inside moto's Wait-timestamp module (fact 4).
_UTC_DATETIME_MODULE = SimpleNamespace(datetime=_UtcNaiveDatetime)

#: Answers one Lambda invoke: (function ARN, request payload) -> the HTTP response.
LambdaRoute = Callable[[str, bytes], AWSResponse]


class LocalRunError(RuntimeError):
    """The local interpreter could not be set up or did not finish."""


# ---------------------------------------------------------------------------------------------
# Versions
# ---------------------------------------------------------------------------------------------


def installed_moto_version() -> str:
    """The installed moto's version."""
    return importlib.metadata.version("moto")


def check_moto_version(found: str | None = None) -> str:
    """Raise :class:`LocalRunError` unless ``found`` (default: the installed moto) is supported."""
    found = found or installed_moto_version()
    if found not in SUPPORTED_MOTO_VERSIONS:
        supported = ", ".join(sorted(SUPPORTED_MOTO_VERSIONS))
        raise LocalRunError(
            f"moto {found} is installed, but the local Step Functions runner supports moto {supported} "
            "only: it relies on how that moto's interpreter creates its AWS clients and on its ANTLR "
            "parser (see setup/tools/moto_shim.py). Install the pinned moto (make setup_env) "
            "or check the shim against this moto and add the version to SUPPORTED_MOTO_VERSIONS."
        )
    return found


# ---------------------------------------------------------------------------------------------
# ANTLR 4.13 for moto's ASL parser
# ---------------------------------------------------------------------------------------------


def antlr_path() -> Path:
    """Folder holding the antlr4 4.13 runtime (``SFN_ANTLR4_PATH`` or ``<repo>/.cache/sfn-antlr4``)."""
    return Path(os.environ.get("SFN_ANTLR4_PATH") or REPO_ROOT / ".cache" / "sfn-antlr4")


def require_antlr_runtime() -> Path:
    """The antlr4 4.13 folder; :class:`LocalRunError` naming the make target if it is missing."""
    target = antlr_path()
    versions = [
        d.version
        for d in importlib.metadata.distributions(path=[str(target)])
        if (d.metadata["Name"] or "").lower().replace("_", "-") == "antlr4-python3-runtime"
    ]
    ok = (target / "antlr4" / "__init__.py").exists() and any(
        v == ANTLR_SERIES or v.startswith(ANTLR_SERIES + ".") for v in versions
    )
    if not ok:
        found = f"found {', '.join(versions)}" if versions else "none found"
        raise LocalRunError(
            f"moto's Step Functions parser needs antlr4-python3-runtime {ANTLR_SERIES}.x in {target} "
            f"({found}; Hydra pins 4.9 in the main environment, so it lives apart). "
            f"Run `make {ANTLR_MAKE_TARGET}` to install it there, or point SFN_ANTLR4_PATH at such a folder."
        )
    return target


def _antlr_names() -> list[str]:
    return [k for k in sys.modules if k == "antlr4" or k.startswith("antlr4.")]


class _AntlrSwap:
    """``antlr4`` in ``sys.modules`` swapped for the 4.13 runtime between :meth:`enter` and :meth:`exit`."""

    def __init__(self) -> None:
        self.modules_413: dict[str, ModuleType] = {}  # kept between runs: imported once
        self.saved: dict[str, ModuleType] = {}
        self.path: str | None = None

    def enter(self) -> None:
        path = str(require_antlr_runtime())
        self.saved = {k: sys.modules.pop(k) for k in _antlr_names()}
        sys.modules.update(self.modules_413)
        sys.path.insert(0, path)
        self.path = path
        try:
            antlr4 = importlib.import_module("antlr4")
            if not str(antlr4.__file__).startswith(path):
                raise LocalRunError(f"expected antlr4 from {path}, got {antlr4.__file__}")
        except BaseException:
            self.exit()
            raise

    def exit(self) -> None:
        if self.path is not None:
            with contextlib.suppress(ValueError):
                sys.path.remove(self.path)
            self.path = None
        self.modules_413 = {k: sys.modules.pop(k) for k in _antlr_names()}
        sys.modules.update(self.saved)
        self.saved = {}


# ---------------------------------------------------------------------------------------------
# The emulator: moto's server, the default session, Lambda routes
# ---------------------------------------------------------------------------------------------


class _RawBody(io.BytesIO):
    """A response body as botocore reads it (``read`` and ``stream``)."""

    def stream(self, **_: Any) -> Iterator[bytes]:
        while chunk := self.read(65536):
            yield chunk


def http_response(url: str, status: int, body: bytes, headers: dict[str, str] | None = None) -> AWSResponse:
    """An ``AWSResponse`` that fulfils a request in a ``before-send`` handler."""
    all_headers = HeadersDict({"Content-Type": "application/json", "Content-Length": str(len(body))})
    all_headers.update(headers or {})
    return AWSResponse(url, status, all_headers, _RawBody(body))


def function_arn_of(request: AWSPreparedRequest) -> str:
    """The function name or ARN of a Lambda ``Invoke`` request (``/2015-03-31/functions/<name>/invocations``)."""
    path = urlsplit(request.url).path
    return unquote(path.split("/functions/", 1)[1].split("/", 1)[0])


class _Emulator:
    """The process-wide emulator, started by the first active run and stopped by the last."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.users = 0
        self.routes: dict[str, LambdaRoute] = {}
        self.session: Any = None
        self.endpoint: str | None = None
        self._stack: contextlib.ExitStack | None = None
        self._server: Any = None
        self._antlr = _AntlrSwap()

    def start(self) -> None:
        import boto3
        import botocore.session
        from botocore.config import Config
        from moto.core.config import default_user_config

        check_moto_version()
        with contextlib.ExitStack() as stack:
            self._antlr.enter()
            stack.callback(self._antlr.exit)
            importlib.import_module("moto.stepfunctions.parser.models")
            waits = importlib.import_module(_WAIT_TIMESTAMP_MODULE)
            stack.callback(setattr, waits, "datetime", waits.datetime)
            waits.datetime = _UTC_DATETIME_MODULE

            endpoint, port = self._server_endpoint()
            previous_sfn = copy.deepcopy(default_user_config.get("stepfunctions", {}))
            _set_server_config(endpoint, {"stepfunctions": {"execute_state_machine": True}})
            stack.callback(_set_server_config, endpoint, {"stepfunctions": previous_sfn})

            previous_port = os.environ.get(_MOTO_PORT)
            os.environ[_MOTO_PORT] = str(port)  # where the interpreter's clients send their calls
            stack.callback(_restore_env, _MOTO_PORT, previous_port)

            previous = boto3.DEFAULT_SESSION
            core = botocore.session.Session()
            core.set_config_variable("ignore_configured_endpoint_urls", True)
            core.set_default_client_config(Config(proxies={}))  # loopback: never through HTTP(S)_PROXY
            boto3.setup_default_session(botocore_session=core, region_name=REGION, **_FAKE_KEYS)
            session = boto3.DEFAULT_SESSION
            stack.callback(setattr, boto3, "DEFAULT_SESSION", previous)
            session.events.register_first(_INVOKE_EVENT, self._invoke)
            stack.callback(session.events.unregister, _INVOKE_EVENT, self._invoke)

            self.session, self.endpoint = session, endpoint
            self._stack = stack.pop_all()

    def _server_endpoint(self) -> tuple[str, int]:
        """The in-process moto server's URL and port, started on first use and kept for the process
        (a daemon thread, idle between runs: stopping it would cost every run half a second)."""
        from moto.server import ThreadedMotoServer

        if self._server is None:
            werkzeug_log = logging.getLogger("werkzeug")  # one line per request otherwise
            if werkzeug_log.level == logging.NOTSET:
                werkzeug_log.setLevel(logging.WARNING)
            server = ThreadedMotoServer(ip_address="127.0.0.1", port=_free_port(), verbose=False)
            server.start()
            self._server = server
        host, port = self._server.get_host_and_port()
        return f"http://{host}:{port}", port

    def stop(self) -> None:
        stack, self._stack, self.session, self.endpoint = self._stack, None, None, None
        if stack is not None:
            stack.close()

    def _invoke(self, request: AWSPreparedRequest, **_: Any) -> AWSResponse:
        arn = function_arn_of(request)
        name = arn.rsplit(":", 1)[-1]
        with self.lock:
            route = next((r for prefix, r in self.routes.items() if name.startswith(prefix)), None)
        if route is None:
            body = {"Type": "User", "Message": f"Function not found: {arn} (no local route)"}
            return http_response(
                request.url, 404, json.dumps(body).encode(), {"x-amzn-ErrorType": "ResourceNotFoundException"}
            )
        raw = request.body or b"{}"
        return route(arn, raw.encode("utf-8") if isinstance(raw, str) else bytes(raw))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _set_server_config(endpoint: str, config: dict[str, Any]) -> None:
    """moto server mode's public config call (``POST /moto-api/config``)."""
    request = urllib.request.Request(
        f"{endpoint}/moto-api/config",
        data=json.dumps(config).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    no_proxy = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with no_proxy.open(request, timeout=30) as answer:
        answer.read()


def _restore_env(name: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value


class EmulatorClients:
    """Clients of the emulator for the runner itself: explicit endpoint, fake keys."""

    def __init__(self, session: Any, endpoint: str) -> None:
        self.session = session
        self.endpoint = endpoint

    def client(self, service: str) -> Any:
        """A boto3 client for ``service`` at the emulator."""
        return self.session.client(service, endpoint_url=self.endpoint)


_emulator = _Emulator()


@contextlib.contextmanager
def emulator(function_prefix: str, route: LambdaRoute) -> Iterator[EmulatorClients]:
    """moto's Step Functions interpreter in a moto server in this process, for one run.

    Lambda functions whose name starts with ``function_prefix`` are answered by ``route``. Yields
    the runner's clients of the emulator. Raises :class:`LocalRunError` on an unsupported moto or
    a missing ANTLR runtime.
    """
    with _emulator.lock:
        if function_prefix in _emulator.routes:
            raise LocalRunError(f"a local run with function prefix {function_prefix!r} is already active")
        if _emulator.users == 0:
            _emulator.start()
        _emulator.users += 1
        _emulator.routes[function_prefix] = route
        clients = EmulatorClients(_emulator.session, str(_emulator.endpoint))
    try:
        yield clients
    finally:
        with _emulator.lock:
            _emulator.routes.pop(function_prefix, None)
            _emulator.users -= 1
            if _emulator.users == 0:
                _emulator.stop()


def import_interpreter(module: str = "moto.stepfunctions.parser.models") -> ModuleType:
    """Import a module of moto's Step Functions interpreter (its parser needs the 4.13 runtime)."""
    if module in sys.modules:
        return sys.modules[module]
    with _emulator.lock:
        if _emulator.users:
            return importlib.import_module(module)
        _emulator._antlr.enter()
        try:
            return importlib.import_module(module)
        finally:
            _emulator._antlr.exit()

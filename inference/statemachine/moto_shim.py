"""The one place the local runner depends on how moto's Step Functions interpreter works inside.

Everything here is checked against the installed moto before a run starts:
:func:`check_moto_version` raises :class:`LocalRunError` naming the found and the supported
versions, so an upgrade fails at once with a clear message instead of hanging or running the
wrong code. To support a new moto: re-read the three facts below in its source, rerun
``tests/inference/test_statemachine.py`` and add the version to :data:`SUPPORTED_MOTO_VERSIONS`.

What the runner relies on (moto 5.2.5):

1. **The interpreter's AWS clients come from boto3's default session.** Every Task and the Map's
   ItemReader build their client with ``boto3.client(...)`` (``asl/utils/boto_client.py``), with
   fake keys and no endpoint while moto's in-process mock is on. So, for the duration of a run,
   :func:`emulator` installs its own default session (``boto3.setup_default_session``, the
   previous one is put back afterwards) whose clients

   - **ignore configured endpoint URLs** (botocore's ``ignore_configured_endpoint_urls``): with
     ``AWS_ENDPOINT_URL`` set, e.g. to a moto server holding the scenes, the interpreter and the
     runner still talk to the in-process emulator. The storage layer keeps its own sessions and
     endpoint, so it still reads and writes that server;
   - **answer Lambda ``Invoke`` in this process**: a ``before-send.lambda.Invoke`` handler
     (botocore's public event system; a handler that returns an ``AWSResponse`` fulfils the
     request, none is sent) passes the call to the route registered for the function's name
     prefix. moto's own Lambda emulation (which would start Docker) is kept out of it with moto's
     public ``core.passthrough.services`` setting.

2. **moto's ASL parser is generated with ANTLR 4.13**, while Hydra/omegaconf pin the 4.9 runtime
   in the same environment and the two cannot share the ``antlr4`` name. ``make setup_env``
   installs a 4.13 runtime into its own folder (``.cache/sfn-antlr4``, or ``SFN_ANTLR4_PATH``);
   while a run is active the ``antlr4`` modules in ``sys.modules`` are swapped for it, and the 4.9
   ones are put back when the last active run ends. Nothing is installed at run time.

3. **moto's public settings** ``stepfunctions.execute_state_machine`` (run definitions with the
   parsing interpreter) and ``core.mock_credentials``/``core.reset_boto3_session`` (keep the
   caller's credentials and default session) are given to ``mock_aws``, which is started without
   reset and stopped without removing data: moto's backends are process-global, and an in-process
   moto server (tests) must keep its buckets.

Overlapping runs in one process share one emulator (reference-counted); each run registers its
own Lambda route under a unique function-name prefix.
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import importlib.metadata
import io
import json
import os
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import unquote, urlsplit

from botocore.awsrequest import AWSPreparedRequest, AWSResponse, HeadersDict

#: moto versions this shim was checked against (the three facts in the module doc).
SUPPORTED_MOTO_VERSIONS = frozenset({"5.2.5"})
#: The ANTLR runtime series moto's generated ASL parser needs.
ANTLR_SERIES = "4.13"
#: The make target that installs the runtime into :func:`antlr_path`.
ANTLR_MAKE_TARGET = "setup_env"
REPO_ROOT = Path(__file__).resolve().parents[2]
REGION = "us-east-1"
_FAKE_KEYS = {"aws_access_key_id": "local", "aws_secret_access_key": "local"}
_INVOKE_EVENT = "before-send.lambda.Invoke"
_MOTO_CONFIG: dict[str, Any] = {
    "stepfunctions": {"execute_state_machine": True},
    "core": {
        "mock_credentials": False,
        "reset_boto3_session": False,
        "passthrough": {"urls": [], "services": ["lambda"]},
    },
}

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
            "parser (see inference/statemachine/moto_shim.py). Install the pinned moto (make setup_env) "
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
# The emulator: moto's mock, the default session, Lambda routes
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
        self._stack: contextlib.ExitStack | None = None
        self._antlr = _AntlrSwap()

    def start(self) -> None:
        import boto3
        import botocore.session
        from moto import mock_aws

        check_moto_version()
        with contextlib.ExitStack() as stack:
            self._antlr.enter()
            stack.callback(self._antlr.exit)
            importlib.import_module("moto.stepfunctions.parser.models")

            previous = boto3.DEFAULT_SESSION
            core = botocore.session.Session()
            core.set_config_variable("ignore_configured_endpoint_urls", True)
            boto3.setup_default_session(botocore_session=core, region_name=REGION, **_FAKE_KEYS)
            session = boto3.DEFAULT_SESSION
            stack.callback(setattr, boto3, "DEFAULT_SESSION", previous)
            session.events.register_first(_INVOKE_EVENT, self._invoke)
            stack.callback(session.events.unregister, _INVOKE_EVENT, self._invoke)

            aws = mock_aws(config=copy.deepcopy(_MOTO_CONFIG))  # type: ignore[arg-type]
            aws.start(reset=False)
            stack.callback(aws.stop, remove_data=False)
            self.session = session
            self._stack = stack.pop_all()

    def stop(self) -> None:
        stack, self._stack, self.session = self._stack, None, None
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


_emulator = _Emulator()


@contextlib.contextmanager
def emulator(function_prefix: str, route: LambdaRoute) -> Iterator[Any]:
    """moto's in-process AWS with its Step Functions interpreter, for one run; yields the boto3 session.

    Lambda functions whose name starts with ``function_prefix`` are answered by ``route``. Make
    the runner's own clients from the yielded session: like the interpreter's, they never follow
    ``AWS_ENDPOINT_URL``. Raises :class:`LocalRunError` on an unsupported moto or a missing
    ANTLR runtime.
    """
    with _emulator.lock:
        if function_prefix in _emulator.routes:
            raise LocalRunError(f"a local run with function prefix {function_prefix!r} is already active")
        if _emulator.users == 0:
            _emulator.start()
        _emulator.users += 1
        _emulator.routes[function_prefix] = route
        session = _emulator.session
    try:
        yield session
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

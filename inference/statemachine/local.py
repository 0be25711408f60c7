"""Run ``pipeline.asl.json`` on moto's Step Functions interpreter, in-process, against the real handlers.

The definition is the exact file Terraform deploys, rendered the way ``templatefile()`` renders
it (only ``${name}`` placeholders: the four Lambda ARNs and the manifest bucket). moto 5.2.5's
parsing interpreter (``stepfunctions.execute_state_machine``) then runs it: Retry, Catch, the
Distributed Map with its S3 ItemReader, MaxConcurrency.

The shim is three small patches, all undone when the run ends:

1. **Lambda invoke.** moto would run a Lambda task in Docker. We patch one function,
   ``lambda_eval_utils._invoke_lambda_function`` (the only place the interpreter invokes a
   Lambda), to call our handler for the ARN's function name in this process instead: the
   payload goes through JSON both ways like a real invoke, and an exception becomes a Lambda
   ``FunctionError`` whose ``errorType`` is the exception's class name (``SystemExit`` becomes
   ``Runtime.ExitError``, as when a Lambda's runtime dies). Calls run ``concurrency`` at a time
   (default 1: one warm container per function, which also keeps a laptop's cores sane).
2. **The manifest.** The interpreter reads the ItemReader's manifest from moto's in-process S3,
   while our storage may be ``file://``, a moto server or real S3. After ``process`` returns, the
   shim copies the manifest it wrote (``manifest_uri``) to ``s3://<manifest_bucket>/<manifest_key>``
   in that in-process S3. Nothing else is mirrored: infer reads scenes through the storage layer.
3. **ANTLR.** moto's ASL parser is generated with ANTLR 4.13, while Hydra/omegaconf pin the
   4.9 runtime in the same environment, and the two runtimes cannot share the ``antlr4`` name.
   A 4.13.2 runtime is kept in its own folder (``.cache/sfn-antlr4``, installed there by pip on
   first use, or ``SFN_ANTLR4_PATH``), and for the duration of a run the ``antlr4`` modules in
   ``sys.modules`` are swapped for it; the 4.9 ones are put back afterwards.

moto quirks handled here: ``start_execution`` gets an explicit ``name``; the Map is
``STANDARD``; the interpreter really sleeps for Retry intervals (``retry_sleep`` replaces that
sleep, tests pass a no-op); ``ToleratedFailurePercentage`` is parsed but not enforced by moto
5.2.5, so locally a failed item never fails the Map (the ledger still records the scene failed).
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import os
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from unittest import mock

log = logging.getLogger(__name__)

MOTO_VERSION = "5.2.5"
ANTLR_VERSION = "4.13.2"
DEFINITION_PATH = Path(__file__).with_name("pipeline.asl.json")
REPO_ROOT = Path(__file__).resolve().parents[2]
ACCOUNT = "123456789012"
REGION = "us-east-1"
FUNCTIONS = ("process", "infer", "observe", "failure")
LOCAL_MANIFEST_BUCKET = "local-manifests"
_FAKE_KEYS = {"aws_access_key_id": "local", "aws_secret_access_key": "local"}

Handler = Callable[[dict[str, Any], Any], Any]


class LocalRunError(RuntimeError):
    """The local interpreter could not be set up or did not finish."""


# ---------------------------------------------------------------------------------------------
# The definition
# ---------------------------------------------------------------------------------------------


def function_arn(name: str, prefix: str = "landcover") -> str:
    """A Lambda ARN the shim maps back to handler ``name``."""
    return f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{prefix}-{name}"


def render(template: str, values: Mapping[str, str]) -> str:
    """Substitute ``${name}`` placeholders as Terraform's ``templatefile()`` does; every one must be given."""
    out, i = [], 0
    while True:
        j = template.find("${", i)
        if j < 0:
            out.append(template[i:])
            break
        if j > 0 and template[j - 1] == "$":  # "$${" is templatefile's escape for a literal "${"
            out.append(template[i : j - 1] + "${")
            i = j + 2
            continue
        k = template.index("}", j)
        name = template[j + 2 : k]
        if name not in values:
            raise KeyError(f"template variable {name!r} has no value; given: {sorted(values)}")
        out.append(template[i:j] + str(values[name]))
        i = k + 1
    return "".join(out)


def template_variables(template: str | None = None) -> set[str]:
    """The ``${...}`` names a template uses."""
    text = DEFINITION_PATH.read_text() if template is None else template
    names, i = set(), 0
    while (j := text.find("${", i)) >= 0:
        k = text.index("}", j)
        names.add(text[j + 2 : k])
        i = k + 1
    return names


def local_definition(manifest_bucket: str) -> str:
    """``pipeline.asl.json`` rendered with local ARNs and ``manifest_bucket``."""
    values = {f"{name}_function_arn": function_arn(name) for name in FUNCTIONS}
    values["manifest_bucket"] = manifest_bucket
    return render(DEFINITION_PATH.read_text(), values)


# ---------------------------------------------------------------------------------------------
# ANTLR 4.13 for moto's ASL parser
# ---------------------------------------------------------------------------------------------

_antlr_lock = threading.RLock()
_antlr_modules: dict[str, Any] = {}


def antlr_path() -> Path:
    """Folder holding the antlr4 4.13 runtime (``SFN_ANTLR4_PATH`` or ``<repo>/.cache/sfn-antlr4``)."""
    return Path(os.environ.get("SFN_ANTLR4_PATH") or REPO_ROOT / ".cache" / "sfn-antlr4")


def ensure_antlr_runtime() -> Path:
    """The antlr4 4.13 folder, installed with pip (``--target``, no deps) if it is missing."""
    target = antlr_path()
    if (target / "antlr4" / "__init__.py").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".sfn-antlr4-") as tmp:
        cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", tmp]
        result = subprocess.run(
            [*cmd, f"antlr4-python3-runtime=={ANTLR_VERSION}"], capture_output=True, text=True
        )
        if result.returncode != 0:
            raise LocalRunError(
                f"moto's Step Functions parser needs antlr4-python3-runtime {ANTLR_VERSION} in {target} "
                f"(Hydra pins 4.9 in the main environment); pip failed: {result.stderr.strip()[-500:]}. "
                f"Install it with: pip install --no-deps --target {target} antlr4-python3-runtime=={ANTLR_VERSION}"
            )
        with contextlib.suppress(OSError):
            os.replace(tmp, target)  # a concurrent installer may have won; either copy is fine
    return target


def _antlr_names() -> list[str]:
    return [k for k in sys.modules if k == "antlr4" or k.startswith("antlr4.")]


@contextlib.contextmanager
def antlr_413() -> Iterator[None]:
    """Swap the ``antlr4`` modules for the 4.13 runtime while the block runs (see the module doc)."""
    global _antlr_modules
    path = str(ensure_antlr_runtime())
    with _antlr_lock:
        saved = {k: sys.modules.pop(k) for k in _antlr_names()}
        sys.modules.update(_antlr_modules)
        sys.path.insert(0, path)
        try:
            antlr4 = importlib.import_module("antlr4")
            if not str(antlr4.__file__).startswith(path):
                raise LocalRunError(f"expected antlr4 from {path}, got {antlr4.__file__}")
            importlib.import_module("moto.stepfunctions.parser.models")
            yield
        finally:
            sys.path.remove(path)
            _antlr_modules = {k: sys.modules.pop(k) for k in _antlr_names()}
            sys.modules.update(saved)


# ---------------------------------------------------------------------------------------------
# Dispatch of Lambda tasks to handlers
# ---------------------------------------------------------------------------------------------


def default_handlers() -> dict[str, Handler]:
    """Function name -> the real handler (imported lazily: they pull in torch)."""
    from inference.handlers import failure, infer, observe, process

    return {
        "process": process.handler,
        "infer": infer.handler,
        "observe": observe.handler,
        "failure": failure.handler,
    }


def _error_payload(exc: BaseException) -> dict[str, Any]:
    """A Lambda error payload. An exception's ``error_type`` attribute, if any, names the error
    (tests use it to play the Lambda service's own errors, e.g. ``Lambda.ServiceException``)."""
    error_type = getattr(exc, "error_type", None) or (
        "Runtime.ExitError" if isinstance(exc, SystemExit) else type(exc).__name__
    )
    return {
        "errorType": error_type,
        "errorMessage": str(exc) or error_type,
        "stackTrace": traceback.format_exception(exc)[-8:],
    }


class _Dispatcher:
    """Stands in for ``lambda_eval_utils._invoke_lambda_function``."""

    def __init__(
        self, handlers: Mapping[str, Handler], concurrency: int, mirror: Callable[[dict[str, Any]], None]
    ) -> None:
        self.handlers = dict(handlers)
        self.slots = threading.BoundedSemaphore(max(1, concurrency))
        self.mirror = mirror
        self.calls: list[tuple[str, str]] = []  # (function, outcome)
        self._lock = threading.Lock()

    def __call__(
        self, parameters: dict[str, Any], region: str, state_credentials: Any = None
    ) -> dict[str, Any]:
        arn = str(parameters["FunctionName"])
        name = arn.rsplit(":", 1)[-1].rsplit("-", 1)[-1]
        handler = self.handlers.get(name)
        if handler is None:
            raise LocalRunError(f"no local handler for Lambda {arn}; known: {sorted(self.handlers)}")
        raw = parameters.get("Payload") or b"{}"
        event = json.loads(raw.decode("utf-8") if isinstance(raw, bytes) else raw)
        context = SimpleNamespace(
            function_name=name,
            aws_request_id=str(uuid.uuid4()),
            invoked_function_arn=arn,
            get_remaining_time_in_millis=lambda: 900_000,
        )
        with self.slots:
            try:
                result = json.loads(json.dumps(handler(event, context)))
                if name == "process" and isinstance(result, dict):
                    self.mirror(result)
            except (Exception, SystemExit) as exc:
                log.warning("local Lambda %s failed: %s: %s", name, type(exc).__name__, exc)
                with self._lock:
                    self.calls.append((name, "error"))
                return {"StatusCode": 200, "FunctionError": "Unhandled", "Payload": _error_payload(exc)}
        with self._lock:
            self.calls.append((name, "ok"))
        return {"StatusCode": 200, "Payload": result}


# ---------------------------------------------------------------------------------------------
# Running an execution
# ---------------------------------------------------------------------------------------------


@dataclass
class LocalExecution:
    """The outcome of one local execution."""

    execution_id: str
    status: str
    output: dict[str, Any] | None
    error: str | None
    cause: str | None
    seconds: float
    calls: list[tuple[str, str]] = field(default_factory=list)

    @property
    def succeeded(self) -> bool:
        return self.status == "SUCCEEDED"


def new_execution_id(prefix: str = "local") -> str:
    """A Step Functions-style execution name: unique, sortable, at most 80 characters."""
    return f"{prefix}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{uuid.uuid4().hex[:6]}"


def manifest_bucket_for(manifest_prefix: str) -> str:
    """The bucket the Map reads manifests from: the manifest prefix's bucket, or a local stand-in."""
    if manifest_prefix.startswith("s3://"):
        return manifest_prefix[5:].split("/", 1)[0]
    return LOCAL_MANIFEST_BUCKET


def run_execution(
    manifest_prefix: str,
    *,
    execution_id: str | None = None,
    handlers: Mapping[str, Handler] | None = None,
    concurrency: int = 1,
    retry_sleep: Callable[[float], None] | None = None,
    timeout_s: float = 3600.0,
    definition: str | None = None,
    verbose: bool = False,
) -> LocalExecution:
    """Run the state machine once, in-process; returns when the execution ends.

    Args:
        manifest_prefix: where ``process`` writes manifests (decides ``${manifest_bucket}``).
        execution_id: the execution name (default :func:`new_execution_id`).
        handlers: function name -> handler; default the real ones (tests inject faults here).
        concurrency: Lambda calls allowed at once (the Map's items run in moto's threads).
        retry_sleep: replaces the interpreter's ``time.sleep`` between Retry attempts.
        timeout_s: give up waiting after this long.
        definition: a rendered definition instead of ``pipeline.asl.json`` (tests).
        verbose: keep moto's interpreter logging (it logs each caught error with its AST).
    """
    import boto3
    from moto import mock_aws

    from training import storage

    execution_id = execution_id or new_execution_id()
    bucket = manifest_bucket_for(manifest_prefix)
    definition = definition or local_definition(bucket)
    handlers = dict(default_handlers() if handlers is None else handlers)

    def client(service: str) -> Any:
        # Explicit endpoint-less clients with fake keys: intercepted by mock_aws, never real AWS.
        return boto3.client(service, region_name=REGION, **_FAKE_KEYS)

    def mirror(result: dict[str, Any]) -> None:
        body = storage.read_bytes(result["manifest_uri"])
        client("s3").put_object(Bucket=bucket, Key=result["manifest_key"], Body=body)

    dispatcher = _Dispatcher(handlers, concurrency, mirror)
    config = {
        "stepfunctions": {"execute_state_machine": True},
        # Keep the caller's credentials (storage may be real S3); our own clients pass fake keys.
        "core": {"mock_credentials": False, "reset_boto3_session": False},
    }
    start = time.perf_counter()
    with contextlib.ExitStack() as stack:
        if not verbose:  # moto logs every caught task error (and its whole AST) at ERROR
            parser_log = logging.getLogger("moto.stepfunctions.parser")
            stack.callback(parser_log.setLevel, parser_log.level)
            parser_log.setLevel(logging.CRITICAL)
        stack.enter_context(antlr_413())
        from moto.stepfunctions.parser.asl.component.common.retry import retrier_decl
        from moto.stepfunctions.parser.asl.component.state.exec.state_task import lambda_eval_utils

        stack.enter_context(mock.patch.object(lambda_eval_utils, "_invoke_lambda_function", dispatcher))
        if retry_sleep is not None:
            stack.enter_context(mock.patch.object(retrier_decl, "time", SimpleNamespace(sleep=retry_sleep)))
        # No reset on start or stop: moto's backends are process-global, and an in-process moto
        # server (tests, or the storage of this very run) must keep its buckets.
        aws = mock_aws(config=config)
        aws.start(reset=False)
        stack.callback(aws.stop, remove_data=False)

        s3 = client("s3")
        if bucket not in {b["Name"] for b in s3.list_buckets().get("Buckets", [])}:
            s3.create_bucket(Bucket=bucket)
        sfn = client("stepfunctions")
        machine_arn = sfn.create_state_machine(
            name=f"landcover-inference-{uuid.uuid4().hex[:8]}",
            definition=definition,
            roleArn=f"arn:aws:iam::{ACCOUNT}:role/landcover-sfn",
            type="STANDARD",
        )["stateMachineArn"]
        stack.callback(sfn.delete_state_machine, stateMachineArn=machine_arn)
        arn = sfn.start_execution(stateMachineArn=machine_arn, name=execution_id, input="{}")["executionArn"]
        deadline = time.monotonic() + timeout_s
        while True:
            desc = sfn.describe_execution(executionArn=arn)
            if desc["status"] != "RUNNING":
                break
            if time.monotonic() > deadline:
                sfn.stop_execution(executionArn=arn, error="LocalTimeout")
                raise LocalRunError(f"execution {execution_id} did not finish within {timeout_s:.0f} s")
            time.sleep(0.05)
    output = json.loads(desc["output"]) if desc.get("output") else None
    return LocalExecution(
        execution_id=execution_id,
        status=desc["status"],
        output=output,
        error=desc.get("error"),
        cause=desc.get("cause"),
        seconds=time.perf_counter() - start,
        calls=list(dispatcher.calls),
    )

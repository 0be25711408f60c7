"""Run ``pipeline.asl.json`` on moto's Step Functions interpreter, in-process, against the real handlers.

The definition is the exact file Terraform deploys, rendered the way ``templatefile()`` renders
it (only ``${name}`` placeholders: the six Lambda ARNs and the manifest bucket). moto's parsing
interpreter then runs it: Choice and Wait (a triggered run waits for its coalescing window to
close: really, in wall-clock time), Retry, Catch, the Distributed Maps with their S3 ItemReader
(the champion's and the challenger's shadow Maps), MaxConcurrency. Everything that depends on how moto works inside is in
:mod:`setup.tools.moto_shim` (version-checked); this module only uses public APIs.

1. **Lambda invoke.** Each run's ARNs carry a unique function-name prefix, and the shim hands the
   interpreter's ``Invoke`` calls for that prefix to :class:`_Dispatcher`, which calls our
   handler for the ARN's function name in this process: the payload goes through JSON both ways
   like a real invoke, and the answer is Lambda's wire format (status 200; on an exception the
   header ``X-Amz-Function-Error: Unhandled`` and the payload ``{errorType, errorMessage,
   stackTrace}``, where ``errorType`` is the exception's class name, or ``Runtime.ExitError`` for
   ``SystemExit`` as when a Lambda's runtime dies). Calls run ``concurrency`` at a time (default
   1: one warm container per function, which also keeps a laptop's cores sane).
2. **The manifests.** The interpreter reads the ItemReaders' manifests from the emulator's S3,
   while our storage may be ``file://``, a moto server or real S3. After ``process`` returns, the
   dispatcher copies the two it wrote (``manifest_uri``: the blocks, ``scenes_uri``: the scenes)
   to ``s3://<manifest_bucket>/<manifest_key>`` and ``<scenes_key>`` in the emulator. Nothing else is mirrored: infer
   reads scenes through the storage layer, which keeps its own endpoint (``AWS_ENDPOINT_URL``,
   ``storage.s3.endpoint_url`` or real S3) while the emulator's clients never follow it.

moto behaviours to know: the interpreter really sleeps for Retry intervals (the definition's
backoff); ``ToleratedFailurePercentage`` is parsed but not enforced by moto 5.2.5, so locally a
failed item never fails the Map (the ledger still records the scene failed).
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from inference.statemachine import DEFINITION_PATH
from setup.tools.moto_shim import REGION, LocalRunError, emulator, http_response

log = logging.getLogger(__name__)

ACCOUNT = "123456789012"
FUNCTIONS = ("process", "infer", "assemble", "observe", "failure", "notify")
FUNCTION_PREFIX = "landcover"
LOCAL_MANIFEST_BUCKET = "local-manifests"
#: What a local handler sees as ``context.get_remaining_time_in_millis()`` (Lambda's 900 s cap).
REMAINING_TIME_MS = 900_000

Handler = Callable[[dict[str, Any], Any], Any]

__all__ = [
    "DEFINITION_PATH",
    "FUNCTIONS",
    "LocalExecution",
    "LocalRunError",
    "LocalStateMachine",
    "default_handlers",
    "function_arn",
    "local_definition",
    "manifest_bucket_for",
    "new_execution_id",
    "render",
    "run_execution",
    "state_machine",
]


# ---------------------------------------------------------------------------------------------
# The definition
# ---------------------------------------------------------------------------------------------


def function_arn(name: str, prefix: str = FUNCTION_PREFIX) -> str:
    """The local Lambda ARN of handler ``name``: ``...:function:<prefix>-<name>``."""
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


def local_definition(manifest_bucket: str, prefix: str = FUNCTION_PREFIX) -> str:
    """``pipeline.asl.json`` rendered with local ARNs (function names ``<prefix>-<name>``) and ``manifest_bucket``."""
    values = {f"{name}_function_arn": function_arn(name, prefix) for name in FUNCTIONS}
    values["manifest_bucket"] = manifest_bucket
    return render(DEFINITION_PATH.read_text(), values)


# ---------------------------------------------------------------------------------------------
# Dispatch of Lambda tasks to handlers
# ---------------------------------------------------------------------------------------------


def default_handlers() -> dict[str, Handler]:
    """Function name -> the real handler (imported lazily: they pull in torch)."""
    from inference.handlers import assemble, failure, infer, notify, observe, process

    return {
        "process": process.handler,
        "infer": infer.handler,
        "assemble": assemble.handler,
        "observe": observe.handler,
        "failure": failure.handler,
        "notify": notify.handler,
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
    """Answers one run's Lambda invokes (a :data:`moto_shim.LambdaRoute`) with our handlers."""

    def __init__(
        self, handlers: Mapping[str, Handler], concurrency: int, mirror: Callable[[dict[str, Any]], None]
    ) -> None:
        self.handlers = dict(handlers)
        self.slots = threading.BoundedSemaphore(max(1, concurrency))
        self.mirror = mirror
        self.calls: list[tuple[str, str, str]] = []  # (execution id, function, outcome)
        self._lock = threading.Lock()

    def __call__(self, arn: str, payload: bytes) -> Any:
        url = f"https://lambda.{REGION}.amazonaws.com/2015-03-31/functions/{arn}/invocations"
        name = arn.rsplit(":", 1)[-1].rsplit("-", 1)[-1]
        handler = self.handlers.get(name)
        if handler is None:
            message = f"Function not found: {arn} (local handlers: {sorted(self.handlers)})"
            body = json.dumps({"Type": "User", "Message": message}).encode()
            return http_response(url, 404, body, {"x-amzn-ErrorType": "ResourceNotFoundException"})
        event = json.loads(payload.decode("utf-8") or "{}")
        execution_id = str(event.get("execution_id", "")) if isinstance(event, dict) else ""
        context = SimpleNamespace(
            function_name=name,
            aws_request_id=str(uuid.uuid4()),
            invoked_function_arn=arn,
            get_remaining_time_in_millis=lambda: REMAINING_TIME_MS,
        )
        with self.slots:
            try:
                result = json.loads(json.dumps(handler(event, context)))
                if name == "process" and isinstance(result, dict):
                    self.mirror(result)
            except (Exception, SystemExit) as exc:
                log.warning("local Lambda %s failed: %s: %s", name, type(exc).__name__, exc)
                self._record(execution_id, name, "error")
                body = json.dumps(_error_payload(exc)).encode()
                return http_response(url, 200, body, {"X-Amz-Function-Error": "Unhandled"})
        self._record(execution_id, name, "ok")
        return http_response(url, 200, json.dumps(result).encode())

    def _record(self, execution_id: str, name: str, outcome: str) -> None:
        with self._lock:
            self.calls.append((execution_id, name, outcome))

    def calls_of(self, execution_id: str) -> list[tuple[str, str]]:
        """The (function, outcome) calls one execution made (every event carries its id)."""
        with self._lock:
            return [(name, outcome) for ex, name, outcome in self.calls if ex == execution_id]


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


class LocalStateMachine:
    """The state machine created in the emulator for a block of local work (see :func:`state_machine`).

    ``sfn`` is a boto3 Step Functions client of the emulator and ``arn`` the machine's ARN: what
    :mod:`inference.trigger` is given on AWS, so the same coalescing code starts executions here.
    """

    def __init__(self, sfn: Any, arn: str, dispatcher: _Dispatcher, timeout_s: float) -> None:
        self.sfn = sfn
        self.arn = arn
        self.timeout_s = timeout_s
        self._dispatcher = dispatcher

    def start(self, execution_id: str, execution_input: Mapping[str, Any] | None = None) -> str:
        """Start execution ``execution_id`` with ``execution_input`` (default ``{}``); its ARN."""
        answer = self.sfn.start_execution(
            stateMachineArn=self.arn, name=execution_id, input=json.dumps(dict(execution_input or {}))
        )
        return str(answer["executionArn"])

    def wait(self, execution_arn: str, timeout_s: float | None = None) -> LocalExecution:
        """Block until the execution ends; :class:`LocalRunError` (and a stop) after ``timeout_s``."""
        start = time.perf_counter()
        limit = self.timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + limit
        while True:
            desc = self.sfn.describe_execution(executionArn=execution_arn)
            if desc["status"] != "RUNNING":
                break
            if time.monotonic() > deadline:
                self.sfn.stop_execution(executionArn=execution_arn, error="LocalTimeout")
                raise LocalRunError(f"execution {desc['name']} did not finish within {limit:.0f} s")
            time.sleep(0.05)
        started = desc.get("startDate")
        stopped = desc.get("stopDate")
        seconds = (stopped - started).total_seconds() if started and stopped else time.perf_counter() - start
        return LocalExecution(
            execution_id=desc["name"],
            status=desc["status"],
            output=json.loads(desc["output"]) if desc.get("output") else None,
            error=desc.get("error"),
            cause=desc.get("cause"),
            seconds=seconds,
            calls=self._dispatcher.calls_of(desc["name"]),
        )


@contextlib.contextmanager
def state_machine(
    manifest_prefix: str,
    *,
    handlers: Mapping[str, Handler] | None = None,
    concurrency: int = 1,
    timeout_s: float = 3600.0,
    verbose: bool = False,
) -> Iterator[LocalStateMachine]:
    """The state machine in the in-process emulator, answered by ``handlers``, for several executions.

    Args:
        manifest_prefix: where ``process`` writes manifests (decides ``${manifest_bucket}``).
        handlers: function name -> handler; default the real ones (tests inject faults here).
        concurrency: Lambda calls allowed at once (the Map's items run in moto's threads).
        timeout_s: how long :meth:`LocalStateMachine.wait` waits for an execution by default.
        verbose: keep moto's interpreter logging (it logs each caught error with its AST).

    Raises:
        LocalRunError: moto is not a supported version or the ANTLR runtime is missing.
    """
    from core import storage

    bucket = manifest_bucket_for(manifest_prefix)
    # One prefix per machine: overlapping runs in this process each get their own handlers.
    prefix = f"{FUNCTION_PREFIX}{uuid.uuid4().hex[:8]}"
    definition = local_definition(bucket, prefix)
    handlers = dict(default_handlers() if handlers is None else handlers)
    s3: Any = None

    def mirror(result: dict[str, Any]) -> None:
        for uri, key in (("scenes_uri", "scenes_key"), ("manifest_uri", "manifest_key")):
            if uri in result:
                s3.put_object(Bucket=bucket, Key=result[key], Body=storage.read_bytes(result[uri]))

    dispatcher = _Dispatcher(handlers, concurrency, mirror)
    with contextlib.ExitStack() as stack:
        if not verbose:  # moto logs every caught task error (and its whole AST) at ERROR
            parser_log = logging.getLogger("moto.stepfunctions.parser")
            stack.callback(parser_log.setLevel, parser_log.level)
            parser_log.setLevel(logging.CRITICAL)
        aws = stack.enter_context(emulator(f"{prefix}-", dispatcher))
        s3 = aws.client("s3")
        if bucket not in {b["Name"] for b in s3.list_buckets().get("Buckets", [])}:
            s3.create_bucket(Bucket=bucket)
        sfn = aws.client("stepfunctions")
        machine_arn = sfn.create_state_machine(
            name=f"landcover-inference-{uuid.uuid4().hex[:8]}",
            definition=definition,
            roleArn=f"arn:aws:iam::{ACCOUNT}:role/landcover-sfn",
            type="STANDARD",
        )["stateMachineArn"]
        stack.callback(sfn.delete_state_machine, stateMachineArn=machine_arn)
        yield LocalStateMachine(sfn, machine_arn, dispatcher, timeout_s)


def run_execution(
    manifest_prefix: str,
    *,
    execution_id: str | None = None,
    execution_input: Mapping[str, Any] | None = None,
    handlers: Mapping[str, Handler] | None = None,
    concurrency: int = 1,
    timeout_s: float = 3600.0,
    verbose: bool = False,
) -> LocalExecution:
    """Run the state machine once, in-process; returns when the execution ends.

    Args:
        manifest_prefix: where ``process`` writes manifests (decides ``${manifest_bucket}``).
        execution_id: the execution name (default :func:`new_execution_id`).
        execution_input: the execution's input (default ``{}``: a scheduled run, no wait).
        handlers: function name -> handler; default the real ones (tests inject faults here).
        concurrency: Lambda calls allowed at once (the Map's items run in moto's threads).
        timeout_s: give up waiting after this long.
        verbose: keep moto's interpreter logging (it logs each caught error with its AST).

    Raises:
        LocalRunError: moto is not a supported version, the ANTLR runtime is missing, or the
            execution did not finish within ``timeout_s``.
    """
    execution_id = execution_id or new_execution_id()
    with state_machine(
        manifest_prefix, handlers=handlers, concurrency=concurrency, timeout_s=timeout_s, verbose=verbose
    ) as machine:
        return machine.wait(machine.start(execution_id, execution_input))

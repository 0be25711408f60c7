"""The three retry layers own disjoint fault classes, and their budgets fit the Lambda timeouts.

botocore (``core.storage.BOTO_CONFIG``) retries one AWS call's throttling, 5xx and connection
faults; ``inference.retry`` retries ledger-database outages within the invocation; the state
machine's Retry re-runs a task for the Lambda service's errors and timeouts only. A fault retried
by one layer must reach the next as an error that layer does not retry again.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import sqlalchemy.exc as sa_exc
import yaml
from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    ReadTimeoutError,
)

from core import storage
from inference import retry
from setup.tools import local_statemachine as local

REPO = Path(__file__).resolve().parents[2]
VARIABLES_TF = REPO / "inference" / "tf" / "variables.tf"
INFRA_YAML = REPO / "setup" / "conf" / "infra" / "default.yaml"


def _tasks(states: dict) -> dict[str, dict]:
    out = {}
    for name, state in states.items():
        if state["Type"] == "Task":
            out[name] = state
        for branch in [state.get("ItemProcessor"), *state.get("Branches", [])]:
            if branch:
                out.update(_tasks(branch["States"]))
    return out


def _asl_retried() -> dict[str, set[str]]:
    asl = json.loads(local.DEFINITION_PATH.read_text())
    return {
        name: {error for block in task.get("Retry", []) for error in block["ErrorEquals"]}
        for name, task in _tasks(asl["States"]).items()
    }


def _client_error(code: str, status: int, operation: str = "GetObject") -> ClientError:
    return ClientError(
        {"Error": {"Code": code, "Message": code}, "ResponseMetadata": {"HTTPStatusCode": status}}, operation
    )


def _botocore_final_errors() -> list[BaseException]:
    """What reaches a handler once botocore's attempts are spent, directly or through s3fs."""
    from s3fs.errors import translate_boto_error

    errors: list[BaseException] = [
        _client_error("SlowDown", 503),
        _client_error("InternalError", 500),
        _client_error("Throttling", 400, "Publish"),
        _client_error("ServiceUnavailable", 503, "GetSecretValue"),
        EndpointConnectionError(endpoint_url="http://127.0.0.1:1"),
        ConnectTimeoutError(endpoint_url="http://127.0.0.1:1"),
        ReadTimeoutError(endpoint_url="http://127.0.0.1:1"),
        ConnectionClosedError(endpoint_url="http://127.0.0.1:1"),
    ]
    # s3fs turns a ClientError into an OSError with the botocore error as its cause.
    errors.append(translate_boto_error(_client_error("SlowDown", 503)))
    try:  # and a handler may wrap one in its own error
        try:
            raise EndpointConnectionError(endpoint_url="http://127.0.0.1:1") from ConnectionRefusedError(111)
        except EndpointConnectionError as inner:
            raise RuntimeError("read scene x") from inner
    except RuntimeError as wrapped:
        errors.append(wrapped)
    return errors


def _database_faults() -> list[BaseException]:
    """Ledger outages: what inference.retry waits out."""
    refused = ConnectionRefusedError(111, "Connection refused")
    invalidated = sa_exc.DBAPIError("SELECT 1", {}, Exception("server closed the connection"))
    invalidated.connection_invalidated = True
    return [
        sa_exc.OperationalError("SELECT 1", {}, Exception("could not connect to server")),
        sa_exc.InterfaceError("SELECT 1", {}, Exception("connection already closed")),
        sa_exc.TimeoutError("QueuePool limit reached"),
        invalidated,
        refused,
    ]


def _step_functions_name(exc: BaseException) -> str:
    """The error name Step Functions matches a handler's exception by (the Lambda payload's errorType)."""
    return local._error_payload(exc)["errorType"]


def _timeouts() -> dict[str, float]:
    """Every function's timeout: the Terraform defaults, and the infer/assemble one from the config."""
    text = VARIABLES_TF.read_text()
    out = {
        name: float(default)
        for name, default in re.findall(
            r'variable "(\w+_timeout_s)"\s*\{[^}]*?default\s*=\s*([0-9.]+)', text, flags=re.S
        )
    }
    assert "infer_timeout_s" in text and "infer_timeout_s" not in out  # its home is the config
    out["infer_timeout_s"] = float(yaml.safe_load(INFRA_YAML.read_text())["infer_timeout_s"])
    assert {"process_timeout_s", "observe_timeout_s", "failure_timeout_s", "notify_timeout_s"} <= set(out)
    return out


def test_the_state_machine_retries_only_lambda_service_errors_and_timeouts() -> None:
    retried = _asl_retried()
    assert retried and all(retried.values()), retried
    for name, errors in retried.items():
        assert errors == set(retry.STATE_MACHINE_RETRIED_ERRORS), name
    for error in retry.STATE_MACHINE_RETRIED_ERRORS:
        # No wildcard: States.ALL / States.TaskFailed would match every handler error too.
        assert error.startswith("Lambda.") or error == "States.Timeout", error


def test_no_fault_is_retried_by_two_layers() -> None:
    asl = set().union(*_asl_retried().values())
    # botocore's final errors: not retried again inside the handler, nor by the state machine.
    for exc in _botocore_final_errors():
        assert not retry.is_transient(exc), repr(exc)
        assert _step_functions_name(exc) not in asl, repr(exc)
    # Ledger outages: retried inside the handler; what escapes (or the budget's TransientFaultError)
    # is not retried by the state machine.
    for exc in _database_faults():
        assert retry.is_transient(exc), repr(exc)
        assert _step_functions_name(exc) not in asl, repr(exc)
    spent = retry.TransientFaultError("still failing")
    assert _step_functions_name(spent) == "TransientFaultError" and "TransientFaultError" not in asl
    # A bug or a bad input is retried by no layer.
    assert not retry.is_transient(ValueError("bad band count"))
    assert not retry.is_transient(FileNotFoundError("s3://bucket/missing.tif"))


def test_every_client_and_s3fs_use_the_one_botocore_budget() -> None:
    storage.configure(endpoint_url="http://127.0.0.1:1", region="us-east-1")
    try:
        config = storage.boto3_client("s3").meta.config
        assert config.retries["total_max_attempts"] == storage.BOTO_MAX_ATTEMPTS
        assert config.retries["mode"] == "standard"
        assert (config.connect_timeout, config.read_timeout) == (
            storage.BOTO_CONNECT_TIMEOUT_S,
            storage.BOTO_READ_TIMEOUT_S,
        )
        fs, _ = storage.filesystem("s3://bucket/key")
        assert fs.config_kwargs == storage.BOTO_CONFIG
        assert fs.retries == 1  # s3fs's own loop would retry botocore's final error again
    finally:
        storage.configure()


def test_inner_worst_cases_fit_the_function_timeouts() -> None:
    timeouts = _timeouts()
    shortest = min(timeouts.values())
    # One AWS call, every attempt hanging to its timeouts with the longest backoffs, fits the
    # shortest function (notify and failure: 60 s).
    assert storage.botocore_worst_case_s() <= shortest, (storage.botocore_worst_case_s(), timeouts)
    # The database layer stops SAFETY_MARGIN_S before each function's timeout, and has time left.
    assert shortest > retry.SAFETY_MARGIN_S + retry.MAX_WAIT_S
    # The state machine's own task timeouts never cut a function short of its configured one.
    asl = json.loads(local.DEFINITION_PATH.read_text())
    for name, task in _tasks(asl["States"]).items():
        function = re.fullmatch(r"\$\{(\w+)_function_arn\}", task["Resource"]).group(1)
        timeout = timeouts["infer_timeout_s" if function == "assemble" else f"{function}_timeout_s"]
        assert task["TimeoutSeconds"] >= timeout, (name, task["TimeoutSeconds"], timeout)


@pytest.mark.parametrize("timeout_s", [60, 300, 900])
def test_database_retries_end_inside_the_budget(monkeypatch, timeout_s: int) -> None:
    """An outage that outlasts the invocation: retries stop SAFETY_MARGIN_S before the timeout."""
    clock = {"now": 1000.0}
    fake_time = SimpleNamespace(
        monotonic=lambda: clock["now"], sleep=lambda s: clock.__setitem__("now", clock["now"] + s)
    )
    monkeypatch.setattr(retry, "time", fake_time)
    attempts = []

    def down() -> None:
        attempts.append(clock["now"])
        raise sa_exc.OperationalError("SELECT 1", {}, Exception("could not connect to server"))

    with retry.time_budget(timeout_s * 1000), pytest.raises(retry.TransientFaultError):
        retry.call(down, "read the ledger")
    assert len(attempts) > 1
    assert clock["now"] - 1000.0 <= timeout_s - retry.SAFETY_MARGIN_S

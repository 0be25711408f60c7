"""Retries of ledger-database outages inside the handlers, within the time the Lambda has left.

One layer per fault class, so the budgets add up instead of multiplying (README: "Faults: which
layer retries what"):

- **botocore** (:data:`core.storage.BOTO_CONFIG`) retries the faults of one AWS API call
  (throttling, 5xx, dropped or timed-out connections), for boto3 clients and s3fs alike. Its
  final error is not retried here: :func:`is_transient` is False for anything botocore raised.
- **this module** retries what no call below it retries: a ledger database that restarts or a
  connection the network resets (SQLAlchemy's operational, interface and pool-timeout errors,
  and connection errors outside botocore). :func:`call` retries a callable with exponential
  backoff and full jitter until it succeeds, raises a non-transient error, or the time budget
  runs out; it then raises the last error as :class:`TransientFaultError`.
- **the state machine's Retry** (:data:`STATE_MACHINE_RETRIED_ERRORS`) re-runs a task for the
  Lambda service's errors and task timeouts only, never for a handler's own error, so a
  :class:`TransientFaultError` (the budget here is spent) fails the task to its Catch; the
  ledger's leases and attempt counts let the next run pick the work up.

The budget is the Lambda's remaining time less :data:`SAFETY_MARGIN_S`, set once per call by the
handler with :func:`time_budget` (the local runner's context reports the same 900 s a Lambda has).
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import random
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Seconds kept back from the Lambda's remaining time, to record a failure and return.
SAFETY_MARGIN_S = 20.0
#: Budget when no handler set one (library calls, tests): a Lambda's whole timeout.
DEFAULT_BUDGET_S = 900.0
FIRST_WAIT_S = 0.5
MAX_WAIT_S = 15.0

#: Error names the state machine's Retry re-runs a task for (every Task state's one Retry
#: block in inference/statemachine/pipeline.asl.json; tests/inference/test_retry_layers.py
#: checks they match and that none is an error a layer inside already retried).
STATE_MACHINE_RETRIED_ERRORS = (
    "Lambda.ServiceException",
    "Lambda.AWSLambdaException",
    "Lambda.SdkClientException",
    "Lambda.TooManyRequestsException",
    "States.Timeout",
)

_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar("retry_deadline", default=None)


class TransientFaultError(RuntimeError):
    """A transient fault outlasted the time budget; the work can be retried later as it is."""


@contextlib.contextmanager
def time_budget(remaining_ms: int | None) -> Iterator[None]:
    """Let retries inside the block run until ``remaining_ms`` less the safety margin."""
    if remaining_ms is None:
        yield
        return
    token = _deadline.set(time.monotonic() + max(0.0, remaining_ms / 1000.0 - SAFETY_MARGIN_S))
    try:
        yield
    finally:
        _deadline.reset(token)


def remaining_budget_s() -> float:
    """Seconds left for retries in this call."""
    deadline = _deadline.get()
    return DEFAULT_BUDGET_S if deadline is None else max(0.0, deadline - time.monotonic())


def _raised_by_botocore(exc: BaseException) -> bool:
    """Whether ``exc`` is botocore's own error (a ``ClientError`` or a ``BotoCoreError``): its
    retries (:data:`core.storage.BOTO_CONFIG`) are spent, so it is not retried again here."""
    from botocore.exceptions import BotoCoreError, ClientError

    return isinstance(exc, ClientError | BotoCoreError)


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it) is a database or connection fault this layer waits out.

    The chain of causes is walked from ``exc`` down; the first match decides. A botocore error
    on the way (also behind s3fs's ``OSError`` translation of one) ends the walk: botocore owns
    it and has retried it already.
    """
    import sqlalchemy.exc as sa_exc

    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if _raised_by_botocore(current):
            return False
        if isinstance(current, sa_exc.DBAPIError) and current.connection_invalidated:
            return True
        if isinstance(current, sa_exc.OperationalError | sa_exc.InterfaceError | sa_exc.TimeoutError):
            return True
        if isinstance(current, ConnectionError | TimeoutError):  # refused, reset, aborted, timed out
            return True
        current = current.__cause__ or current.__context__
    return False


def call(fn: Callable[[], T], what: str) -> T:
    """``fn()``, retried on transient faults with backoff and full jitter within the time budget.

    Raises:
        TransientFaultError: the fault lasted longer than the budget (chained to the last error).
    """
    started = time.monotonic()
    attempt = 0
    while True:
        try:
            return fn()
        except Exception as exc:
            if not is_transient(exc):
                raise
            attempt += 1
            wait = random.uniform(0.0, min(MAX_WAIT_S, FIRST_WAIT_S * 2 ** (attempt - 1)))
            left = remaining_budget_s()
            if wait >= left:
                raise TransientFaultError(
                    f"{what}: still failing after {attempt} attempt(s) over {time.monotonic() - started:.0f} s "
                    f"({type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}); "
                    "nothing was lost, the step can be retried"
                ) from exc
            log.warning(
                "%s: transient %s (attempt %d), retrying in %.1f s: %s",
                what,
                type(exc).__name__,
                attempt,
                wait,
                str(exc).splitlines()[0][:200] if str(exc) else "",
            )
            time.sleep(wait)

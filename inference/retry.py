"""Retries of transient faults inside the handlers, within the time the Lambda has left.

A database that restarts, a connection the network resets, S3 throttling or a 5xx are faults
that a moment's wait cures; everything else (a bad input, a bug, a missing object) is raised at
once. :func:`call` retries a callable with exponential backoff and full jitter until it
succeeds, raises a non-transient error, or the time budget runs out; it then raises the last
error as :class:`TransientFaultError`, whose message says what was retried and for how long.

The budget is the Lambda's remaining time less a margin, set once per call by the handler with
:func:`time_budget` (the local runner's context reports the same 900 s a Lambda has).
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

_THROTTLE_CODES = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottled",
        "RequestThrottledException",
        "SlowDown",
        "TooManyRequestsException",
        "ProvisionedThroughputExceededException",
        "RequestLimitExceeded",
        "RequestTimeout",
        "RequestTimeoutException",
        "InternalError",
        "InternalFailure",
        "ServiceUnavailable",
        "ServiceUnavailableException",
    }
)
_TRANSIENT_WORDS = (
    "slow down",
    "slowdown",
    "throttl",
    "service unavailable",
    "internal error",
    "reduce your request",
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


def _client_error_is_transient(exc: BaseException) -> bool:
    response = getattr(exc, "response", None)
    if not isinstance(response, dict):
        return False
    code = str(response.get("Error", {}).get("Code", ""))
    status = int(response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
    return code in _THROTTLE_CODES or status >= 500 or status == 429 or (code.isdigit() and int(code) >= 500)


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it) is a fault worth waiting out."""
    import sqlalchemy.exc as sa_exc

    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, sa_exc.DBAPIError) and (
            current.connection_invalidated
            or isinstance(current, sa_exc.OperationalError | sa_exc.InterfaceError)
        ):
            return True
        if isinstance(current, sa_exc.OperationalError | sa_exc.InterfaceError | sa_exc.TimeoutError):
            return True
        if isinstance(current, ConnectionError | TimeoutError):  # refused, reset, aborted, timed out
            return True
        if _client_error_is_transient(current):
            return True
        name = type(current).__name__
        if name in {
            "EndpointConnectionError",
            "ConnectionClosedError",
            "ReadTimeoutError",
            "ConnectTimeoutError",
        }:
            return True
        if isinstance(current, OSError) and any(w in str(current).lower() for w in _TRANSIENT_WORDS):
            return True  # s3fs turns a throttled or 5xx ClientError into an OSError with its message
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

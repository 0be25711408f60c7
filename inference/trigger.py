"""Runs triggered by new imagery: S3 object-created events coalesced into state-machine executions.

S3 sends an ``Object Created`` event to EventBridge for every upload under the input prefix
(the data bucket has EventBridge notifications on; the rule matches the prefix); the rule invokes
the trigger Lambda (:mod:`inference.handlers.trigger`), which calls :func:`handle_event`.
Locally ``make upload_and_run_inference`` calls the same function with the emulator's client.

Coalescing. Time is cut into windows of ``TRIGGER_WINDOW_S`` seconds aligned to the epoch. The
event's time (when S3 created the object) picks its window, and the window its execution:

- the name is deterministic, ``s3-<window start, UTC, %Y%m%dT%H%M%SZ>``, and the input is
  ``{"wait_until": <window end + 2 s>, "window_start": ..., "window_end": ...}``. The state machine's first
  state (a Choice) sends such an execution to a Wait state until ``wait_until``, then to
  Process, so one listing of the input prefix sees every upload of the window.
- Step Functions names are unique per state machine: StartExecution with a name already used
  by an open execution and the same input succeeds without starting anything (idempotent), and
  for a closed execution it fails with ``ExecutionAlreadyExists``. Both mean "this window
  already has its execution": coalesced, not an error.
- An execution that is already running is not duplicated: before starting, the running
  executions are looked at, and if one of them still waits until after the event's time (this
  window's, or an earlier one's delayed), its Process will list the new object, so nothing is
  started.

A late event (delivered after its window closed) starts its window's execution with a wait in
the past: it runs at once, and the object, created before, is in its listing. The EventBridge
Scheduler schedule still starts a run at its times (input ``{}``: no wait), the safety net for
a lost event or a failed run; the ledger's leases keep overlapping runs from predicting a scene twice.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from pydantic import Field, ValidationError

from inference.settings import ChainDefaults, SettingsError

log = logging.getLogger(__name__)

#: Names of the executions the trigger starts: ``<prefix>-<window start>``.
EXECUTION_PREFIX = "s3"
#: The input key the state machine's Choice and Wait states read (``$.wait_until``).
WAIT_KEY = "wait_until"
#: The input key of the window's end: events before it are in the execution's listing.
WINDOW_END_KEY = "window_end"
NAME_TIME_FORMAT = "%Y%m%dT%H%M%SZ"
#: The Wait state's timestamp format (RFC 3339, uppercase T and Z, whole seconds).
ASL_TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
#: The wait ends this long after the window: Wait resolves whole seconds (moto's may wake up to
#: one second early), and an object created in the window's last instant must be listed.
WAIT_MARGIN_S = 2
S3_SOURCE = "aws.s3"
OBJECT_CREATED = "Object Created"


class TriggerSettings(ChainDefaults):
    """The trigger Lambda's environment: the machine to start and the window (``TRIGGER_WINDOW_S``)."""

    state_machine_arn: str = Field(alias="STATE_MACHINE_ARN")
    aws_endpoint_url: str | None = Field(None, alias="AWS_ENDPOINT_URL")
    aws_region: str | None = Field(None, alias="AWS_REGION")  # Lambda sets it

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> TriggerSettings:
        """Settings from environment variables; :class:`SettingsError` naming what is wrong."""
        env = dict(os.environ if environ is None else environ)
        names = {f.alias for f in cls.model_fields.values() if f.alias}
        try:
            return cls.model_validate({k: v for k, v in env.items() if k in names and v != ""})
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
            raise SettingsError(f"invalid trigger environment: {problems}") from exc


@dataclass(frozen=True)
class Window:
    """One coalescing window ``[start, end)``."""

    start: datetime
    end: datetime

    @property
    def execution_name(self) -> str:
        return f"{EXECUTION_PREFIX}-{self.start.strftime(NAME_TIME_FORMAT)}"

    def execution_input(self) -> dict[str, str]:
        """The execution's input: identical for every event of the window (StartExecution idempotency)."""
        return {
            WAIT_KEY: (self.end + timedelta(seconds=WAIT_MARGIN_S)).strftime(ASL_TIME_FORMAT),
            "window_start": self.start.strftime(ASL_TIME_FORMAT),
            WINDOW_END_KEY: self.end.strftime(ASL_TIME_FORMAT),
        }


def window_seconds(window_s: float) -> int:
    """The window in whole seconds (execution names and the Wait state resolve seconds)."""
    return max(1, round(window_s))


def window_of(event_time: datetime, window_s: float) -> Window:
    """The window ``event_time`` falls in: aligned to the epoch, ``window_s`` long."""
    if event_time.tzinfo is None:
        raise ValueError(f"naive event time {event_time!r}: pass a timezone-aware UTC time")
    width = window_seconds(window_s)
    start = math.floor(event_time.timestamp() / width) * width
    return Window(datetime.fromtimestamp(start, UTC), datetime.fromtimestamp(start + width, UTC))


@dataclass(frozen=True)
class ObjectCreated:
    """The part of an S3 ``Object Created`` EventBridge event the trigger uses."""

    bucket: str
    key: str
    time: datetime


def parse_time(value: str | float) -> datetime:
    """An EventBridge ``time`` (``2021-11-12T00:00:00Z``) as an aware UTC datetime.

    Epoch seconds are accepted too: moto's S3 puts those in its EventBridge events.
    """
    if isinstance(value, int | float):
        return datetime.fromtimestamp(value, UTC)
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).astimezone(UTC)


def parse_event(event: Mapping[str, Any]) -> ObjectCreated | None:
    """The object of an S3 ``Object Created`` event; None for any other event."""
    if event.get("source") != S3_SOURCE or event.get("detail-type") != OBJECT_CREATED:
        return None
    detail = event.get("detail") or {}
    try:
        return ObjectCreated(
            bucket=str(detail["bucket"]["name"]),
            key=str(detail["object"]["key"]),
            time=parse_time(event["time"]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"malformed S3 Object Created event ({exc!r}): {json.dumps(event)[:500]}") from exc


def object_created_event(bucket: str, key: str, time: datetime, region: str = "us-east-1") -> dict[str, Any]:
    """An S3 ``Object Created`` event as EventBridge delivers it (the local runner's, and tests')."""
    return {
        "version": "0",
        "id": f"local-{bucket}-{key}-{time.timestamp():.6f}",
        "detail-type": OBJECT_CREATED,
        "source": S3_SOURCE,
        "time": time.astimezone(UTC).strftime(ASL_TIME_FORMAT),
        "region": region,
        "resources": [f"arn:aws:s3:::{bucket}"],
        "detail": {
            "version": "0",
            "bucket": {"name": bucket},
            "object": {"key": key},
            "reason": "PutObject",
        },
    }


def event_pattern(bucket: str, prefix: str) -> dict[str, Any]:
    """The EventBridge rule's pattern: S3 ``Object Created`` in ``bucket`` under ``prefix``.

    ``inference/tf/modules/trigger`` writes the same pattern (tests/infra/test_terraform.py checks it).
    """
    return {
        "source": [S3_SOURCE],
        "detail-type": [OBJECT_CREATED],
        "detail": {"bucket": {"name": [bucket]}, "object": {"key": [{"prefix": prefix}]}},
    }


@dataclass(frozen=True)
class TriggerOutcome:
    """What one event did: ``started`` an execution, was ``coalesced`` into one, or was ``ignored``."""

    action: Literal["started", "coalesced", "ignored"]
    execution_name: str | None
    execution_arn: str | None
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def execution_arn(state_machine_arn: str, name: str) -> str:
    """The ARN Step Functions gives execution ``name`` of a state machine."""
    return state_machine_arn.replace(":stateMachine:", ":execution:", 1) + f":{name}"


def _window_end(sfn: Any, arn: str) -> datetime | None:
    """The ``window_end`` of an execution's input, if it has one."""
    try:
        raw = json.loads(sfn.describe_execution(executionArn=arn).get("input") or "{}")
        return parse_time(raw[WINDOW_END_KEY]) if isinstance(raw, dict) and WINDOW_END_KEY in raw else None
    except (ValueError, TypeError):
        return None


def running_waiter(sfn: Any, state_machine_arn: str, event_time: datetime) -> tuple[str, str] | None:
    """(name, ARN) of a RUNNING triggered execution whose window ends after ``event_time``, if any.

    Its Process lists the input prefix after its window (and margin), so an object created at
    ``event_time`` is in that listing.
    """
    for page in sfn.get_paginator("list_executions").paginate(
        stateMachineArn=state_machine_arn, statusFilter="RUNNING"
    ):
        for ex in page.get("executions", []):
            if not str(ex.get("name", "")).startswith(f"{EXECUTION_PREFIX}-"):
                continue  # scheduled or manual runs do not wait
            until = _window_end(sfn, ex["executionArn"])
            if until is not None and until > event_time:
                return str(ex["name"]), str(ex["executionArn"])
    return None


def trigger(sfn: Any, state_machine_arn: str, event_time: datetime, window_s: float) -> TriggerOutcome:
    """Start the execution of ``event_time``'s window unless a running or earlier one covers it."""
    from botocore.exceptions import ClientError

    window = window_of(event_time, window_s)
    name = window.execution_name
    waiter = running_waiter(sfn, state_machine_arn, event_time)
    if waiter is not None:
        return TriggerOutcome("coalesced", waiter[0], waiter[1], "a running execution lists after this event")
    try:
        answer = sfn.start_execution(
            stateMachineArn=state_machine_arn,
            name=name,
            input=json.dumps(window.execution_input(), sort_keys=True),
        )
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") != "ExecutionAlreadyExists":
            raise
        # The window's execution exists and is closed: it listed after the window ended, i.e.
        # after this object was created.
        return TriggerOutcome(
            "coalesced", name, execution_arn(state_machine_arn, name), "the window's execution already ran"
        )
    return TriggerOutcome(
        "started", name, str(answer["executionArn"]), f"window until {window.end:%H:%M:%S}Z"
    )


def is_image_key(key: str) -> bool:
    """Whether ``key`` is an input the chain lists (the same suffixes as :func:`inference.inputs.list_objects`)."""
    from inference.inputs import IMAGE_SUFFIXES

    return key.lower().endswith(IMAGE_SUFFIXES)


def handle_event(
    sfn: Any, state_machine_arn: str, event: Mapping[str, Any], window_s: float
) -> TriggerOutcome:
    """One EventBridge event: an image's ``Object Created`` starts or joins its window's execution."""
    created = parse_event(event)
    if created is None:
        return TriggerOutcome(
            "ignored", None, None, f"not an S3 Object Created event: {event.get('detail-type')!r}"
        )
    if not is_image_key(created.key):
        return TriggerOutcome("ignored", None, None, f"not an image: {created.key}")
    outcome = trigger(sfn, state_machine_arn, created.time, window_s)
    log.info(
        "s3://%s/%s at %s: %s %s (%s)",
        created.bucket,
        created.key,
        created.time.isoformat(),
        outcome.action,
        outcome.execution_name,
        outcome.reason,
    )
    return outcome

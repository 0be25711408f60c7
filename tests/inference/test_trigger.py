"""Runs triggered by new imagery (inference/trigger.py): windows, events, coalescing.

The coalescing tests start executions of the real ``pipeline.asl.json`` on moto's Step Functions
(the local runner's emulator, with fast fake handlers): its StartExecution has the real name
semantics (idempotent for an open execution with the same input, ``ExecutionAlreadyExists`` for
a closed one) and its Choice/Wait states hold a triggered run until its window closes. The last
test sends real S3 object-created notifications through an EventBridge rule (moto server) to an
SQS queue and feeds what arrives to the trigger.
"""

from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from core import storage
from inference import trigger
from setup.tools import local_statemachine as local

WINDOW_S = 2


def test_windows_align_to_the_epoch_and_name_their_execution() -> None:
    t = datetime(2026, 12, 2, 5, 31, 17, 400000, tzinfo=UTC)
    w = trigger.window_of(t, 300)
    assert (w.start, w.end) == (
        datetime(2026, 12, 2, 5, 30, tzinfo=UTC),
        datetime(2026, 12, 2, 5, 35, tzinfo=UTC),
    )
    assert w.execution_name == "s3-20261202T053000Z"
    assert trigger.window_of(t + timedelta(seconds=100), 300) == w  # same window, same execution
    assert trigger.window_of(datetime(2026, 12, 2, 5, 35, tzinfo=UTC), 300).start == w.end  # [start, end)
    assert w.execution_input() == {
        "wait_until": "2026-12-02T05:35:02Z",  # the window's end plus WAIT_MARGIN_S
        "window_start": "2026-12-02T05:30:00Z",
        "window_end": "2026-12-02T05:35:00Z",
    }
    assert len(w.execution_name) <= 80 and ":" not in w.execution_name  # a valid execution name
    with pytest.raises(ValueError, match="naive"):
        trigger.window_of(datetime(2026, 1, 1), 300)


def test_parse_the_s3_object_created_event() -> None:
    # The example of the S3 user guide's "EventBridge event message structure" page.
    event = {
        "version": "0",
        "id": "17793124-05d4-b198-2fde-7ededc63b103",
        "detail-type": "Object Created",
        "source": "aws.s3",
        "account": "111122223333",
        "time": "2021-11-12T00:00:00Z",
        "region": "ca-central-1",
        "resources": ["arn:aws:s3:::amzn-s3-demo-bucket1"],
        "detail": {
            "version": "0",
            "bucket": {"name": "amzn-s3-demo-bucket1"},
            "object": {"key": "example-key", "size": 5, "etag": "b1946ac92492d2347c6235b4d2611184"},
            "request-id": "N4N7GDK58NMKJ12R",
            "requester": "123456789012",
            "reason": "PutObject",
        },
    }
    created = trigger.parse_event(event)
    assert created == trigger.ObjectCreated(
        "amzn-s3-demo-bucket1", "example-key", datetime(2021, 11, 12, tzinfo=UTC)
    )
    assert trigger.parse_event({**event, "detail-type": "Object Deleted"}) is None
    assert trigger.parse_event({"source": "aws.events", "detail-type": "Scheduled Event"}) is None
    with pytest.raises(ValueError, match="malformed"):
        trigger.parse_event({**event, "detail": {"bucket": {}}})
    made = trigger.object_created_event("b", "k.tif", datetime(2021, 11, 12, tzinfo=UTC))
    assert trigger.parse_event(made) == trigger.ObjectCreated(
        "b", "k.tif", datetime(2021, 11, 12, tzinfo=UTC)
    )


def _handlers(tmp_path):
    """process writes empty manifests (nothing to predict); the rest succeed. Records process calls."""
    prefix = storage.to_uri(tmp_path / "manifests")
    processed: list[tuple[str, datetime]] = []

    def process(event, context):
        processed.append((event["execution_id"], datetime.now(UTC)))
        out = {"execution_id": event["execution_id"], "max_concurrency": 1, "tolerated_failure_percentage": 0}
        for kind in ("manifest", "scenes"):
            uri = f"{prefix}/{event['execution_id']}.{kind}.json"
            storage.write_text(uri, "[]")
            out[f"{kind}_uri"], out[f"{kind}_key"] = uri, uri[len("file:///") :]
        return out

    def ok(event, context):
        return {"execution_id": event["execution_id"]}

    handlers = {name: ok for name in local.FUNCTIONS}
    handlers["process"] = process
    return prefix, handlers, processed


def _executions(machine) -> list[dict]:
    return machine.sfn.list_executions(stateMachineArn=machine.arn)["executions"]


def test_events_of_a_window_start_one_execution_and_a_running_one_is_not_duplicated(tmp_path) -> None:
    prefix, handlers, processed = _handlers(tmp_path)
    with local.state_machine(prefix, handlers=handlers, timeout_s=60) as machine:
        now = datetime.now(UTC)
        first = trigger.trigger(machine.sfn, machine.arn, now, WINDOW_S)
        assert (
            first.action == "started"
            and first.execution_name == trigger.window_of(now, WINDOW_S).execution_name
        )
        # Three more uploads of the same window while its execution waits: coalesced, no start.
        for _ in range(3):
            again = trigger.trigger(machine.sfn, machine.arn, now, WINDOW_S)
            assert (again.action, again.execution_arn) == ("coalesced", first.execution_arn)
        assert len(_executions(machine)) == 1
        done = machine.wait(first.execution_arn)
        assert done.succeeded, (done.error, done.cause)
        ((name, at),) = processed
        # Process listed only after the window (and the margin) closed.
        assert name == first.execution_name and at >= trigger.window_of(now, WINDOW_S).end
        # A late event of that window, after its execution closed: ExecutionAlreadyExists -> coalesced.
        late = trigger.trigger(machine.sfn, machine.arn, now, WINDOW_S)
        assert (late.action, late.execution_name) == ("coalesced", first.execution_name)
        assert len(_executions(machine)) == 1
        # The next window gets its own execution.
        later = datetime.now(UTC)
        assert trigger.window_of(later, WINDOW_S) != trigger.window_of(now, WINDOW_S)
        second = trigger.trigger(machine.sfn, machine.arn, later, WINDOW_S)
        assert second.action == "started" and second.execution_name != first.execution_name
        assert machine.wait(second.execution_arn).succeeded
    assert [n for n, _ in processed] == [first.execution_name, second.execution_name]


def test_a_late_event_joins_the_waiting_execution_of_a_later_window(tmp_path) -> None:
    """An event delivered late (its time in an earlier, closed window) while a later window's
    execution still waits: that execution will list the object, so nothing else is started."""
    prefix, handlers, processed = _handlers(tmp_path)
    with local.state_machine(prefix, handlers=handlers, timeout_s=60) as machine:
        now = datetime.now(UTC)
        current = trigger.trigger(machine.sfn, machine.arn, now, WINDOW_S)
        assert current.action == "started"
        late = trigger.trigger(machine.sfn, machine.arn, now - timedelta(seconds=10 * WINDOW_S), WINDOW_S)
        assert (late.action, late.execution_name) == ("coalesced", current.execution_name)
        assert machine.wait(current.execution_arn).succeeded
    assert len(processed) == 1


def test_racing_triggers_still_make_one_execution(tmp_path, monkeypatch) -> None:
    """Two trigger Lambdas that both saw no running execution: StartExecution with the same name
    and input is idempotent while the first is open, so the window still has one execution."""
    prefix, handlers, processed = _handlers(tmp_path)
    monkeypatch.setattr(trigger, "running_waiter", lambda *a: None)  # both looked before either started
    with local.state_machine(prefix, handlers=handlers, timeout_s=60) as machine:
        now = datetime.now(UTC)
        a = trigger.trigger(machine.sfn, machine.arn, now, WINDOW_S)
        b = trigger.trigger(machine.sfn, machine.arn, now, WINDOW_S)
        assert a.execution_arn == b.execution_arn and len(_executions(machine)) == 1
        assert machine.wait(a.execution_arn).succeeded
    assert len(processed) == 1


def test_handle_event_ignores_what_is_not_an_image(tmp_path) -> None:
    prefix, handlers, _ = _handlers(tmp_path)
    with local.state_machine(prefix, handlers=handlers, timeout_s=60) as machine:
        now = datetime.now(UTC)
        note = trigger.handle_event(
            machine.sfn, machine.arn, trigger.object_created_event("b", "in/x.json", now), 1
        )
        other = trigger.handle_event(
            machine.sfn, machine.arn, {"source": "aws.events", "detail-type": "x"}, 1
        )
        assert (note.action, other.action) == ("ignored", "ignored") and _executions(machine) == []


def test_trigger_settings_from_the_environment() -> None:
    s = trigger.TriggerSettings.from_env(
        {"STATE_MACHINE_ARN": "arn:x", "TRIGGER_WINDOW_S": "60", "OTHER": "1"}
    )
    assert (s.state_machine_arn, s.trigger_window_s) == ("arn:x", 60.0)
    assert trigger.TriggerSettings.from_env({"STATE_MACHINE_ARN": "arn:x"}).trigger_window_s == 300.0
    with pytest.raises(trigger.SettingsError, match="STATE_MACHINE_ARN"):
        trigger.TriggerSettings.from_env({})
    with pytest.raises(trigger.SettingsError, match="TRIGGER_WINDOW_S"):
        trigger.TriggerSettings.from_env({"STATE_MACHINE_ARN": "arn:x", "TRIGGER_WINDOW_S": "0"})


def test_s3_notifications_through_an_eventbridge_rule_start_one_execution(moto_server, tmp_path) -> None:
    """moto server: the bucket sends Object Created events to EventBridge; the rule (the pattern
    Terraform deploys) matches the input prefix; its SQS target stands in for the trigger Lambda,
    and each delivered event goes through :func:`trigger.handle_event`."""
    storage.configure(endpoint_url=moto_server, region="us-east-1")
    try:
        s3, events, sqs = (storage.boto3_client(n) for n in ("s3", "events", "sqs"))
        bucket = f"data-{uuid.uuid4().hex[:8]}"
        s3.create_bucket(Bucket=bucket)
        s3.put_bucket_notification_configuration(
            Bucket=bucket, NotificationConfiguration={"EventBridgeConfiguration": {}}
        )
        queue = sqs.create_queue(QueueName=bucket)["QueueUrl"]
        queue_arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"][
            "QueueArn"
        ]
        rule = f"{bucket}-input"
        events.put_rule(Name=rule, EventPattern=json.dumps(trigger.event_pattern(bucket, "incoming/")))
        events.put_targets(Rule=rule, Targets=[{"Id": "trigger", "Arn": queue_arn}])

        for key in ("incoming/a.tif", "incoming/b.TIF", "incoming/notes.txt", "elsewhere/c.tif"):
            s3.put_object(Bucket=bucket, Key=key, Body=b"x")
        delivered = []
        deadline = time.monotonic() + 10
        while len(delivered) < 3 and time.monotonic() < deadline:
            for m in sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10).get("Messages", []):
                delivered.append(json.loads(m["Body"]))
        assert sorted(e["detail"]["object"]["key"] for e in delivered) == [
            "incoming/a.tif",
            "incoming/b.TIF",
            "incoming/notes.txt",
        ]  # the prefix filter kept elsewhere/ out

        prefix, handlers, processed = _handlers(tmp_path)
        window_s = 600  # all three within one window (unless they straddle a boundary: counted below)
        with local.state_machine(prefix, handlers=handlers, timeout_s=60) as machine:
            outcomes = [trigger.handle_event(machine.sfn, machine.arn, e, window_s) for e in delivered]
            images = [o for o in outcomes if o.action != "ignored"]
            windows = {trigger.window_of(trigger.parse_event(e).time, window_s) for e in delivered}
            assert len(images) == 2 and sum(o.action == "started" for o in images) == len(windows)
            assert len({o.execution_name for o in images}) == len(windows)
            running = _executions(machine)
            assert [x["status"] for x in running] == ["RUNNING"] * len(windows)  # waiting for the window
            for x in running:
                machine.sfn.stop_execution(executionArn=x["executionArn"])
        assert processed == []  # stopped while waiting: nothing listed early
    finally:
        storage.configure()


def test_the_lambda_handler_starts_the_window_s_execution(tmp_path, monkeypatch) -> None:
    """The thin shell: settings from the environment, the client from the storage layer's endpoint."""
    from inference.handlers import trigger as handler_module

    prefix, handlers, processed = _handlers(tmp_path)
    with local.state_machine(prefix, handlers=handlers, timeout_s=60) as machine:
        monkeypatch.setenv("STATE_MACHINE_ARN", machine.arn)
        monkeypatch.setenv("TRIGGER_WINDOW_S", str(WINDOW_S))
        monkeypatch.setenv("AWS_ENDPOINT_URL", machine.sfn.meta.endpoint_url)
        monkeypatch.setenv("AWS_REGION", "us-east-1")
        monkeypatch.setattr(handler_module, "_settings", None)
        try:
            event = trigger.object_created_event("data", "incoming/a.tif", datetime.now(UTC))
            out = handler_module.handler(event, None)
            assert out["action"] == "started" and out["execution_name"].startswith("s3-")
            assert handler_module.handler(event, None)["action"] == "coalesced"
            assert machine.wait(out["execution_arn"]).succeeded
        finally:
            storage.configure()
    assert len(processed) == 1


def test_upload_and_run_coalesces_uploads_of_a_window_into_one_run(tmp_uri, postgres_url) -> None:
    """``make upload_and_run_inference``'s loop: three uploads in one window -> one execution of
    the real chain (real handlers, Postgres ledger) that predicts all three, and one notice."""
    from inference import notify
    from setup.tools import run_local
    from tests.inference.chain_fixtures import chain_settings, make_champion, migrated

    settings = chain_settings(tmp_uri, migrated(postgres_url))
    make_champion(settings.registry_uri)
    window_s = 6
    while time.time() % window_s > 1.0:  # start just after a boundary: the uploads share a window
        time.sleep(0.1)
    summaries = run_local.upload_and_run(
        settings, scenes=3, interval_s=0.2, size=256, seed=900, window_s=window_s
    )
    (summary,) = summaries
    assert summary["status"] == "SUCCEEDED", summary["error"]
    assert summary["execution_id"].startswith("s3-")
    assert (summary["discovered"], summary["predicted"], summary["failed"]) == (3, 3, 0)
    notice = notify.read_notice(settings, summary["execution_id"], "succeeded")
    assert notice["channel"] == "file" and notice["summary"]["scenes"]["predicted"] == 3
    assert summary["notice_uri"] == notify.notice_uri(settings, summary["execution_id"], "succeeded")

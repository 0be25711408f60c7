"""Completion notices (inference/notify.py): the summary is the ledger's, one message per execution.

Real Postgres ledger; SNS (and the SQS queue subscribed to it, to read what was delivered) on the
moto server of ``tests/conftest.py``. The last test runs the real chain on the local state
machine with a topic configured.
"""

from __future__ import annotations

import json
import uuid
from datetime import timedelta

import pytest

from core import storage
from inference import notify, transactions
from inference.ledger import RunStatus, SceneStatus, repository
from inference.ledger.models import utcnow
from tests.inference.chain_fixtures import chain_settings, make_champion, migrated, write_bad, write_scene

VERSION = "v-test-1"


@pytest.fixture
def topic(moto_server):
    """An SNS topic with a raw SQS subscription on the moto server; yields (topic ARN, receive())."""
    storage.configure(endpoint_url=moto_server, region="us-east-1")
    sns, sqs = storage.boto3_client("sns"), storage.boto3_client("sqs")
    name = f"notices-{uuid.uuid4().hex[:8]}"
    arn = sns.create_topic(Name=name)["TopicArn"]
    queue = sqs.create_queue(QueueName=name)["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    sns.subscribe(TopicArn=arn, Protocol="sqs", Endpoint=queue_arn)

    def receive() -> list[dict]:
        out = []
        while True:
            got = sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10, WaitTimeSeconds=0)
            if not got.get("Messages"):
                return out
            for m in got["Messages"]:
                out.append(json.loads(m["Body"]))  # the SNS envelope (not raw delivery)
                sqs.delete_message(QueueUrl=queue, ReceiptHandle=m["ReceiptHandle"])

    try:
        yield arn, receive
    finally:
        storage.configure()


def _sha(n: int) -> str:
    return f"{n:064x}"


def _predict(s, scene, run, i: int, output_uri: str) -> None:
    now = utcnow()
    repository.transition(s, scene, SceneStatus.validated)
    repository.claim_for_prediction(s, scene, run.execution_id, 60.0)
    repository.record_prediction(
        s,
        scene,
        VERSION,
        input_sha256=scene.sha256,
        class_uri=f"{output_uri}/{scene.sha256}/{VERSION}/classes.tif",
        stac_uri=f"{output_uri}/{scene.sha256}/{VERSION}/item.json",
        started_at=now - timedelta(seconds=1),
        finished_at=now,
        run_id=run.id,
        seconds=1.0,
    )


@pytest.fixture
def ledger(tmp_uri, postgres_url):
    """A run with 3 predicted scenes (0.25 km² each), one quarantined input and a drift flag."""
    settings = chain_settings(tmp_uri, migrated(postgres_url))
    with transactions.session(settings) as s:
        run, _ = repository.start_run(s, "exec-1", model_version=VERSION)
        for i in range(3):
            scene, _ = repository.register_scene(s, _sha(i + 1), f"file:///in/s{i}.tif", 10, area_km2=0.25)
            _predict(s, scene, run, i, settings.output_uri)
        bad, _ = repository.register_scene(s, _sha(99), "file:///in/bad.tif", 10)
        repository.quarantine(s, bad, "wrong_band_count", "3 bands, need 4")
        repository.update_run(s, "exec-1", scenes_discovered=4, scenes_quarantined=1)
        repository.record_metrics(
            s, run.id, None, VERSION, [("drift_flag", None, 1.0), ("area_km2", None, 0.7)]
        )
        repository.finish_run(s, "exec-1", scenes_predicted=3, scenes_failed=0)
    return settings


def test_summary_is_the_ledger_s(ledger) -> None:
    summary = notify.build_summary(ledger, "exec-1", "succeeded")
    assert summary["execution_id"] == "exec-1" and summary["status"] == "succeeded"
    assert summary["scenes"] == {"predicted": 3, "failed": 0, "new": 4, "quarantined": 1}
    assert summary["km2"] == pytest.approx(0.75) and summary["valid_km2"] == pytest.approx(0.7)
    assert summary["drift"] is True and summary["model_version"] == VERSION
    assert summary["quarantined"] == [{"uri": "file:///in/bad.tif", "reason": "wrong_band_count"}]
    assert summary["outputs"]["prefix"] == ledger.output_uri
    assert len(summary["outputs"]["stac_items"]) == 3 and summary["outputs"]["more_items"] == 0
    assert summary["error"] is None
    assert len(json.dumps(summary)) < 4096  # compact: far under SNS's 256 KiB
    subject = notify.subject(summary)
    assert subject.isascii() and len(subject) <= 100 and "3 scenes" in subject and "DRIFT" in subject


def test_summary_counts_predictions_of_an_earlier_attempt_after_a_redrive(ledger) -> None:
    """A redriven execution keeps its id: the predictions its first attempt recorded still count."""
    with transactions.session(ledger) as s:
        run, _ = repository.start_run(s, "exec-1", model_version=VERSION)  # reopened, as a redrive does
        scene, _ = repository.register_scene(s, _sha(7), "file:///in/late.tif", 10, area_km2=0.5)
        _predict(s, scene, run, 7, ledger.output_uri)
        repository.finish_run(s, "exec-1", scenes_predicted=1)  # observe of the redrive sees one more
    summary = notify.build_summary(ledger, "exec-1", "succeeded")
    assert summary["scenes"]["predicted"] == 4 and summary["km2"] == pytest.approx(1.25)


def test_failure_summary_before_the_run_opened(tmp_uri, postgres_url) -> None:
    settings = chain_settings(tmp_uri, migrated(postgres_url))
    error = {"Error": "NoChampionError", "Cause": json.dumps({"errorMessage": "no champion"})}
    summary = notify.build_summary(settings, "never-opened", "failed", error)
    assert summary["status"] is None and summary["scenes"]["predicted"] == 0 and summary["drift"] is None
    assert summary["error"] == "NoChampionError: no champion"
    with pytest.raises(notify.NotifyError, match="outcome"):
        notify.build_summary(settings, "x", "maybe")


def test_embedded_mode_writes_the_notice_file_once(ledger, caplog) -> None:
    first = notify.notify(ledger, "exec-1", "succeeded")
    assert first["channel"] == "file" and first["status"] == "sent"
    assert first["uri"] == f"{ledger.output_uri}/notices/exec-1.succeeded.json"
    record = json.loads(storage.read_text(first["uri"]))
    assert record["summary"]["scenes"]["predicted"] == 3
    assert "exec-1" in caplog.text and "FLAGGED" in caplog.text  # the log shows the notice too
    again = notify.notify(ledger, "exec-1", "succeeded")
    assert again["status"] == "already_sent"


def test_sns_gets_exactly_one_message_per_execution(ledger, topic) -> None:
    arn, receive = topic
    settings = ledger.model_copy(update={"notice_topic_arn": arn})
    sent = notify.notify(settings, "exec-1", "succeeded")
    assert sent["channel"] == "sns" and sent["message_id"]
    assert notify.notify(settings, "exec-1", "succeeded")["status"] == "already_sent"  # a retried Notify
    (envelope,) = receive()
    assert envelope["TopicArn"] == arn and envelope["MessageId"] == sent["message_id"]
    assert envelope["Subject"] == notify.subject(notify.build_summary(settings, "exec-1", "succeeded"))
    assert envelope["MessageAttributes"]["status"]["Value"] == "succeeded"
    body = json.loads(envelope["Message"])  # the "default" (JSON) message of MessageStructure=json
    assert body["scenes"]["predicted"] == 3 and body["km2"] == pytest.approx(0.75) and body["drift"] is True
    assert body["quarantined"][0]["reason"] == "wrong_band_count"
    assert json.loads(storage.read_text(sent["uri"]))["message_id"] == sent["message_id"]


def test_an_unreachable_ledger_still_sends_the_failure_notice(tmp_uri, topic) -> None:
    arn, receive = topic
    settings = chain_settings(tmp_uri, "postgresql+psycopg2://nobody@127.0.0.1:9/none", notice_topic_arn=arn)
    from inference import retry

    with retry.time_budget(2000):
        sent = notify.notify(settings, "exec-down", "failed", {"Error": "States.Timeout", "Cause": ""})
    assert sent["channel"] == "sns"
    (envelope,) = receive()
    body = json.loads(envelope["Message"])
    assert body["outcome"] == "failed" and body["error"].startswith("States.Timeout")
    assert "ledger_error" in body


def test_real_chain_publishes_one_notice_per_execution(s3_bucket, postgres_url, topic) -> None:
    """The local state machine with the real handlers: SNS gets the run's summary, true to the ledger."""
    from inference import handlers
    from setup.tools import local_statemachine as local

    arn, receive = topic
    settings = chain_settings(s3_bucket, migrated(postgres_url), notice_topic_arn=arn)
    make_champion(settings.registry_uri)
    for i in range(2):
        write_scene(storage.join(settings.input_uri, f"scene-{i}.tif"), seed=500 + i)
    write_bad(storage.join(settings.input_uri, "bad.tif"), "band_count")
    handlers.configure(settings)
    try:
        result = local.run_execution(settings.manifest_prefix, execution_id="notice-e2e-1")
    finally:
        handlers.configure(None)
    assert result.succeeded, (result.error, result.cause)
    assert [c for c, _ in result.calls].count("notify") == 1
    assert result.output["notice"]["channel"] == "sns"
    (envelope,) = receive()
    body = json.loads(envelope["Message"])
    with transactions.session(settings) as s:
        run = repository.get_run(s, "notice-e2e-1")
        assert run.status == RunStatus.succeeded
        predictions = repository.predictions_of_run(s, run.id, run.model_version)
        area = sum(
            repository.known_source(s, f"{settings.input_uri}/scene-{i}.tif").area_km2 for i in range(2)
        )
    assert body["scenes"] == {"predicted": 2, "failed": 0, "new": 3, "quarantined": 1}
    assert len(predictions) == 2 and body["km2"] == pytest.approx(area)
    with transactions.session(settings) as s:
        mapped = {(m.name, m.key): m.value for m in repository.metrics_for(s, run.id)}[("area_km2", "")]
    assert body["valid_km2"] == pytest.approx(mapped) and 0 < mapped < area  # the nodata border
    assert body["drift"] in (True, False) and body["model_version"] == run.model_version
    assert body["quarantined"] == [{"uri": f"{settings.input_uri}/bad.tif", "reason": "band_count"}]
    assert sorted(body["outputs"]["stac_items"]) == sorted(p.stac_uri for p in predictions)

"""The ASL definition: its shape, its templating, and runs on moto's interpreter (fault paths).

The happy path with the real model is in ``test_chain_e2e.py``; here the handlers are fakes
(fast, no torch) except for the Catch-path test and the ``AWS_ENDPOINT_URL`` run, which use the
real handlers. The shim's own checks (moto version, ANTLR runtime, overlapping runs, the default
session) are here too.
"""

from __future__ import annotations

import json
import re
import sys
import threading
import tomllib
import uuid
from pathlib import Path

import pytest

from core import storage
from inference.retry import STATE_MACHINE_RETRIED_ERRORS
from setup.tools import local_statemachine as local
from setup.tools import moto_shim
from tests.inference.chain_fixtures import (
    chain_settings,
    fast_retries,
    make_champion,
    migrated,
    write_scene,
)
from tests.infra.moto_sfn_server import MotoServerProcess

# The Lambda service's errors and task timeouts; never a handler's own error, which a layer inside
# already retried (tests/inference/test_retry_layers.py).
TRANSIENT = set(STATE_MACHINE_RETRIED_ERRORS)
TEMPLATE_VARS = {
    "process_function_arn",
    "infer_function_arn",
    "assemble_function_arn",
    "observe_function_arn",
    "failure_function_arn",
    "notify_function_arn",
    "manifest_bucket",
}


@pytest.fixture(scope="module")
def asl() -> dict:
    return json.loads(local.DEFINITION_PATH.read_text())


def _tasks(states: dict) -> dict[str, dict]:
    out = {}
    for name, state in states.items():
        if state["Type"] == "Task":
            out[name] = state
        if state["Type"] == "Map":
            out.update(_tasks(state["ItemProcessor"]["States"]))
    return out


def test_definition_is_json_templated_only_in_arns_and_bucket(asl: dict) -> None:
    text = local.DEFINITION_PATH.read_text()
    assert set(re.findall(r"\$\{(\w+)\}", text)) == TEMPLATE_VARS
    assert "%{" not in text  # no templatefile directives
    rendered = json.loads(local.local_definition("my-bucket"))
    assert "${" not in json.dumps(rendered)
    for name in ("InferBlocks", "AssembleScenes"):
        assert rendered["States"][name]["ItemReader"]["Parameters"]["Bucket"] == "my-bucket"
    with pytest.raises(KeyError, match="manifest_bucket"):
        local.render(text, {f"{n}_function_arn": "x" for n in local.FUNCTIONS})


def test_definition_shape(asl: dict) -> None:
    states = asl["States"]
    # A triggered run waits for its coalescing window; any other starts with Process at once.
    assert asl["StartAt"] == "Start" and states["Start"]["Type"] == "Choice"
    assert states["Start"]["Default"] == "Process"
    (choice,) = states["Start"]["Choices"]
    assert choice["Next"] == "AwaitWindow" and {c["Variable"] for c in choice["And"]} == {"$.wait_until"}
    assert states["AwaitWindow"] == {**states["AwaitWindow"], "Type": "Wait", "TimestampPath": "$.wait_until"}
    assert states["AwaitWindow"]["Next"] == "Process"
    # Process's input contract is unchanged: the execution name only.
    assert states["Process"]["Parameters"] == {"execution_id.$": "$$.Execution.Name"}
    assert states["Process"]["Next"] == "InferBlocks"
    for name, key, then in (
        ("InferBlocks", "$.manifest_key", "AssembleScenes"),
        ("AssembleScenes", "$.scenes_key", "ShadowOrObserve"),
        ("ShadowBlocks", "$.manifest_key", "ShadowScenes"),
        ("ShadowScenes", "$.scenes_key", "Observe"),
    ):
        m = states[name]
        assert m["Type"] == "Map" and m["Next"] == then
        assert m["ItemProcessor"]["ProcessorConfig"] == {"Mode": "DISTRIBUTED", "ExecutionType": "STANDARD"}
        assert m["ItemReader"]["Resource"] == "arn:aws:states:::s3:getObject"
        assert m["ItemReader"]["ReaderConfig"]["InputType"] == "JSON"
        assert m["ItemReader"]["Parameters"]["Key.$"] == key
        # Concurrency and tolerance come from the config, through process's output.
        assert m["MaxConcurrencyPath"] == "$.max_concurrency"
        assert m["ToleratedFailurePercentagePath"] == "$.tolerated_failure_percentage"
        assert m["ResultPath"] is None  # the Map's results never enter the state's data
    # The shadow Maps are the champion's with two more item fields; their failure never fails the run.
    for shadow, served in (("ShadowBlocks", "InferBlocks"), ("ShadowScenes", "AssembleScenes")):
        a, b = states[shadow], states[served]
        # State names are unique across a machine: the shadow task is the served one, renamed.
        (task,) = a["ItemProcessor"]["States"].values()
        (served_task,) = b["ItemProcessor"]["States"].values()
        assert {**task, "Comment": ""} == {**served_task, "Comment": ""}
        assert a["ItemProcessor"]["ProcessorConfig"] == b["ItemProcessor"]["ProcessorConfig"]
        assert a["ItemReader"] == b["ItemReader"]
        for key in ("MaxConcurrencyPath", "ToleratedFailurePercentagePath", "ResultPath"):
            assert a[key] == b[key]
        assert a["ItemSelector"] == {
            **b["ItemSelector"],
            "shadow": True,
            "challenger_version.$": "$.challenger_version",
        }
        assert a["Catch"] == [
            {"ErrorEquals": ["States.ALL"], "ResultPath": "$.shadow_error", "Next": "Observe"}
        ]
    shadow_choice = states["ShadowOrObserve"]
    assert shadow_choice["Type"] == "Choice" and shadow_choice["Default"] == "Observe"
    assert shadow_choice["Choices"][0]["Next"] == "ShadowBlocks"
    assert {next(k for k in c if k != "Variable") for c in shadow_choice["Choices"][0]["And"]} == {
        "IsPresent",
        "IsString",
    }
    # One notice per execution: after Observe, and after RecordFailure before the Fail state.
    assert states["Observe"]["Next"] == "NotifySucceeded"
    assert states["NotifySucceeded"]["Next"] == "Succeeded" and states["Succeeded"]["Type"] == "Succeed"
    assert states["RecordFailure"]["Next"] == "NotifyFailed"
    assert states["RecordFailure"]["Catch"][0]["Next"] == "NotifyFailed"
    assert states["NotifyFailed"]["Next"] == "Failed" and states["Failed"]["Type"] == "Fail"
    for name, outcome, after in (
        ("NotifySucceeded", "succeeded", "Succeeded"),
        ("NotifyFailed", "failed", "Failed"),
    ):
        notify = states[name]
        assert notify["Parameters"]["execution_id.$"] == "$$.Execution.Name"
        assert notify["Parameters"]["outcome"] == outcome
        assert notify["ResultPath"] == "$.notice"  # Observe's output stays the execution's output
        # A notice that cannot be sent never changes the run's outcome.
        assert notify["Catch"] == [
            {"ErrorEquals": ["States.ALL"], "ResultPath": "$.notice_error", "Next": after}
        ]
    # The caught error stays at $.error for the failure notice, whether or not RecordFailure worked.
    assert states["RecordFailure"]["ResultPath"] == "$.failure"
    assert states["RecordFailure"]["Catch"][0]["ResultPath"] == "$.record_failure_error"
    assert states["NotifyFailed"]["Parameters"]["error.$"] == "$.error"

    tasks = _tasks(states)
    assert set(tasks) == {
        "Process",
        "Infer",
        "Assemble",
        "ShadowInfer",
        "ShadowAssemble",
        "Observe",
        "RecordFailure",
        "NotifySucceeded",
        "NotifyFailed",
    }
    for name, task in tasks.items():
        retry = task["Retry"][0]
        assert set(retry["ErrorEquals"]) == TRANSIENT, name
        assert retry["BackoffRate"] > 1 and retry["MaxAttempts"] >= 2, name
        assert task["Resource"].startswith("${") and task["Resource"].endswith("_function_arn}")
    for name in ("Process", "InferBlocks", "AssembleScenes", "Observe"):
        catch = states[name]["Catch"]
        assert catch == [{"ErrorEquals": ["States.ALL"], "ResultPath": "$.error", "Next": "RecordFailure"}]
    # Payloads carry ids/URIs: the failure step gets the execution name and the caught error.
    assert states["RecordFailure"]["Parameters"] == {
        "execution_id.$": "$$.Execution.Name",
        "error.$": "$.error",
    }


def _fake_handlers(tmp_path, **overrides):
    """process writes a 3-item manifest; infer/observe succeed; failure records its event."""
    from core import storage

    seen: dict[str, list] = {"infer": [], "assemble": [], "failure": [], "observe": [], "notify": []}
    prefix = storage.to_uri(tmp_path / "manifests")

    def process(event, context):
        uri = f"{prefix}/{event['execution_id']}.json"
        scenes_uri = f"{prefix}/{event['execution_id']}.scenes.json"
        items = [{"scene_id": i, "uri": f"file:///s{i}.tif", "sha256": "0" * 64} for i in range(3)]
        storage.write_text(scenes_uri, json.dumps(items))
        storage.write_text(uri, json.dumps([{**item, "block": 0} for item in items]))
        return {
            "execution_id": event["execution_id"],
            "manifest_uri": uri,
            "manifest_key": uri[len("file:///") :],
            "scenes_uri": scenes_uri,
            "scenes_key": scenes_uri[len("file:///") :],
            "max_concurrency": 2,
            "tolerated_failure_percentage": 5.0,
        }

    def infer(event, context):
        seen["infer"].append(event)
        return {"scene_id": event["item"]["scene_id"], "status": "predicted"}

    def assemble(event, context):
        seen["assemble"].append(event)
        return {"scene_id": event["item"]["scene_id"], "status": "predicted"}

    def observe(event, context):
        seen["observe"].append(event)
        return {"execution_id": event["execution_id"], "scenes": 3}

    def failure(event, context):
        seen["failure"].append(event)
        return {"execution_id": event["execution_id"], "status": "failed"}

    def notify(event, context):
        seen["notify"].append(event)
        return {"execution_id": event["execution_id"], "channel": "test", "status": "sent"}

    handlers = {
        "process": process,
        "infer": infer,
        "assemble": assemble,
        "observe": observe,
        "failure": failure,
        "notify": notify,
    }
    handlers.update(overrides)
    return prefix, handlers, seen


def test_map_fans_out_over_the_manifest_and_retries_transient_errors(tmp_path, monkeypatch) -> None:
    prefix, handlers, seen = _fake_handlers(tmp_path)
    real_infer, flaky = handlers["infer"], {"left": 2}

    class Throttled(Exception):
        error_type = "Lambda.TooManyRequestsException"

    def infer(event, context):
        if event["item"]["scene_id"] == 1 and flaky["left"]:
            flaky["left"] -= 1
            raise Throttled("rate exceeded")
        return real_infer(event, context)

    sleeps = fast_retries(monkeypatch)
    handlers["infer"] = infer
    result = local.run_execution(prefix, execution_id="fanout-1", handlers=handlers)
    assert result.succeeded, (result.error, result.cause)
    assert sorted(e["item"]["scene_id"] for e in seen["infer"]) == [0, 1, 2]
    assert sorted(e["item"]["scene_id"] for e in seen["assemble"]) == [0, 1, 2]
    assert all(e["execution_id"] == "fanout-1" for e in seen["infer"])
    assert len(sleeps) == 2  # two retries with (jittered) backoff, no real sleeping
    assert all(0 <= s <= 60 for s in sleeps)  # FULL jitter within MaxDelaySeconds
    assert result.calls.count(("infer", "error")) == 2 and result.calls.count(("infer", "ok")) == 3
    assert seen["observe"] == [{"execution_id": "fanout-1"}] and not seen["failure"]
    assert seen["notify"] == [{"execution_id": "fanout-1", "outcome": "succeeded"}]
    assert result.output["notice"]["status"] == "sent"


@pytest.mark.parametrize(
    ("exc", "error"), [(ValueError("observe broke"), "ValueError"), (SystemExit(3), "Runtime.ExitError")]
)
def test_a_failing_step_goes_through_the_catch_path(tmp_path, exc, error) -> None:
    """A handler's exception reaches Catch as a Lambda function error named like a real Lambda's."""

    def observe(event, context):
        raise exc

    prefix, handlers, seen = _fake_handlers(tmp_path, observe=observe)
    result = local.run_execution(prefix, execution_id="catch-1", handlers=handlers)
    assert result.status == "FAILED" and result.error == "InferencePipelineFailed"
    assert ("observe", "error") in result.calls
    (event,) = seen["failure"]
    assert event["execution_id"] == "catch-1"
    assert event["error"]["Error"] == error
    cause = json.loads(event["error"]["Cause"])  # Lambda's error payload
    assert cause["errorType"] == error and cause["errorMessage"] == (str(exc) or error)
    assert cause["stackTrace"] and "observe" in "".join(cause["stackTrace"])


def test_catch_path_records_the_failure_in_the_ledger(tmp_path, postgres_url) -> None:
    """Real handlers: process finds no champion, RecordFailure marks the run failed with the reason."""
    from core import storage
    from inference import handlers, transactions
    from inference.ledger import RunStatus, repository

    settings = chain_settings(storage.to_uri(tmp_path), migrated(postgres_url))
    handlers.configure(settings)
    try:
        result = local.run_execution(settings.manifest_prefix, execution_id="no-champion-1")
    finally:
        handlers.configure(None)
    assert result.status == "FAILED"
    assert [c for c, _ in result.calls] == ["process", "failure", "notify"]
    with transactions.session(settings) as s:
        run = repository.get_run(s, "no-champion-1")
        assert run.status == RunStatus.failed and run.finished_at is not None
        assert run.error.startswith("NoChampionError:") and "make train_baseline" in run.error
    # Embedded mode (no topic): the failure notice is the file under the output prefix.
    from inference import notify

    notice = notify.read_notice(settings, "no-champion-1", "failed")
    assert notice["channel"] == "file"
    assert notice["summary"]["status"] == "failed" and notice["summary"]["error"] == run.error


def test_antlr_swap_and_default_session_are_put_back(tmp_path) -> None:
    """moto's parser runs on ANTLR 4.13 while omegaconf keeps its 4.9 runtime; the caller's
    default boto3 session is the same object after a run."""
    import boto3

    from core.config import compose

    boto3.setup_default_session(region_name="eu-west-1")
    mine = boto3.DEFAULT_SESSION
    before = compose(["inference.chip_size=128"])
    prefix, handlers, _ = _fake_handlers(tmp_path)
    assert local.run_execution(prefix, handlers=handlers).succeeded
    after = compose(["inference.chip_size=64"])
    assert (before.inference.chip_size, after.inference.chip_size) == (128, 64)
    assert boto3.DEFAULT_SESSION is mine
    assert "sfn-antlr4" not in str(sys.modules["antlr4"].__file__)


def test_overlapping_runs_each_reach_their_own_handlers(tmp_path) -> None:
    """Two executions at once in one process: both run (each infer waits for the other's) and
    every invoke goes to its own run's handlers."""
    both_inferring = threading.Barrier(2, timeout=60)
    runs: dict[str, tuple] = {}

    def run(name: str) -> None:
        prefix, handlers, seen = _fake_handlers(tmp_path / name)
        real_infer = handlers["infer"]

        def infer(event, context):
            if event["item"]["scene_id"] == 0:
                both_inferring.wait()  # breaks (and fails the item) unless the other run is live
            return real_infer(event, context)

        handlers["infer"] = infer
        runs[name] = (local.run_execution(prefix, execution_id=name, handlers=handlers), seen)

    threads = [threading.Thread(target=run, args=(name,)) for name in ("overlap-a", "overlap-b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert set(runs) == {"overlap-a", "overlap-b"}
    for name, (result, seen) in runs.items():
        assert result.succeeded, (name, result.error, result.cause)
        assert not both_inferring.broken
        assert [c for c, outcome in result.calls if outcome == "ok"].count("infer") == 3
        assert {e["execution_id"] for e in seen["infer"]} == {name}


def test_endpointless_clients_are_not_answered_by_the_emulator(tmp_path) -> None:
    """Storage on real S3 has no endpoint: its calls during a run must go to AWS (unreachable
    here, or refused for the fake keys), never be answered by the in-process emulator."""
    import boto3
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ClientError

    answers: list = []

    def observe(event, context):
        session = boto3.session.Session(
            aws_access_key_id="x", aws_secret_access_key="y", region_name=local.REGION
        )
        config = Config(connect_timeout=2, read_timeout=2, retries={"total_max_attempts": 1})
        try:
            answers.append([b["Name"] for b in session.client("s3", config=config).list_buckets()["Buckets"]])
        except (BotoCoreError, ClientError) as exc:
            answers.append(type(exc).__name__)
        return {"execution_id": event["execution_id"]}

    prefix, handlers, _ = _fake_handlers(tmp_path, observe=observe)
    assert local.run_execution(prefix, handlers=handlers).succeeded
    (answer,) = answers
    assert isinstance(answer, str), f"answered in-process: buckets {answer}"


def test_unknown_moto_version_fails_clearly(tmp_path, monkeypatch) -> None:
    assert moto_shim.check_moto_version() in moto_shim.SUPPORTED_MOTO_VERSIONS
    with pytest.raises(moto_shim.LocalRunError, match=r"moto 9\.0\.0 is installed.*supports moto 5\.2\.5"):
        moto_shim.check_moto_version("9.0.0")
    installed = moto_shim.installed_moto_version()
    monkeypatch.setattr(moto_shim, "SUPPORTED_MOTO_VERSIONS", frozenset({"0.0.1"}))
    prefix, handlers, seen = _fake_handlers(tmp_path)
    with pytest.raises(
        local.LocalRunError, match=rf"moto {re.escape(installed)} is installed.*supports moto 0\.0\.1"
    ):
        local.run_execution(prefix, handlers=handlers)
    assert not any(seen.values())


def test_pinned_moto_is_a_supported_one() -> None:
    pyproject = tomllib.loads((Path(moto_shim.REPO_ROOT) / "pyproject.toml").read_text())
    pins = [
        d
        for deps in pyproject["project"]["optional-dependencies"].values()
        for d in deps
        if d.startswith("moto")
    ]
    assert pins and all(p.split("==")[1] in moto_shim.SUPPORTED_MOTO_VERSIONS for p in pins), pins


def test_missing_antlr_runtime_names_the_make_target(tmp_path, monkeypatch) -> None:
    from core.config import compose

    monkeypatch.setenv("SFN_ANTLR4_PATH", str(tmp_path / "no-antlr"))
    prefix, handlers, seen = _fake_handlers(tmp_path)
    with pytest.raises(local.LocalRunError, match=r"antlr4-python3-runtime 4\.13.*make setup_env"):
        local.run_execution(prefix, handlers=handlers)
    assert not any(seen.values())
    assert compose(["inference.chip_size=64"]).inference.chip_size == 64  # 4.9 still in place
    assert not (tmp_path / "no-antlr").exists()  # nothing was installed


# ---------------------------------------------------------------------------------------------
# AWS_ENDPOINT_URL: the storage's moto server is a separate process; the emulator stays in-process
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def moto_process():
    """moto's server in its own process (see :class:`MotoServerProcess`). Yields its URL."""
    with MotoServerProcess() as endpoint:
        yield endpoint


def test_local_chain_runs_with_aws_endpoint_url_set(moto_process, postgres_url, monkeypatch) -> None:
    """Issue 14: with AWS_ENDPOINT_URL naming a moto server, the chain finishes and predicts the
    scenes on that server, and the emulator's state machine and manifest bucket stay in-process."""
    import boto3

    from inference import handlers
    from setup.tools import run_local

    for key, value in {
        "AWS_ENDPOINT_URL": moto_process,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(key, value)
    storage.configure()  # no explicit endpoint: the storage layer follows AWS_ENDPOINT_URL
    server = {"endpoint_url": moto_process, "region_name": "us-east-1"}
    bucket = f"endpoint-{uuid.uuid4().hex[:8]}"
    try:
        boto3.client("s3", **server).create_bucket(Bucket=bucket)
        settings = chain_settings(f"s3://{bucket}", migrated(postgres_url))
        make_champion(settings.registry_uri)
        for i in range(2):
            write_scene(storage.join(settings.input_uri, f"scene-{i}.tif"), seed=300 + i)

        handlers.configure(settings)  # as run_local.run_once, with a timeout that fails fast
        try:
            execution = local.run_execution(settings.manifest_prefix, timeout_s=180)
        finally:
            handlers.configure(None)
        summary = run_local.summarize(settings, execution)

        assert summary["status"] == "SUCCEEDED", summary["error"]
        assert (summary["discovered"], summary["predicted"], summary["failed"]) == (2, 2, 0)
        keys = [o["Key"] for o in boto3.client("s3", **server).list_objects_v2(Bucket=bucket)["Contents"]]
        assert sum(k.startswith("predictions/") and k.endswith("/classes.tif") for k in keys) == 2
        assert any(k.startswith("predictions/manifests/") for k in keys)  # process wrote it there
        # Nothing of the emulator's leaked to the server: no state machine, no extra bucket.
        assert boto3.client("stepfunctions", **server).list_state_machines()["stateMachines"] == []
        assert [b["Name"] for b in boto3.client("s3", **server).list_buckets()["Buckets"]] == [bucket]
    finally:
        storage.configure()


def test_run_local_settings_follow_aws_endpoint_url(tmp_path, monkeypatch) -> None:
    from setup.tools import run_local

    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    try:
        settings = run_local.load_settings([], f"sqlite:///{tmp_path}/ledger.db", "s3://bucket/prefix")
        assert storage.endpoint_url() == "http://127.0.0.1:9"
    finally:
        storage.configure()
    assert settings.aws_endpoint_url == "http://127.0.0.1:9"
    assert (settings.input_uri, settings.output_uri) == (
        "s3://bucket/prefix/input",
        "s3://bucket/prefix/predictions",
    )


# ---------------------------------------------------------------------------------------------
# Choice/Wait (runs triggered by new imagery), the shadow Maps, the Notify states
# ---------------------------------------------------------------------------------------------


def test_a_triggered_run_waits_for_its_window_to_close(tmp_path) -> None:
    """The input's wait_until holds Process until then (moto's Wait state really waits)."""
    import time
    from datetime import UTC, datetime, timedelta

    prefix, handlers, _ = _fake_handlers(tmp_path)
    real_process, called = handlers["process"], []

    def process(event, context):
        called.append(datetime.now(UTC))
        return real_process(event, context)

    handlers["process"] = process
    until = (datetime.now(UTC) + timedelta(seconds=3)).replace(microsecond=0)
    began = time.monotonic()
    result = local.run_execution(
        prefix,
        execution_id="waits-1",
        execution_input={"wait_until": until.strftime("%Y-%m-%dT%H:%M:%SZ")},
        handlers=handlers,
    )
    assert result.succeeded, (result.error, result.cause)
    (at,) = called
    # moto resolves the wait in whole seconds, truncated: it may end up to 1 s early (the trigger's
    # wait_until carries a margin for it, inference.trigger.WAIT_MARGIN_S). `until` is at least
    # 2 s away (3 s, microseconds dropped), so the run held Process for at least 1 s.
    assert at >= until - timedelta(seconds=1) and time.monotonic() - began >= 1.0
    assert [c for c, _ in result.calls].count("infer") == 3  # then the chain as usual


def test_a_run_without_wait_until_starts_at_once(tmp_path) -> None:
    prefix, handlers, _ = _fake_handlers(tmp_path)
    result = local.run_execution(prefix, execution_input={"window_start": "x"}, handlers=handlers)
    assert result.succeeded and result.seconds < 30
    assert result.calls[0] == ("process", "ok")


def _with_challenger(handlers, version):
    real_process = handlers["process"]

    def process(event, context):
        return {**real_process(event, context), "challenger_version": version}

    return {**handlers, "process": process}


def test_shadow_maps_run_the_challenger_over_the_same_items(tmp_path) -> None:
    prefix, handlers, seen = _fake_handlers(tmp_path)
    result = local.run_execution(prefix, execution_id="shadow-1", handlers=_with_challenger(handlers, "v2"))
    assert result.succeeded, (result.error, result.cause)
    served = [e for e in seen["infer"] if "shadow" not in e]
    shadow = [e for e in seen["infer"] if e.get("shadow")]
    assert sorted(e["item"]["scene_id"] for e in served) == [0, 1, 2]
    assert sorted(e["item"]["scene_id"] for e in shadow) == [0, 1, 2]
    assert all(e["challenger_version"] == "v2" and e["execution_id"] == "shadow-1" for e in shadow)
    assert [e["item"] for e in sorted(shadow, key=lambda e: e["item"]["scene_id"])] == [
        e["item"] for e in sorted(served, key=lambda e: e["item"]["scene_id"])
    ]
    assert sorted(e["item"]["scene_id"] for e in seen["assemble"] if e.get("shadow")) == [0, 1, 2]
    # The champion's Maps ran first: every served call precedes every shadow call.
    order = [("shadow" in e) for e in seen["infer"]]
    assert order == sorted(order)
    assert seen["observe"] == [{"execution_id": "shadow-1"}]


@pytest.mark.parametrize("version", [None, 7])
def test_no_challenger_or_a_non_string_one_skips_the_shadow_maps(tmp_path, version) -> None:
    prefix, handlers, seen = _fake_handlers(tmp_path)
    result = local.run_execution(prefix, handlers=_with_challenger(handlers, version))
    assert result.succeeded, (result.error, result.cause)
    assert len(seen["infer"]) == 3 and not any("shadow" in e for e in seen["infer"] + seen["assemble"])


def test_a_failing_shadow_never_fails_the_run(tmp_path) -> None:
    prefix, handlers, seen = _fake_handlers(tmp_path)
    real_infer = handlers["infer"]

    def infer(event, context):
        if event.get("shadow"):
            raise RuntimeError("challenger broke")
        return real_infer(event, context)

    handlers = _with_challenger({**handlers, "infer": infer}, "v2")
    result = local.run_execution(prefix, execution_id="shadow-fails-1", handlers=handlers)
    assert result.succeeded, (result.error, result.cause)
    assert not seen["failure"] and seen["observe"] == [{"execution_id": "shadow-fails-1"}]
    assert result.calls.count(("infer", "error")) == 3
    # moto does not enforce ToleratedFailurePercentage (see setup/tools/local_statemachine.py), so
    # here failed items never fail the Map; on AWS they do, and the shadow Maps' Catch (States.ALL
    # -> Observe, asserted in test_definition_shape) keeps the run going.
    assert seen["notify"] == [{"execution_id": "shadow-fails-1", "outcome": "succeeded"}]


def test_a_failing_notice_never_changes_the_outcome(tmp_path) -> None:
    """Success stays success, failure stays failure (and is recorded) when the notice cannot go out."""

    def notify(event, context):
        raise RuntimeError("SNS is down")

    prefix, handlers, seen = _fake_handlers(tmp_path, notify=notify)
    ok = local.run_execution(prefix, execution_id="notice-fails-1", handlers=handlers)
    assert ok.succeeded, (ok.error, ok.cause)
    assert ok.output["scenes"] == 3 and ok.output["notice_error"]["Error"] == "RuntimeError"
    assert ("notify", "error") in ok.calls

    def observe(event, context):
        raise ValueError("observe broke")

    prefix, handlers, seen = _fake_handlers(tmp_path / "b", notify=notify, observe=observe)
    failed = local.run_execution(prefix, execution_id="notice-fails-2", handlers=handlers)
    assert failed.status == "FAILED" and failed.error == "InferencePipelineFailed"
    assert [e["execution_id"] for e in seen["failure"]] == ["notice-fails-2"]
    assert ("notify", "error") in failed.calls


def test_the_failure_notice_gets_the_caught_error(tmp_path) -> None:
    def observe(event, context):
        raise ValueError("observe broke")

    prefix, handlers, seen = _fake_handlers(tmp_path, observe=observe)
    result = local.run_execution(prefix, execution_id="notice-error-1", handlers=handlers)
    assert result.status == "FAILED"
    (event,) = seen["notify"]
    assert event["execution_id"] == "notice-error-1" and event["outcome"] == "failed"
    assert event["error"]["Error"] == "ValueError"  # the fake failure handler returns no error text

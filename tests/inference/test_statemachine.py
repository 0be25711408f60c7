"""The ASL definition: its shape, its templating, and runs on moto's interpreter (fault paths).

The happy path with the real model is in ``test_chain_e2e.py``; here the handlers are fakes
(fast, no torch) except for the Catch-path test, which uses the real process/failure handlers.
"""

from __future__ import annotations

import json

import pytest

from inference.statemachine import local
from tests.inference.chain_fixtures import chain_settings, migrated, no_sleep

TRANSIENT = {
    "Lambda.ServiceException",
    "Lambda.AWSLambdaException",
    "Lambda.SdkClientException",
    "Lambda.TooManyRequestsException",
    "States.Timeout",
}
TEMPLATE_VARS = {
    "process_function_arn",
    "infer_function_arn",
    "observe_function_arn",
    "failure_function_arn",
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
    assert local.template_variables(text) == TEMPLATE_VARS
    assert "%{" not in text  # no templatefile directives
    rendered = json.loads(local.local_definition("my-bucket"))
    assert "${" not in json.dumps(rendered)
    assert rendered["States"]["InferScenes"]["ItemReader"]["Parameters"]["Bucket"] == "my-bucket"
    with pytest.raises(KeyError, match="manifest_bucket"):
        local.render(text, {f"{n}_function_arn": "x" for n in local.FUNCTIONS})


def test_definition_shape(asl: dict) -> None:
    states = asl["States"]
    assert asl["StartAt"] == "Process"
    assert states["Process"]["Next"] == "InferScenes"
    m = states["InferScenes"]
    assert m["Type"] == "Map" and m["Next"] == "Observe"
    assert m["ItemProcessor"]["ProcessorConfig"] == {"Mode": "DISTRIBUTED", "ExecutionType": "STANDARD"}
    assert m["ItemReader"]["Resource"] == "arn:aws:states:::s3:getObject"
    assert m["ItemReader"]["ReaderConfig"]["InputType"] == "JSON"
    assert isinstance(m["MaxConcurrency"], int) and m["MaxConcurrency"] > 0
    assert 0 < m["ToleratedFailurePercentage"] < 100
    assert m["ResultPath"] is None  # the Map's results never enter the state's data
    assert states["Observe"].get("End") is True
    assert states["RecordFailure"]["Next"] == "Failed" and states["Failed"]["Type"] == "Fail"

    tasks = _tasks(states)
    assert set(tasks) == {"Process", "Infer", "Observe", "RecordFailure"}
    for name, task in tasks.items():
        retry = task["Retry"][0]
        assert set(retry["ErrorEquals"]) == TRANSIENT, name
        assert retry["BackoffRate"] > 1 and retry["MaxAttempts"] >= 2, name
        assert task["Resource"].startswith("${") and task["Resource"].endswith("_function_arn}")
    for name in ("Process", "InferScenes", "Observe"):
        catch = states[name]["Catch"]
        assert catch == [{"ErrorEquals": ["States.ALL"], "ResultPath": "$.error", "Next": "RecordFailure"}]
    # Payloads carry ids/URIs: the failure step gets the execution name and the caught error.
    assert states["RecordFailure"]["Parameters"] == {
        "execution_id.$": "$$.Execution.Name",
        "error.$": "$.error",
    }


def _fake_handlers(tmp_path, **overrides):
    """process writes a 3-item manifest; infer/observe succeed; failure records its event."""
    from training import storage

    seen: dict[str, list] = {"infer": [], "failure": [], "observe": []}
    prefix = storage.to_uri(tmp_path / "manifests")

    def process(event, context):
        uri = f"{prefix}/{event['execution_id']}.json"
        items = [{"scene_id": i, "uri": f"file:///s{i}.tif", "sha256": "0" * 64} for i in range(3)]
        storage.write_text(uri, json.dumps(items))
        return {
            "execution_id": event["execution_id"],
            "manifest_uri": uri,
            "manifest_key": uri[len("file:///") :],
        }

    def infer(event, context):
        seen["infer"].append(event)
        return {"scene_id": event["item"]["scene_id"], "status": "predicted"}

    def observe(event, context):
        seen["observe"].append(event)
        return {"execution_id": event["execution_id"], "scenes": 3}

    def failure(event, context):
        seen["failure"].append(event)
        return {"execution_id": event["execution_id"], "status": "failed"}

    handlers = {"process": process, "infer": infer, "observe": observe, "failure": failure}
    handlers.update(overrides)
    return prefix, handlers, seen


def test_map_fans_out_over_the_manifest_and_retries_transient_errors(tmp_path) -> None:
    prefix, handlers, seen = _fake_handlers(tmp_path)
    real_infer, flaky = handlers["infer"], {"left": 2}

    class Throttled(Exception):
        error_type = "Lambda.TooManyRequestsException"

    def infer(event, context):
        if event["item"]["scene_id"] == 1 and flaky["left"]:
            flaky["left"] -= 1
            raise Throttled("rate exceeded")
        return real_infer(event, context)

    sleeps: list[float] = []
    handlers["infer"] = infer
    result = local.run_execution(
        prefix, execution_id="fanout-1", handlers=handlers, retry_sleep=sleeps.append
    )
    assert result.succeeded, (result.error, result.cause)
    assert sorted(e["item"]["scene_id"] for e in seen["infer"]) == [0, 1, 2]
    assert all(e["execution_id"] == "fanout-1" for e in seen["infer"])
    assert len(sleeps) == 2  # two retries with (jittered) backoff, no real sleeping
    assert seen["observe"] == [{"execution_id": "fanout-1"}] and not seen["failure"]


def test_a_failing_step_goes_through_the_catch_path(tmp_path) -> None:
    def observe(event, context):
        raise ValueError("observe broke")

    prefix, handlers, seen = _fake_handlers(tmp_path, observe=observe)
    result = local.run_execution(prefix, execution_id="catch-1", handlers=handlers, retry_sleep=no_sleep)
    assert result.status == "FAILED" and result.error == "InferencePipelineFailed"
    (event,) = seen["failure"]
    assert event["execution_id"] == "catch-1"
    assert event["error"]["Error"] == "ValueError" and "observe broke" in event["error"]["Cause"]


def test_catch_path_records_the_failure_in_the_ledger(tmp_path, postgres_url) -> None:
    """Real handlers: process finds no champion, RecordFailure marks the run failed with the reason."""
    from inference import chain, handlers
    from inference.ledger import RunStatus, repository
    from training import storage

    settings = chain_settings(storage.to_uri(tmp_path), migrated(postgres_url))
    handlers.configure(settings)
    try:
        result = local.run_execution(
            settings.manifest_prefix, execution_id="no-champion-1", retry_sleep=no_sleep
        )
    finally:
        handlers.configure(None)
    assert result.status == "FAILED"
    assert [c for c, _ in result.calls] == ["process", "failure"]
    with chain.session(settings) as s:
        run = repository.get_run(s, "no-champion-1")
        assert run.status == RunStatus.failed and run.finished_at is not None
        assert run.error.startswith("NoChampionError:") and "make train_baseline" in run.error


def test_antlr_swap_leaves_hydra_working(tmp_path) -> None:
    """moto's parser runs on ANTLR 4.13 while omegaconf keeps its 4.9 runtime."""
    from training.config import compose

    before = compose(["inference.chip_size=128"])
    prefix, handlers, _ = _fake_handlers(tmp_path)
    assert local.run_execution(prefix, handlers=handlers, retry_sleep=no_sleep).succeeded
    after = compose(["inference.chip_size=64"])
    assert (before.inference.chip_size, after.inference.chip_size) == (128, 64)

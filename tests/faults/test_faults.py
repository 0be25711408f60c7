"""Fault injection: the real chain (state machine, handlers, Postgres ledger, moto S3 server) with a
fault injected mid-run, then re-run; after each, the ledger's invariants hold (``assert_consistent``):
every good scene predicted exactly once, every bad input quarantined with its reason, run totals
exact, no run or scene left in a non-terminal state.

`make test` runs every case with a 4 s database outage; `make faults` runs them with 45 s.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
import time

import pytest
import sqlalchemy as sa

from core import storage
from inference import transactions
from inference.ledger import RunStatus, SceneStatus
from inference.ledger.models import Block, BlockStatus, Prediction, Run, Scene
from inference.steps.assemble import assemble
from inference.steps.infer import infer
from inference.steps.observe import observe
from inference.steps.process import process
from tests.faults.harness import (
    OUTAGE_S,
    REPO_ROOT,
    PrivatePostgres,
    S3FaultProxy,
    assert_consistent,
    child_command,
    ledger,
    run_chain,
    summary_line,
    wait_for,
)
from tests.inference.chain_fixtures import chain_settings, make_champion, migrated, write_bad, write_scene

log = logging.getLogger(__name__)
GOOD = 3
BAD_KIND = "band_count"


def _populate(settings) -> dict[str, str]:
    for i in range(GOOD):
        write_scene(storage.join(settings.input_uri, f"good-{i}.tif"), seed=300 + i, size=128)
    bad = storage.join(settings.input_uri, f"bad-{BAD_KIND}.tif")
    write_bad(bad, BAD_KIND)
    make_champion(settings.registry_uri)
    return {bad: BAD_KIND}


@pytest.fixture
def world(s3_bucket, moto_server, postgres_url):
    """Settings on a fresh bucket of the moto server and a fresh Postgres database, with inputs."""

    def build(ledger_url: str | None = None, endpoint: str | None = None, **overrides):
        settings = chain_settings(
            s3_bucket,
            migrated(ledger_url or postgres_url),
            aws_endpoint_url=endpoint or moto_server,
            aws_region="us-east-1",
            **overrides,
        )
        storage.configure(endpoint_url=settings.aws_endpoint_url, region="us-east-1")
        return settings, _populate(settings)

    return build


def _rerun_changes_nothing(settings, execution_id: str, bad: dict[str, str]) -> None:
    before = assert_consistent(settings, GOOD, bad)
    again = run_chain(settings, execution_id)
    assert again.succeeded, (again.error, again.cause)
    assert [c for c, _ in again.calls if c == "infer"] == []
    after = assert_consistent(settings, GOOD, bad)
    assert after["attempts"] == before["attempts"]


def test_sigkill_mid_infer_then_rerun(world, tmp_path) -> None:
    started = time.monotonic()
    settings, bad = world(lease_s=2.0, run_stale_after_s=2.0)
    marker = tmp_path / "stalled"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    child = subprocess.Popen(
        child_command(settings, "kill-1", marker),
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        wait_for(lambda: marker.exists() or child.poll() is not None, 180, "the child to start predicting")
        assert child.poll() is None, child.stderr.read().decode()[-3000:]
        child.send_signal(signal.SIGKILL)
    finally:
        child.kill()
        child.wait()
    with ledger(settings) as s:
        (run,) = s.execute(sa.select(Run)).scalars()
        held = [sc for sc in s.execute(sa.select(Scene)).scalars() if sc.status == SceneStatus.predicting]
    assert run.status == RunStatus.running and [sc.lease_owner for sc in held] == ["kill-1"]

    time.sleep(2.5)  # the dead run's lease and deadline pass
    result = run_chain(settings, "kill-2")
    assert result.succeeded, (result.error, result.cause)
    figures = assert_consistent(settings, GOOD, bad)
    assert figures["runs"]["kill-1"][0] == "abandoned"
    assert figures["runs"]["kill-2"] == ("succeeded", GOOD, 0)
    assert figures["attempts"] == [1, 1, 2]  # the killed attempt counted once
    _rerun_changes_nothing(settings, "kill-3", bad)
    log.warning(summary_line("sigkill", started, figures))


def test_database_down_mid_run(world) -> None:
    started = time.monotonic()
    pg = PrivatePostgres().init()
    try:
        settings, bad = world(ledger_url=pg.url)
        real_infer = __import__("inference.handlers.infer", fromlist=["handler"]).handler
        calls = {"n": 0}
        outage: list[threading.Thread] = []

        def infer_then_outage(event, context):
            out = real_infer(event, context)
            calls["n"] += 1
            if calls["n"] == 1:  # the database goes away right after the first scene, for OUTAGE_S
                pg.stop()
                outage.append(threading.Thread(target=lambda: (time.sleep(OUTAGE_S), pg.start())))
                outage[0].start()
            return out

        result = run_chain(settings, "outage-1", {"infer": infer_then_outage})
        for thread in outage:
            thread.join()
        assert result.succeeded, (result.error, result.cause)
        figures = assert_consistent(settings, GOOD, bad)
        assert figures["runs"]["outage-1"] == ("succeeded", GOOD, 0)
        _rerun_changes_nothing(settings, "outage-2", bad)
        log.warning(summary_line("database-down", started, {**figures, "outage_s": OUTAGE_S}))
    finally:
        transactions._engine.cache_clear()
        pg.destroy()


def test_two_overlapping_executions(world) -> None:
    started = time.monotonic()
    settings, bad = world(lease_s=600.0)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    children = [
        subprocess.Popen(
            child_command(settings, name),
            cwd=REPO_ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for name in ("overlap-a", "overlap-b")
    ]
    outputs = [child.communicate(timeout=600) for child in children]
    for child, (_, err) in zip(children, outputs, strict=True):
        assert child.returncode == 0, err.decode()[-3000:]
    figures = assert_consistent(settings, GOOD, bad)
    assert figures["attempts"] == [1] * GOOD  # no live claim was taken over
    assert {status for status, _, _ in figures["runs"].values()} == {"succeeded"}
    assert sum(n for _, n, _ in figures["runs"].values()) == GOOD
    _rerun_changes_nothing(settings, "overlap-c", bad)
    log.warning(summary_line("overlapping", started, figures))


def test_s3_5xx_and_throttling_bursts(world, moto_server) -> None:
    started = time.monotonic()
    with S3FaultProxy(moto_server, period=5, burst=2) as proxy:
        proxy.enabled = False  # the inputs and the champion go in cleanly
        settings, bad = world(endpoint=proxy.url)
        proxy.enabled = True
        result = run_chain(settings, "s3-1")
        assert result.succeeded, (result.error, result.cause)
        figures = assert_consistent(settings, GOOD, bad)
        assert proxy.injected >= 10, proxy.injected
        _rerun_changes_nothing(settings, "s3-2", bad)
    log.warning(
        summary_line(
            "s3-faults", started, {**figures, "injected": proxy.injected, "requests": proxy.requests}
        )
    )


def test_lease_that_expires_mid_block(world, monkeypatch) -> None:
    started = time.monotonic()
    settings, bad = world(lease_s=1.0)
    import inference.predict

    real_predict = inference.predict.predict_block

    b_done = threading.Event()

    def slow_for_the_first_attempt(*args, **kwargs):
        if threading.current_thread().name == "attempt-a":
            b_done.wait(timeout=300)  # outlives its 1 s lease, and B's whole attempt
        return real_predict(*args, **kwargs)

    monkeypatch.setattr(inference.predict, "predict_block", slow_for_the_first_attempt)
    first = process(settings, "lease-a")
    process(settings, "lease-b")
    (item, *_) = __import__("json").loads(storage.read_text(first["manifest_uri"]))
    outcome: dict = {}
    attempt_a = threading.Thread(
        target=lambda: outcome.update(a=infer(settings, "lease-a", item)), name="attempt-a"
    )
    attempt_a.start()

    def claimed_by_a() -> bool:
        with ledger(settings) as s:
            return s.get(Scene, item["scene_id"]).lease_owner == "lease-a"

    wait_for(claimed_by_a, 60, "attempt A to claim the scene")
    time.sleep(1.2)  # A's lease has expired; B takes the scene over
    outcome["b"] = infer(settings, "lease-b", item)
    b_done.set()
    attempt_a.join()
    assert outcome["b"]["status"] == "predicted" and outcome["a"]["status"] == "skipped", outcome
    scene_item = {k: item[k] for k in ("scene_id", "uri", "sha256", "model_version")}
    assert assemble(settings, "lease-b", scene_item)["status"] == "predicted"
    assert assemble(settings, "lease-a", scene_item)["status"] == "skipped"
    for execution_id in ("lease-a", "lease-b"):
        observe(settings, execution_id)
    with ledger(settings) as s:
        (prediction,) = s.execute(sa.select(Prediction)).scalars()
        owner = s.get(Run, prediction.run_id).execution_id
        attempts = s.get(Scene, item["scene_id"]).attempts
    assert owner == "lease-b" and attempts == 2
    result = run_chain(settings, "lease-c")  # the other scenes
    assert result.succeeded
    figures = assert_consistent(settings, GOOD, bad)
    assert figures["runs"]["lease-a"][1] == 0 and figures["runs"]["lease-b"][1] == 1
    _rerun_changes_nothing(settings, "lease-d", bad)
    log.warning(summary_line("lease-expiry", started, figures))


def test_map_tolerates_a_failed_item_and_a_rerun_finishes_it(world, monkeypatch) -> None:
    started = time.monotonic()
    settings, bad = world()
    import inference.predict

    real_predict = inference.predict.predict_block
    calls = {"n": 0}

    def fails_on_one_scene(predictor, path, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 1:  # the first block's attempt fails (not a transient fault: no retry)
            raise RuntimeError("injected: this block's attempt fails")
        return real_predict(predictor, path, *args, **kwargs)

    monkeypatch.setattr(inference.predict, "predict_block", fails_on_one_scene)
    result = run_chain(settings, "tol-1")
    # moto 5.2.5 parses ToleratedFailurePercentage but does not enforce it (on AWS, 1 of 3 > 5 %
    # fails the Map and the Catch path records the run failed); the ledger is right either way.
    assert result.succeeded, (result.error, result.cause)
    with ledger(settings) as s:
        run = s.execute(sa.select(Run).where(Run.execution_id == "tol-1")).scalar_one()
        failed = [sc for sc in s.execute(sa.select(Scene)).scalars() if sc.status == SceneStatus.failed]
        failed_blocks = [b for b in s.execute(sa.select(Block)).scalars() if b.status == BlockStatus.failed]
    assert (run.scenes_predicted, run.scenes_failed) == (GOOD - 1, 1)
    # The block records its error; its scene is failed at assembly, for the next run to finish.
    assert [sc.error for sc in failed] == ["blocks_incomplete"]
    (block,) = failed_blocks
    assert block.error == "RuntimeError" and "injected" in block.error_message
    monkeypatch.setattr(inference.predict, "predict_block", real_predict)
    again = run_chain(settings, "tol-2")
    assert again.succeeded
    figures = assert_consistent(settings, GOOD, bad)
    assert figures["runs"]["tol-2"] == ("succeeded", 1, 0)
    _rerun_changes_nothing(settings, "tol-3", bad)
    log.warning(summary_line("tolerated-failures", started, figures))


def test_redrive_after_a_failed_execution(world) -> None:
    started = time.monotonic()
    settings, bad = world()
    real_observe = __import__("inference.handlers.observe", fromlist=["handler"]).handler
    failures = {"left": 1}

    def observe_fails_once(event, context):
        if failures["left"]:
            failures["left"] -= 1
            raise RuntimeError("injected: observe crashed")
        return real_observe(event, context)

    result = run_chain(settings, "redrive-1", {"observe": observe_fails_once})
    assert result.status == "FAILED"
    with ledger(settings) as s:
        run = s.execute(sa.select(Run).where(Run.execution_id == "redrive-1")).scalar_one()
    assert run.status == RunStatus.failed and "injected" in run.error
    redriven = run_chain(settings, "redrive-1", {"observe": observe_fails_once})  # same execution id
    assert redriven.succeeded, (redriven.error, redriven.cause)
    figures = assert_consistent(settings, GOOD, bad)
    assert figures["runs"] == {"redrive-1": ("succeeded", GOOD, 0)}
    _rerun_changes_nothing(settings, "redrive-2", bad)
    log.warning(summary_line("redrive", started, figures))

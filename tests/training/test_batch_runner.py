"""training.runner=batch: the DAG submits cache_features and train_head to AWS Batch.

Real parts: Airflow 3 (``dag.test()``), the Amazon provider's BatchOperator and hook, moto's
server for the Batch API and S3, the pipeline steps and the step CLI. What cannot run here is
the container (no Docker engine), so the moto server sits behind a small WSGI layer that plays
the compute environment: on ``SubmitJob`` it runs the job's command (``python -m training.step
...``) in a subprocess, once per array child with ``AWS_BATCH_JOB_ARRAY_INDEX`` set, and then lets
moto's Docker-free Batch backend record the job as SUCCEEDED, or FAILED (moto's own
``MOTO_SIMPLE_BATCH_FAIL_AFTER=0``) when the command failed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from threading import Thread
from typing import Any

import pytest

from core import storage
from core.config import REPO_ROOT, compose
from tests.ports import free_port
from tests.training.pipeline_fixtures import TINY_OVERRIDES
from training import batch
from training.airflow_runner import airflow_env, migrate_metadata
from training.data.synthetic import generate_dataset
from training.pipeline import load_run, run_uri_for

HARNESS = Path(__file__).with_name("batch_harness.py")
PROJECT = "lcbatch"
REGION = "us-east-1"


class ContainerStandIn:
    """WSGI layer over moto: runs each submitted job's command before moto records the job."""

    def __init__(self, app: Any, env: dict[str, str]) -> None:
        self.app = app
        self.env = env
        self.lock = threading.Lock()
        self.submitted: list[dict[str, Any]] = []
        self.runs: list[dict[str, Any]] = []

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        if environ.get("REQUEST_METHOD") != "POST" or environ.get("PATH_INFO") != "/v1/submitjob":
            return self.app(environ, start_response)
        body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        request = json.loads(body or b"{}")
        import io

        environ["wsgi.input"] = io.BytesIO(body)
        with self.lock:
            self.submitted.append(request)
            ok = self._run(request)
            if not ok:
                os.environ["MOTO_SIMPLE_BATCH_FAIL_AFTER"] = "0"
            try:
                return self.app(environ, start_response)
            finally:
                os.environ.pop("MOTO_SIMPLE_BATCH_FAIL_AFTER", None)

    def _run(self, request: dict[str, Any]) -> bool:
        overrides = request.get("containerOverrides") or {}
        command = list(overrides["command"])
        if command[0] == "python":  # the image's interpreter is this venv's here
            command[0] = sys.executable
        size = (request.get("arrayProperties") or {}).get("size")
        children = [{}] if not size else [{"AWS_BATCH_JOB_ARRAY_INDEX": str(i)} for i in range(size)]
        for extra in children:
            env = {**self.env, **{e["name"]: e["value"] for e in overrides.get("environment", [])}, **extra}
            proc = subprocess.run(
                command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600
            )
            self.runs.append(
                {"command": command, "env": extra, "rc": proc.returncode, "log": proc.stderr[-3000:]}
            )
            if proc.returncode != 0:
                return False
        return True


@pytest.fixture
def batch_world(tmp_path) -> Iterator[dict[str, Any]]:
    """moto (S3 + Batch, Docker-free) with the container stand-in, a queue and a job definition,
    the buckets of storage=s3, and tiny synthetic data uploaded to S3."""
    import boto3
    import requests
    from moto.moto_server.threaded_moto_server import MotoRequestHandler
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
    from werkzeug.serving import make_server

    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    home = tmp_path / "home"
    aws = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": REGION,
        "AWS_ENDPOINT_URL": endpoint,
    }
    overrides = f"training.runner=batch storage=s3 infra.project={PROJECT} data.root_uri=s3://{PROJECT}-data/synthetic"
    env = {**os.environ, **aws, "LANDCOVER_HOME": str(home), "LANDCOVER_OVERRIDES": overrides}

    class QuietHandler(MotoRequestHandler):
        def log_request(self, *args: Any, **kwargs: Any) -> None:
            pass

    app = ContainerStandIn(DomainDispatcherApplication(create_backend_app), env)
    server = make_server("127.0.0.1", port, app, threaded=True, request_handler=QuietHandler)
    thread = Thread(target=server.serve_forever, daemon=True)
    thread.start()
    saved = {k: os.environ.get(k) for k in aws}
    os.environ.update(aws)
    try:
        # moto's backends live in this process: start from none. Batch without Docker: jobs are
        # recorded, not run (the stand-in runs them).
        requests.post(f"{endpoint}/moto-api/reset", timeout=10)
        requests.post(f"{endpoint}/moto-api/config", json={"batch": {"use_docker": False}}, timeout=10)
        session = boto3.Session(region_name=REGION)
        iam = session.client("iam", endpoint_url=endpoint)
        role = iam.create_role(RoleName="batch-service", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
        client = session.client("batch", endpoint_url=endpoint)
        env_arn = client.create_compute_environment(
            computeEnvironmentName=f"{PROJECT}-training", type="UNMANAGED", serviceRole=role
        )["computeEnvironmentArn"]
        client.create_job_queue(
            jobQueueName=f"{PROJECT}-training",
            state="ENABLED",
            priority=1,
            computeEnvironmentOrder=[{"order": 1, "computeEnvironment": env_arn}],
        )
        client.register_job_definition(
            jobDefinitionName=f"{PROJECT}-training",
            type="container",
            containerProperties={
                "image": "123456789012.dkr.ecr.us-east-1.amazonaws.com/lcbatch-training:latest",
                "command": ["python", "-m", "training.step", "--help"],
                "resourceRequirements": [
                    {"type": "VCPU", "value": "4"},
                    {"type": "MEMORY", "value": "16384"},
                    {"type": "GPU", "value": "1"},
                ],
            },
        )
        s3 = session.client("s3", endpoint_url=endpoint)
        for bucket in (f"{PROJECT}-artifacts", f"{PROJECT}-registry", f"{PROJECT}-data"):
            s3.create_bucket(Bucket=bucket)
        local = tmp_path / "synthetic"
        generate_dataset(str(local), scenes_per_split=1, size=256, seed=7, workers=1)
        storage.configure(endpoint_url=endpoint, region=REGION)
        for path in sorted(local.rglob("*.tif")):
            storage.upload(path, f"s3://{PROJECT}-data/synthetic/{path.relative_to(local).as_posix()}")
        airflow = airflow_env(tmp_path / "airflow")
        airflow.update(env)
        airflow["AIRFLOW_CONN_AWS_DEFAULT"] = json.dumps(
            {
                "conn_type": "aws",
                "extra": {
                    "endpoint_url": endpoint,
                    "region_name": REGION,
                    # SubmitJob answers once the stand-in's "container" has finished: wait for it,
                    # and never resubmit (a retried SubmitJob would start the job twice).
                    "config_kwargs": {"read_timeout": 900, "retries": {"total_max_attempts": 1}},
                },
            }
        )
        # The operator's hook reads the connection (endpoint_url, region); the storage layer and
        # the "containers" read AWS_ENDPOINT_URL.
        migrate_metadata(airflow)
        yield {"endpoint": endpoint, "app": app, "batch": client, "airflow_env": airflow, "env": env}
    finally:
        storage.configure()
        server.shutdown()
        thread.join(timeout=10)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _run_dag(world: dict[str, Any], run_id: str, extra: list[str]) -> subprocess.CompletedProcess:
    conf = json.dumps({"overrides": [*TINY_OVERRIDES, "training.epochs=1", *extra], "run_id": run_id})
    return subprocess.run(
        [sys.executable, str(HARNESS), "baseline", conf],
        cwd=REPO_ROOT,
        env=world["airflow_env"],
        capture_output=True,
        text=True,
        timeout=900,
    )


def _cfg(world: dict[str, Any], extra: list[str] = ()):
    saved = os.environ.get("LANDCOVER_OVERRIDES")
    os.environ["LANDCOVER_OVERRIDES"] = world["env"]["LANDCOVER_OVERRIDES"]
    try:
        return compose([*TINY_OVERRIDES, "training.epochs=1", *extra])
    finally:
        if saved is None:
            os.environ.pop("LANDCOVER_OVERRIDES")
        else:
            os.environ["LANDCOVER_OVERRIDES"] = saved


def _tail(proc: subprocess.CompletedProcess) -> str:
    return f"stdout:\n{proc.stdout[-4000:]}\nstderr:\n{proc.stderr[-6000:]}"


@pytest.mark.slow
def test_batch_runner_dag_end_to_end(batch_world) -> None:
    proc = _run_dag(batch_world, "batch-ok", [])
    app: ContainerStandIn = batch_world["app"]
    assert proc.returncode == 0, _tail(proc) + "\njobs:\n" + json.dumps(app.runs, indent=1)[-4000:]

    # Three submissions, in order: the shard array job, the merge, the head.
    names = [r["jobName"] for r in app.submitted]
    assert names == ["batch-ok-cache_features_shards", "batch-ok-cache_features", "batch-ok-train_head"]
    first = app.submitted[0]
    assert first["jobQueue"] == f"{PROJECT}-training" and first["jobDefinition"] == f"{PROJECT}-training"
    assert first["arrayProperties"] == {"size": 3}  # 1 scene per split, 8 scenes per shard: 3 shards
    cfg = _cfg(batch_world)
    run_uri = run_uri_for(cfg, "batch-ok")
    assert run_uri.startswith(f"s3://{PROJECT}-artifacts/")
    assert first["containerOverrides"]["command"] == [
        "python",
        "-m",
        "training.step",
        "cache_features",
        "--run-uri",
        run_uri,
    ]
    assert [r["env"] for r in app.runs[:3]] == [{"AWS_BATCH_JOB_ARRAY_INDEX": str(i)} for i in range(3)]
    assert all(r["rc"] == 0 for r in app.runs)

    # moto recorded every job as succeeded, the array job with its three children.
    listed = batch_world["batch"].list_jobs(jobQueue=f"{PROJECT}-training", jobStatus="SUCCEEDED")
    assert {j["jobName"] for j in listed["jobSummaryList"]} >= set(names)

    # The steps ran in the "container" and recorded their results in the run folder on S3;
    # evaluate, register and promote then ran in Airflow.
    storage.configure(endpoint_url=batch_world["endpoint"], region=REGION)
    run = load_run(run_uri)
    features = run.result("cache_features")
    assert features["features_uri"].startswith(f"s3://{PROJECT}-artifacts/features/")
    assert sum(features["chips"].values()) > 0
    assert run.result("train_head")["device"]["device"] in ("cpu", "cuda")
    assert run.result("promote")["decision"]["promoted"]
    parts = storage.list_uris(
        storage.join(features["features_uri"], "train", "parts"), suffix="manifest.json"
    )
    assert len(parts) == 1


@pytest.mark.slow
def test_a_failed_batch_job_fails_the_task(batch_world) -> None:
    """The container's step fails (a config the feature cache refuses): the job is FAILED, the
    task fails, nothing downstream runs."""
    proc = _run_dag(batch_world, "batch-bad", ["model.freeze_encoder=false"])
    assert proc.returncode != 0, _tail(proc)
    app: ContainerStandIn = batch_world["app"]
    assert [r["jobName"] for r in app.submitted] == ["batch-bad-cache_features_shards"]
    assert app.runs[0]["rc"] != 0 and "freeze_encoder" in app.runs[0]["log"]
    failed = batch_world["batch"].list_jobs(jobQueue=f"{PROJECT}-training", jobStatus="FAILED")
    # The array job and its children (moto fails them all when the command failed).
    assert {j["jobName"] for j in failed["jobSummaryList"]} == {"batch-bad-cache_features_shards"}
    storage.configure(endpoint_url=batch_world["endpoint"], region=REGION)
    run = load_run(run_uri_for(_cfg(batch_world, ["model.freeze_encoder=false"]), "batch-bad"))
    run.result("validate_data")
    with pytest.raises(RuntimeError, match="has not run"):
        run.result("cache_features")


def test_batch_jobs_and_commands() -> None:
    cfg = compose(["training.runner=batch"])
    jobs = batch.batch_jobs(cfg, "r1", "s3://b/runs/r1", shard_count=5)
    assert jobs["cache_features_shards"]["array_properties"] == {"size": 5}
    assert jobs["cache_features_shards"]["container_overrides"]["command"][-2:] == [
        "--run-uri",
        "s3://b/runs/r1",
    ]
    one = batch.batch_jobs(cfg, "r1", "s3://b/runs/r1", shard_count=1)["cache_features_shards"]
    assert one["array_properties"] is None and one["container_overrides"]["command"][-2:] == ["--shard", "0"]
    assert jobs["train_head"]["container_overrides"]["command"][3] == "train_head"
    assert batch.job_name("run:1/x", "train_head") == "run-1-x-train_head"
    with pytest.raises(ValueError, match=r"training\.runner"):
        batch.runner_of(compose(["training.runner=k8s"]))


def test_batch_refuses_local_storage() -> None:
    with pytest.raises(ValueError, match=r"storage\.root_uri"):
        batch.require_remote_storage(compose(["training.runner=batch"]))
    cfg = compose(["training.runner=batch", "storage=s3", "data.root_uri=s3://d/synthetic"])
    batch.require_remote_storage(cfg)


def test_batch_dag_shape(monkeypatch) -> None:
    from airflow.dag_processing.dagbag import DagBag

    from training.airflow_runner import DAGS_FOLDER

    monkeypatch.setenv("LANDCOVER_OVERRIDES", "training.runner=batch")
    bag = DagBag(dag_folder=str(DAGS_FOLDER))
    assert bag.import_errors == {}
    dag = bag.dags["baseline"]
    assert [t.task_id for t in dag.topological_sort()] == [
        "validate_data",
        "batch_plan",
        "cache_features_shards",
        "cache_features",
        "train_head",
        "evaluate",
        "register",
        "promote",
    ]
    job = dag.get_task("train_head")
    assert type(job).__name__ in ("MappedOperator", "BatchOperator")


# -- pretrain.runner=batch: the pretrain_encoder step as one AWS Batch job ---------------------

PRETRAIN_BATCH = [
    *TINY_OVERRIDES,
    "pretrain.steps=4",
    "pretrain.batch_size=2",
    "pretrain.crop_size=32",
    "pretrain.checkpoint_every=2",
    "pretrain.figure_chips=1",
    "pretrain.decoder_depth=1",
]


@pytest.mark.slow
def test_pretrain_batch_runner_end_to_end(batch_world) -> None:
    """The pretrain DAG with pretrain.runner=batch: the step runs as a Batch job (the stand-in's
    "container"), records its result on S3, and Airflow registers the encoder version."""
    from core import encoder_registry
    from training.pretrain_batch import BATCH_STEP

    env = {**batch_world["airflow_env"]}
    env["LANDCOVER_OVERRIDES"] = env["LANDCOVER_OVERRIDES"] + " pretrain.runner=batch"
    conf = json.dumps({"overrides": PRETRAIN_BATCH, "run_id": "pt-batch"})
    proc = subprocess.run(
        [sys.executable, str(HARNESS), "pretrain", conf],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    app: ContainerStandIn = batch_world["app"]
    assert proc.returncode == 0, _tail(proc) + "\njobs:\n" + json.dumps(app.runs, indent=1)[-4000:]
    assert [r["jobName"] for r in app.submitted] == [f"pt-batch-{BATCH_STEP}"]
    assert "arrayProperties" not in app.submitted[0] or not app.submitted[0]["arrayProperties"]
    cfg = _cfg(batch_world, PRETRAIN_BATCH)
    run_uri = run_uri_for(cfg, "pt-batch")
    assert app.submitted[0]["containerOverrides"]["command"] == [
        "python", "-m", "training.pretrain", "step", BATCH_STEP, "--run-uri", run_uri,
    ]  # fmt: skip
    assert all(r["rc"] == 0 for r in app.runs)

    storage.configure(endpoint_url=batch_world["endpoint"], region=REGION)
    run = load_run(run_uri)
    assert run.result(BATCH_STEP)["steps"] == 4
    record = encoder_registry.resolve_encoder_version(cfg.storage.registry_uri, cfg.pretrain.encoder_name)
    assert record["version"] == run.result("register_encoder")["version"]
    assert record["uri"].startswith(f"s3://{PROJECT}-registry/")
    assert storage.exists(record["figures"]["reconstruction.png"])


def test_pretrain_batch_plan_refuses_local_inputs() -> None:
    from training.pretrain_batch import pretrain_runner_of, require_remote_inputs, step_command

    with pytest.raises(ValueError, match=r"storage\.root_uri"):
        require_remote_inputs(compose(["pretrain.runner=batch"]))
    with pytest.raises(ValueError, match=r"pretrain\.input_uri"):
        require_remote_inputs(compose(["pretrain.runner=batch", "storage=s3", "pretrain.input_uri=/tmp/x"]))
    require_remote_inputs(compose(["storage=s3", "data.root_uri=s3://d/synthetic"]))
    with pytest.raises(ValueError, match=r"pretrain\.runner"):
        pretrain_runner_of(compose(["pretrain.runner=k8s"]))
    command = step_command(compose([]), "s3://b/runs/p1")
    assert command[1:] == [
        "-m",
        "training.pretrain",
        "step",
        "pretrain_encoder",
        "--run-uri",
        "s3://b/runs/p1",
    ]


def test_pretrain_batch_dag_shape(monkeypatch) -> None:
    from airflow.dag_processing.dagbag import DagBag

    from training.airflow_runner import DAGS_FOLDER

    monkeypatch.setenv("LANDCOVER_OVERRIDES", "pretrain.runner=batch")
    bag = DagBag(dag_folder=str(DAGS_FOLDER))
    assert bag.import_errors == {}
    dag = bag.dags["pretrain"]
    assert [t.task_id for t in dag.topological_sort()] == [
        "select_scenes",
        "batch_plan",
        "pretrain_encoder",
        "register_encoder",
    ]

"""``training.runner=batch``: the heavy steps as AWS Batch jobs, submitted by Airflow's BatchOperator.

With the batch runner the training DAG keeps ``validate_data``, ``evaluate``, ``register`` and
``promote`` in the Airflow worker and sends the GPU work to AWS Batch, in the training image
(``training/tf`` provisions the queue, the job definition and the image's ECR repository):

    validate_data -> batch_plan -> cache_features_shards -> cache_features -> train_head -> evaluate ...
                                   (array job: 1 child     (merges the        (fits the head,
                                    per shard of scenes)    shards, records)   records)

Every job runs the same step CLI on the run's URI (``python -m training.step <step> --run-uri``),
so the step code is the one the local runner calls; each child of the array job reads
``AWS_BATCH_JOB_ARRAY_INDEX`` to pick its shard. The operator waits for each job and fails the
task when the job fails. The containers cannot see the Airflow worker's disk, so the run, the
data and the feature cache must live in S3 (``storage=s3`` and an ``s3://`` ``data.root_uri``).
"""

from __future__ import annotations

import re
from typing import Any

from omegaconf import DictConfig

RUNNERS: tuple[str, ...] = ("local", "batch")
#: The steps the batch runner submits to AWS Batch, in order.
BATCH_STEPS: tuple[str, ...] = ("cache_features", "train_head")
#: Batch job names: up to 128 letters, digits, hyphens and underscores.
_JOB_NAME_MAX = 128


def runner_of(cfg: DictConfig) -> str:
    """``training.runner``, checked.

    Raises:
        ValueError: not one of :data:`RUNNERS`.
    """
    runner = cfg.training.get("runner", "local")
    if runner not in RUNNERS:
        raise ValueError(f"training.runner={runner!r}: use one of {', '.join(RUNNERS)}")
    return str(runner)


def dag_runner(variant: str) -> str:
    """The runner a variant's DAG is built for (its config, plus ``LANDCOVER_OVERRIDES``)."""
    from core.config import compose, variant_overrides

    return runner_of(compose(variant_overrides(variant)))


def dag_batch_settings(variant: str) -> dict[str, str]:
    """``training.batch`` of a variant: queue, job definition, connection, region."""
    from omegaconf import OmegaConf

    from core.config import compose, variant_overrides

    settings = OmegaConf.to_container(compose(variant_overrides(variant)).training.batch, resolve=True)
    return {k: str(v) for k, v in settings.items()}


def require_remote_storage(cfg: DictConfig) -> None:
    """Refuse a batch run whose run folder, data or feature cache is on the Airflow worker's disk.

    Raises:
        ValueError: naming the key to change.
    """
    for key, uri in (
        ("storage.root_uri", cfg.storage.root_uri),
        ("data.root_uri", cfg.data.root_uri),
        ("training.features_uri", cfg.training.features_uri),
    ):
        if "://" not in str(uri) or str(uri).startswith("file://"):
            raise ValueError(
                f"training.runner=batch but {key}={uri} is a local path the Batch containers cannot read; "
                "use storage=s3 and an s3:// data.root_uri (or training.runner=local)"
            )


def job_name(run_id: str, step: str) -> str:
    """A valid, readable Batch job name for a step of a run."""
    name = re.sub(r"[^A-Za-z0-9_-]+", "-", f"{run_id}-{step}").strip("-")
    return name[-_JOB_NAME_MAX:]


def step_command(cfg: DictConfig, step: str, run_uri: str, shard: int | None = None) -> list[str]:
    """The container command of a step: the step CLI on the run's URI."""
    command = [str(cfg.training.batch.python), "-m", "training.step", step, "--run-uri", run_uri]
    return [*command, "--shard", str(shard)] if shard is not None else command


def batch_jobs(cfg: DictConfig, run_id: str, run_uri: str, shard_count: int) -> dict[str, dict[str, Any]]:
    """BatchOperator arguments of each job.

    ``cache_features_shards`` is an array job of ``shard_count`` children; AWS Batch wants at
    least 2 children, so a single shard goes as a plain job with ``--shard 0``.
    """
    shards: dict[str, Any] = {"job_name": job_name(run_id, "cache_features_shards")}
    if shard_count >= 2:
        shards["array_properties"] = {"size": shard_count}
        shards["container_overrides"] = {"command": step_command(cfg, "cache_features", run_uri)}
    else:
        shards["array_properties"] = None
        shards["container_overrides"] = {"command": step_command(cfg, "cache_features", run_uri, shard=0)}
    jobs = {"cache_features_shards": shards}
    for step in BATCH_STEPS:
        jobs[step] = {
            "job_name": job_name(run_id, step),
            "array_properties": None,
            "container_overrides": {"command": step_command(cfg, step, run_uri)},
        }
    return jobs


def plan_batch_run(run_uri: str) -> dict[str, dict[str, Any]]:
    """What the DAG's ``batch_plan`` task returns: the jobs of a validated run.

    Raises:
        ValueError: the run was not started with runner=batch, or its storage is local.
    """
    from training import pipeline
    from training.feature_shards import plan_shards

    run = pipeline.load_run(run_uri)
    if runner_of(run.cfg) != "batch":
        raise ValueError(
            f"run {run.run_id} has training.runner={run.cfg.training.runner} but this DAG was built for "
            "batch; set training.runner=batch in LANDCOVER_OVERRIDES (the DAG's shape is fixed when it is parsed)"
        )
    require_remote_storage(run.cfg)
    run.result("validate_data")  # raises unless the data was validated
    counts = {split: len(records) for split, records in pipeline._scenes(run.cfg).items()}
    count = len(plan_shards(counts, run.cfg.training.scenes_per_shard))
    return batch_jobs(run.cfg, run.run_id, run.uri, count)


def _shards_job(plan: dict[str, Any]) -> dict[str, Any]:
    return plan["cache_features_shards"]


def _cache_job(plan: dict[str, Any]) -> dict[str, Any]:
    return plan["cache_features"]


def _train_job(plan: dict[str, Any]) -> dict[str, Any]:
    return plan["train_head"]


_PICKERS = {"cache_features_shards": _shards_job, "cache_features": _cache_job, "train_head": _train_job}


def add_batch_steps(run_uri: Any, variant: str) -> Any:
    """Inside a DAG: ``batch_plan`` and the three BatchOperator jobs after ``run_uri`` (the
    XCom of ``validate_data``). Returns the last job's task, for ``>> evaluate``."""
    from airflow.providers.amazon.aws.operators.batch import BatchOperator
    from airflow.sdk import task

    settings = dag_batch_settings(variant)

    @task
    def batch_plan(uri: str) -> list[dict[str, dict[str, Any]]]:
        """One entry: each job's BatchOperator arguments (the shard count is known only now)."""
        return [plan_batch_run(uri)]

    plan = batch_plan(run_uri)
    jobs = []
    for task_id, pick in _PICKERS.items():
        jobs.append(
            BatchOperator.partial(
                task_id=task_id,
                job_queue=settings["job_queue"],
                job_definition=settings["job_definition"],
                aws_conn_id=settings["aws_conn_id"],
                region_name=settings["region_name"],
                # A job that failed is not resubmitted by Airflow: the job definition's retry
                # strategy already retries spot reclaims, and a step error would fail again.
                retries=0,
            ).expand_kwargs(plan.map(pick))
        )
    jobs[0] >> jobs[1] >> jobs[2]
    return jobs[-1]

"""``pretrain.runner=batch``: the pretrain_encoder step as one AWS Batch job (BatchOperator).

    select_scenes -> batch_plan -> pretrain_encoder (AWS Batch) -> register_encoder

The job runs ``python -m training.pretrain step pretrain_encoder --run-uri <run>`` in the training
image (the queue and job definition of ``training.batch``), so the container runs the same step
code as the local runner. One job, not an array: the encoder's optimisation is one sequential
chain of steps. It checkpoints into the run folder every ``pretrain.checkpoint_every`` steps, so a
retried attempt (the job definition's retry strategy, a spot reclaim) resumes where the last one
stopped. The run folder and the input must be in S3, which the containers can read.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

from training.batch import RUNNERS, job_name

#: The pretraining step the batch runner submits.
BATCH_STEP = "pretrain_encoder"


def pretrain_runner_of(cfg: DictConfig) -> str:
    """``pretrain.runner``, checked.

    Raises:
        ValueError: not one of :data:`training.batch.RUNNERS`.
    """
    runner = cfg.pretrain.get("runner", "local")
    if runner not in RUNNERS:
        raise ValueError(f"pretrain.runner={runner!r}: use one of {', '.join(RUNNERS)}")
    return str(runner)


def dag_pretrain_runner() -> str:
    """The runner the pretrain DAG is built for (the config plus ``LANDCOVER_OVERRIDES``)."""
    from core.config import compose

    return pretrain_runner_of(compose())


def require_remote_inputs(cfg: DictConfig) -> None:
    """Refuse a batch run whose run folder or input is on the Airflow worker's disk.

    Raises:
        ValueError: naming the key to change.
    """
    input_key, input_uri = (
        ("pretrain.input_uri", cfg.pretrain.input_uri)
        if cfg.pretrain.input_uri is not None
        else ("data.root_uri", cfg.data.root_uri)
    )
    for key, uri in (("storage.root_uri", cfg.storage.root_uri), (input_key, input_uri)):
        if "://" not in str(uri) or str(uri).startswith("file://"):
            raise ValueError(
                f"pretrain.runner=batch but {key}={uri} is a local path the Batch containers cannot read; "
                "use storage=s3 and s3:// inputs (or pretrain.runner=local)"
            )


def step_command(cfg: DictConfig, run_uri: str) -> list[str]:
    """The container command: the pretraining step CLI on the run's URI."""
    return [
        str(cfg.training.batch.python),
        "-m",
        "training.pretrain",
        "step",
        BATCH_STEP,
        "--run-uri",
        run_uri,
    ]


def plan_pretrain_job(run_uri: str) -> dict[str, Any]:
    """BatchOperator arguments of the pretrain job of a run whose scenes were selected.

    Raises:
        ValueError: the run was not started with pretrain.runner=batch, or its storage is local.
    """
    from training.pipeline import load_run

    run = load_run(run_uri)
    if pretrain_runner_of(run.cfg) != "batch":
        raise ValueError(
            f"run {run.run_id} has pretrain.runner={run.cfg.pretrain.runner} but this DAG was built for batch; "
            "set pretrain.runner=batch in LANDCOVER_OVERRIDES (the DAG's shape is fixed when it is parsed)"
        )
    require_remote_inputs(run.cfg)
    run.result("select_scenes")  # raises unless the scenes were selected
    return {
        "job_name": job_name(run.run_id, BATCH_STEP),
        "array_properties": None,
        "container_overrides": {"command": step_command(run.cfg, run.uri)},
    }


def add_pretrain_batch_step(run_uri: Any) -> Any:
    """Inside the DAG: ``batch_plan`` and the BatchOperator job after ``run_uri`` (the XCom of
    ``select_scenes``). Returns the job's task."""
    from airflow.providers.amazon.aws.operators.batch import BatchOperator
    from airflow.sdk import task

    from core.config import compose

    settings = {k: str(v) for k, v in OmegaConf.to_container(compose().training.batch, resolve=True).items()}

    @task
    def batch_plan(uri: str) -> list[dict[str, Any]]:
        return [plan_pretrain_job(uri)]

    return BatchOperator.partial(
        task_id=BATCH_STEP,
        job_queue=settings["job_queue"],
        job_definition=settings["job_definition"],
        aws_conn_id=settings["aws_conn_id"],
        region_name=settings["region_name"],
        retries=0,  # the job definition's retry strategy retries; the next attempt resumes
    ).expand_kwargs(batch_plan(run_uri))

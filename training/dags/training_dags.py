"""Training DAGs: one pipeline, and variants that are Hydra overrides of it.

Every recipe in ``setup/conf/training/`` becomes a DAG of the same name (``baseline``,
``useful``, ``class_weighted``): a new variant is a few lines of YAML. Every task is a thin call into
:mod:`training.pipeline`, idempotent through the run folder, and passes only the run URI
over XCom. Trigger with params ``{"overrides": ["training.epochs=3"], "run_id": "..."}``
to adjust a run from the UI or the REST API.
"""

from __future__ import annotations

import logging
from datetime import timedelta

import pendulum
from airflow.sdk import Param, dag, task

from core.config import dag_schedule, training_variants, variant_overrides
from training.batch import dag_runner

log = logging.getLogger(__name__)


def build_training_dag(dag_id: str, variant_overrides: list[str], runner: str = "local"):
    @dag(
        dag_id=dag_id,
        schedule=dag_schedule(dag_id),  # training.schedule: null (manual only) unless set
        start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
        catchup=False,
        max_active_runs=1,
        tags=["training", "clay", dag_id],
        default_args={"retries": 1, "retry_delay": timedelta(seconds=30)},
        params={
            "overrides": Param([], type="array", description="Extra Hydra overrides, e.g. training.epochs=3"),
            "run_id": Param(
                None, type=["null", "string"], description="Resume or name a run; default: the DAG run id"
            ),
        },
        doc_md=f"Fine-tune the Chesapeake head on Clay features. Hydra overrides: `{variant_overrides or 'none'}`.",
    )
    def training_pipeline():
        @task
        def validate_data(params: dict | None = None, run_id: str | None = None) -> str:
            from core.config import compose
            from training import pipeline

            params = params or {}
            cfg = compose([*variant_overrides, *params.get("overrides", [])])
            run = pipeline.start_run(cfg, params.get("run_id") or run_id)
            pipeline.validate_data(run)
            return run.uri

        @task
        def cache_features(run_uri: str) -> str:
            from training import pipeline

            pipeline.cache_features(pipeline.load_run(run_uri))
            return run_uri

        @task
        def train_head(run_uri: str) -> str:
            from training import pipeline

            pipeline.train_head(pipeline.load_run(run_uri))
            return run_uri

        @task
        def evaluate(run_uri: str) -> str:
            from training import pipeline

            pipeline.evaluate(pipeline.load_run(run_uri))
            return run_uri

        @task
        def register(run_uri: str) -> str:
            from training import pipeline

            return pipeline.register(pipeline.load_run(run_uri))["version"]

        @task
        def promote(run_uri: str, version: str) -> dict:
            from training import pipeline

            run = pipeline.load_run(run_uri)
            decision = pipeline.promote(run)["decision"]
            log.info("%s", pipeline.summary(run))  # the run's summary, once, in the task log
            return {"version": version, "outcome": decision["outcome"]}

        if runner == "batch":  # training.runner=batch: cache_features and train_head are AWS Batch jobs
            from training.batch import add_batch_steps

            validated = validate_data()
            run_uri = evaluate(validated)
            add_batch_steps(validated, dag_id) >> run_uri
        else:
            run_uri = evaluate(train_head(cache_features(validate_data())))
        promote(run_uri, register(run_uri))

    return training_pipeline()


for _variant in training_variants():
    build_training_dag(_variant, variant_overrides(_variant), dag_runner(_variant))

"""The ``pretrain`` DAG: continued pretraining of the Clay encoder (Clay's masked autoencoder).

    select_scenes -> pretrain_encoder -> register_encoder

Every task is a thin call into :mod:`training.pretrain`, idempotent through the run folder, and
passes only the run URI over XCom. Trigger with params ``{"overrides": ["pretrain.steps=100"],
"run_id": "..."}`` from the UI or the REST API, or run ``landcover pretrain`` (in-process).
With ``pretrain.runner=batch`` the pretrain_encoder task submits the step to AWS Batch instead.
"""

from __future__ import annotations

import logging
from datetime import timedelta

import pendulum
from airflow.sdk import Param, dag, task

from training.pretrain_batch import dag_pretrain_runner

log = logging.getLogger(__name__)

DAG_ID = "pretrain"  # training.pretrain.DAG_ID (not imported: it pulls the training stack into parsing)


@dag(
    dag_id=DAG_ID,
    schedule=None,  # manual only: the UI's trigger button, the REST API, make pretrain
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["pretraining", "clay"],
    default_args={"retries": 1, "retry_delay": timedelta(seconds=30)},
    params={
        "overrides": Param([], type="array", description="Extra Hydra overrides, e.g. pretrain.steps=100"),
        "run_id": Param(
            None, type=["null", "string"], description="Resume or name a run; default: the DAG run id"
        ),
    },
    doc_md=__doc__,
)
def pretrain_pipeline():
    @task
    def select_scenes(params: dict | None = None, run_id: str | None = None) -> str:
        from core.config import compose
        from training import pretrain

        params = params or {}
        run = pretrain.start(compose(params.get("overrides", [])), params.get("run_id") or run_id)
        pretrain.select_scenes(run)
        return run.uri

    @task
    def pretrain_encoder(run_uri: str) -> str:
        from training import pretrain
        from training.pipeline import load_run

        pretrain.pretrain_encoder(load_run(run_uri))
        return run_uri

    @task
    def register_encoder(run_uri: str) -> dict:
        from training import pretrain
        from training.pipeline import load_run

        run = load_run(run_uri)
        result = pretrain.register_encoder(run)
        log.info("%s", pretrain.summary(run))  # the run's summary, once, in the task log
        return {"encoder_name": result["encoder_name"], "version": result["version"], "uri": result["uri"]}

    if dag_pretrain_runner() == "batch":
        from training.pretrain_batch import add_pretrain_batch_step

        selected = select_scenes()
        job = add_pretrain_batch_step(selected)
        done = register_encoder(selected)
        job >> done
    else:
        register_encoder(pretrain_encoder(select_scenes()))


pretrain_pipeline()

"""The training DAGs: they import cleanly with Airflow 3 APIs, and each runs end to end in-process."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from core import registry
from core.config import compose, training_variants, variant_overrides
from tests.training.pipeline_fixtures import TINY_OVERRIDES, make_tiny_home, promotion_history
from training.airflow_runner import DAGS_FOLDER, run_embedded
from training.pipeline import STEPS, load_run, run_uri_for
from training.pretrain import DAG_ID as PRETRAIN_DAG
from training.pretrain import STEPS as PRETRAIN_STEPS

# Airflow 2 spellings that Airflow 3 removed or deprecated.
DEPRECATED = [
    r"schedule_interval",
    r"from airflow\.decorators",
    r"from airflow\.operators\.python",
    r"from airflow\.models\.dag import",
    r"days_ago",
    r"provide_context",
]


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(DAGS_FOLDER))


def test_dags_import_without_errors(dagbag) -> None:
    assert dagbag.import_errors == {}
    assert set(dagbag.dag_ids) == {*training_variants(), PRETRAIN_DAG}
    assert set(training_variants()) >= {"baseline", "useful", "class_weighted"}


@pytest.mark.parametrize("dag_id", training_variants())
def test_dag_shape(dagbag, dag_id: str) -> None:
    dag = dagbag.dags[dag_id]
    assert dag.catchup is False
    assert "training" in dag.tags
    assert dag.schedule is None  # manual only unless training.schedule is set: unpausing starts nothing
    assert [t.task_id for t in dag.topological_sort()] == list(STEPS)
    for task in dag.tasks:
        assert task.retries >= 1, f"{dag_id}.{task.task_id} has no retries"


@pytest.mark.parametrize("path", sorted(DAGS_FOLDER.glob("*.py")), ids=lambda p: p.name)
def test_no_deprecated_airflow_apis(path) -> None:
    source = path.read_text()
    assert "from airflow.sdk import" in source
    for pattern in DEPRECATED:
        assert not re.search(pattern, source), f"{path.name} uses {pattern}"


def test_schedule_comes_from_config(monkeypatch) -> None:
    from core.config import dag_schedule

    assert dag_schedule("baseline") is None
    monkeypatch.setenv("LANDCOVER_OVERRIDES", "training.schedule=@daily")
    assert dag_schedule("useful") == "@daily"


def test_variants_are_overrides() -> None:
    assert variant_overrides("useful") == ["training=useful"]
    assert compose(variant_overrides("useful")).training.epochs > compose().training.epochs
    with pytest.raises(ValueError, match="unknown training variant"):
        variant_overrides("nope")


@pytest.mark.slow
def test_each_dag_runs_end_to_end(tmp_path, monkeypatch) -> None:
    """Every DAG through `airflow dags test` (SQLite metadata) with a tiny config."""
    monkeypatch.setenv("LANDCOVER_HOME", str(make_tiny_home(tmp_path)))
    runs = {}
    for dag_id in training_variants():
        run_id = f"test-{dag_id}"
        run_embedded(dag_id, TINY_OVERRIDES, run_id)
        cfg = compose([*variant_overrides(dag_id), *TINY_OVERRIDES])
        runs[dag_id] = load_run(run_uri_for(cfg, run_id))

    for dag_id, run in runs.items():
        for step in STEPS:
            run.result(step)  # every step recorded its result
        assert run.cfg.training.name == dag_id

    # Every task left an INFO log file where the Airflow UI reads it (one home with make airflow_ui).
    logs = tmp_path / "outputs" / "airflow" / "logs" / "dag_id=baseline"
    train_log = next(logs.glob("run_id=*/task_id=train_head/attempt=1.log")).read_text()
    events = [json.loads(line)["event"] for line in train_log.splitlines()]
    assert any("[train_head] starting" in e for e in events)
    assert any("[train_head] epoch 2:" in e for e in events), events[-20:]
    assert not any("Epoch 1/1" in e for e in events)  # no 0-based bar in a log file
    promote_log = next(logs.glob("run_id=*/task_id=promote/attempt=1.log")).read_text()
    assert promote_log.count("held-out mIoU") == 1  # the summary, once
    assert sorted(p.parent.name for p in logs.glob("run_id=*/task_id=*/attempt=1.log")) == sorted(
        f"task_id={s}" for s in STEPS
    )
    weighted = runs["class_weighted"].result("train_head")["class_weights"]
    assert weighted is not None and max(weighted) > min(w for w in weighted if w > 0)
    baseline_weights = [float(w) for w in runs["baseline"].cfg.training.class_weights]
    assert runs["baseline"].result("train_head")["class_weights"] == baseline_weights

    cfg = runs["baseline"].cfg
    versions = registry.list_versions(cfg.storage.registry_uri, cfg.model_name)
    assert sorted(versions) == sorted(run.run_id for run in runs.values())
    champion = registry.champion(cfg.storage.registry_uri, cfg.model_name)
    assert champion is not None and champion["version"] in versions
    decisions = promotion_history(cfg.storage.registry_uri, cfg.model_name)
    assert len(decisions) == 3 and decisions[0]["promoted"]  # the first one had no champion to beat

    # MLflow holds what the run logged: params, per-epoch metrics, pictures, and the registry alias.
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=cfg.logging.mlflow.tracking_uri)
    mlflow_run_id = runs["baseline"].result("train_head")["tracking"]["mlflow"]
    logged = client.get_run(mlflow_run_id)
    assert logged.data.params["training.epochs"] == "2"
    assert logged.data.params["model.preset"] == "tiny"
    history = client.get_metric_history(mlflow_run_id, "val_miou")
    assert [m.step for m in history] == [1, 2]  # epochs counted from 1, as in the log lines
    assert 0.0 <= logged.data.metrics["test_miou"] <= 1.0
    artifacts = {a.path for a in client.list_artifacts(mlflow_run_id)}
    assert {"config.yaml", "metrics.json", "data_stats.json", "confusion_matrix.png", "samples"} <= artifacts
    assert [a.path for a in client.list_artifacts(mlflow_run_id, "samples")] == ["samples/sample_0.png"]
    stored = json.loads(Path(client.download_artifacts(mlflow_run_id, "metrics.json")).read_text())
    assert stored["miou"] == pytest.approx(logged.data.metrics["test_miou"])
    alias = client.get_model_version_by_alias(cfg.model_name, "champion")
    assert alias.tags["registry_version"] == champion["version"]


def test_pretrain_dag_shape(dagbag) -> None:
    dag = dagbag.dags[PRETRAIN_DAG]
    assert dag.catchup is False and dag.schedule is None
    assert "pretraining" in dag.tags
    assert [t.task_id for t in dag.topological_sort()] == list(PRETRAIN_STEPS)
    assert all(task.retries >= 1 for task in dag.tasks)


#: A pretraining run of a few seconds on the tiny home's one training scene.
PRETRAIN_TINY = [
    *TINY_OVERRIDES,
    "pretrain.steps=6",
    "pretrain.batch_size=2",
    "pretrain.crop_size=32",
    "pretrain.checkpoint_every=4",
    "pretrain.log_every=2",
    "pretrain.figure_chips=1",
    "pretrain.decoder_depth=1",
]


@pytest.mark.slow
def test_pretrain_dag_runs_end_to_end(tmp_path, monkeypatch) -> None:
    """The pretrain DAG through `airflow dags test`: an encoder version with its figure, MLflow loss curve."""
    from core import encoder_registry

    monkeypatch.setenv("LANDCOVER_HOME", str(make_tiny_home(tmp_path)))
    run_embedded(PRETRAIN_DAG, PRETRAIN_TINY, "test-pretrain")
    cfg = compose(PRETRAIN_TINY)
    run = load_run(run_uri_for(cfg, "test-pretrain"))
    registered = run.result("register_encoder")
    record = encoder_registry.resolve_encoder_version(cfg.storage.registry_uri, cfg.pretrain.encoder_name)
    assert record["version"] == registered["version"]
    assert record["lineage"]["run_uri"] == run.uri and record["lineage"]["scene_count"] == 1
    assert record["objective"]["teacher_term"].startswith("omitted")
    assert set(record["figures"]) == {"reconstruction.png"}

    logs = tmp_path / "outputs" / "airflow" / "logs" / f"dag_id={PRETRAIN_DAG}"
    task_log = next(logs.glob("run_id=*/task_id=pretrain_encoder/attempt=1.log")).read_text()
    events = [json.loads(line)["event"] for line in task_log.splitlines()]
    assert any("[pretrain_encoder] step 6/6 loss" in e for e in events), events[-20:]

    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=cfg.logging.mlflow.tracking_uri)
    mlflow_run = run.result("pretrain_encoder")["tracking"]["mlflow"]
    assert [m.step for m in client.get_metric_history(mlflow_run, "pretrain_loss")] == list(range(1, 7))
    assert "reconstruction.png" in {a.path for a in client.list_artifacts(mlflow_run)}

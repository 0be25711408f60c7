"""MLflow stays on the project's store: once a tracker is open, MLflow calls that name no URI
(a library's, a notebook's) use it too, and no stray ``mlflow.db`` appears in the working directory."""

from __future__ import annotations

import pytest


@pytest.fixture
def mlflow_defaults(monkeypatch):
    import mlflow

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    yield mlflow
    mlflow.set_tracking_uri(None)
    mlflow.set_registry_uri(None)


def test_no_stray_mlflow_db_in_the_working_directory(tmp_path, monkeypatch, mlflow_defaults) -> None:
    from core import storage
    from core.config import compose
    from training.tracking import open_tracker

    mlflow = mlflow_defaults
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("LANDCOVER_HOME", str(tmp_path / "home"))
    cfg = compose(["logging.style=mlflow"])
    store = cfg.logging.mlflow.tracking_uri
    assert store.startswith(f"sqlite:///{tmp_path}/home/")

    tracker = open_tracker(cfg, storage.to_uri(tmp_path / "run"), "store-test")
    tracker.log_metrics({"val_miou": 0.5}, step=1)
    # Calls that name no store: before the fix the registry ones fell back to ./mlflow.db.
    assert mlflow.get_tracking_uri() == mlflow.get_registry_uri() == store
    names = [e.name for e in mlflow.search_experiments()]
    mlflow.MlflowClient().search_registered_models()
    tracker.close()

    assert cfg.logging.experiment in names
    assert not (cwd / "mlflow.db").exists() and not (cwd / "mlruns").exists()
    assert (tmp_path / "home" / "outputs" / "mlflow" / "mlflow.db").exists()

"""The MLflow model registry mirror of the S3 registry: one MLflow version per registry version,
the champion alias following the registry's champion pointer."""

from __future__ import annotations

from pathlib import Path

from core import registry
from tests.core.registry_fixtures import MODEL, fake_export, register
from training import promotion
from training.registry_mlflow import register_in_mlflow


def test_register_in_mlflow_moves_alias_only_on_promotion(tmp_uri: str, tmp_path: Path) -> None:
    from mlflow import MlflowClient

    export_file = fake_export(tmp_path)
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=tracking, registry_uri=tracking)
    experiment = client.create_experiment("registry-test", artifact_location=str(tmp_path / "artifacts"))
    run_id = client.create_run(experiment).info.run_id

    def register_and_promote(miou: float, version: str) -> dict:
        info = register(tmp_uri, export_file, miou, version=version, run_id=run_id)
        decision = promotion.promote_if_better(tmp_uri, MODEL, version)
        return register_in_mlflow(info, tracking, promoted=decision.promoted)

    first = register_and_promote(0.50, "v1")
    challenger = register_and_promote(0.40, "v2")
    assert first["alias_moved"] and not challenger["alias_moved"]
    assert str(client.get_model_version_by_alias(MODEL, "champion").version) == first["version"]

    best = register_and_promote(0.70, "v3")
    champion_mv = client.get_model_version_by_alias(MODEL, "champion")
    assert str(champion_mv.version) == best["version"] != challenger["version"]
    assert champion_mv.tags["registry_version"] == "v3"
    assert champion_mv.tags["registry_uri"] == registry.version_uri(tmp_uri, MODEL, "v3")
    assert champion_mv.run_id == run_id and champion_mv.source == champion_mv.tags["registry_uri"]
    assert client.get_model_version(MODEL, challenger["version"]).tags["promotion"] == "challenger"

    # Idempotent, and a stale "promoted" (v1 is no longer the registry champion) cannot drag the alias back.
    again = register_in_mlflow(registry.get_version(tmp_uri, MODEL, "v1"), tracking, promoted=True)
    assert again["version"] == first["version"] and not again["alias_moved"]
    assert str(client.get_model_version_by_alias(MODEL, "champion").version) == best["version"]
    assert len(client.search_model_versions(f"name = '{MODEL}'")) == 3

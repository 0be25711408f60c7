"""The MLflow model registry as a mirror of the S3 registry (:mod:`core.registry`).

Each registry version becomes one MLflow model version, tagged with its registry version id;
the ``champion`` alias follows the registry's champion pointer, which stays the source of truth.
What the MLflow versions point to (a loadable pyfunc model) is :mod:`training.mlflow_model`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from core import registry

#: The MLflow alias that names the registry's champion.
CHAMPION_ALIAS = "champion"


def _ensure_registered_model(client: MlflowClient, name: str, registry_model_name: str) -> None:
    try:
        client.create_registered_model(
            name, description=f"Mirror of the S3 registry model {registry_model_name}."
        )
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise


def _mirrored_version(
    client: MlflowClient,
    name: str,
    version_info: Mapping[str, Any],
    run_id: str | None,
    model_source: str | None,
) -> ModelVersion:
    """The MLflow model version of the registry version ``version_info``, created on first use."""
    registry_version = version_info["version"]
    # Both names were checked by registry.check_name, so they cannot break out of the quotes.
    found = client.search_model_versions(f"name = '{name}' and tags.registry_version = '{registry_version}'")
    if found:
        return found[0]
    tags = {
        "registry_version": registry_version,
        "registry_uri": version_info["uri"],
        "export_uri": version_info["export_uri"],
    }
    if version_info.get("miou") is not None:
        tags["miou"] = str(version_info["miou"])
    if version_info.get("export_sha256"):
        tags["export_sha256"] = version_info["export_sha256"]
    return client.create_model_version(
        name=name,
        source=model_source or version_info["uri"],
        run_id=run_id or version_info.get("run_id"),
        tags=tags,
        description=f"Registry version {registry_version} ({version_info['uri']}).",
    )


def _still_champion(version_info: Mapping[str, Any]) -> bool:
    """Whether the registry's champion pointer names this version now (a slower run's may not)."""
    model_uri = version_info.get("model_uri") or version_info["uri"].rsplit("/", 1)[0]
    pointer = registry.champion(model_uri.rsplit("/", 1)[0], version_info["model_name"])
    return pointer is not None and pointer["version"] == version_info["version"]


def register_in_mlflow(
    version_info: Mapping[str, Any],
    tracking_uri: str,
    run_id: str | None = None,
    *,
    promoted: bool,
    registered_model_name: str | None = None,
    model_source: str | None = None,
) -> dict[str, Any]:
    """Mirror a registry version into MLflow's model registry; move the ``champion`` alias if promoted.

    Idempotent: the MLflow model version is found again by its ``registry_version`` tag. The
    alias only moves when ``promoted`` and the registry's champion pointer still names this
    version (the S3 pointer is the source of truth; a slower run must not drag the alias back).

    Args:
        version_info: The manifest from :func:`core.registry.register_version` /
            :func:`core.registry.get_version`.
        tracking_uri: MLflow tracking URI (also used as the registry URI).
        run_id: MLflow run that produced the weights; default the manifest's ``run_id``.
        promoted: Whether :func:`training.promotion.promote_if_better` made this version the champion.
        registered_model_name: MLflow model name; default the registry model name.
        model_source: the logged MLflow model a new version points to (``models:/...`` or
            ``runs:/...``, see :func:`training.mlflow_model.log_served_model`), so
            ``mlflow.pyfunc.load_model("models:/<name>@champion")`` works; default the registry
            version folder (a pointer only, not loadable by MLflow).

    Returns:
        ``{"name", "version", "registry_version", "alias_moved"}`` (``version`` is MLflow's).
    """
    for key in ("model_name", "version", "uri", "export_uri"):
        if key not in version_info:
            raise ValueError(f"version_info lacks {key!r}; pass the manifest from register_version()")
    name = registry.check_name(registered_model_name or version_info["model_name"], "MLflow model name")
    registry_version = registry.check_name(version_info["version"], "version id")
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)

    _ensure_registered_model(client, name, version_info["model_name"])
    model_version = _mirrored_version(client, name, version_info, run_id, model_source)
    client.set_model_version_tag(
        name, model_version.version, "promotion", "champion" if promoted else "challenger"
    )
    alias_moved = promoted and _still_champion(version_info)
    if alias_moved:
        client.set_registered_model_alias(name, CHAMPION_ALIAS, model_version.version)
    return {
        "name": name,
        "version": str(model_version.version),
        "registry_version": registry_version,
        "alias_moved": alias_moved,
    }

"""The Hydra config tree in ``setup/conf``: where it is, its resolvers, and composing it in code.

Entry points use ``@hydra.main(config_path=CONF_DIR, ...)``; library code and tests use
:func:`compose`. Both see the same resolvers, registered on import of this module:

- ``${repo_uri:data/synthetic}`` -> ``file:///<repo>/data/synthetic``
- ``${repo_path:outputs/wandb}`` -> ``/<repo>/outputs/wandb``
- ``${repo_sqlite:outputs/mlflow.db}`` -> ``sqlite:////<repo>/outputs/mlflow.db``

``LANDCOVER_HOME`` moves every repo-relative default elsewhere (the Airflow image sets it).
``LANDCOVER_OVERRIDES`` (shell-quoted Hydra overrides, e.g. ``"storage=s3"``) is prepended to
every :func:`compose` call: the compose stack selects S3 storage with it. Explicit overrides
come later, so they win.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

REPO_ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = REPO_ROOT / "setup" / "conf"


def home() -> Path:
    """Base folder of repo-relative defaults (data, outputs)."""
    return Path(os.environ.get("LANDCOVER_HOME", REPO_ROOT)).absolute()


def _repo_path(relative: str) -> str:
    return str(home() / relative)


OmegaConf.register_new_resolver("repo_path", _repo_path, replace=True)
OmegaConf.register_new_resolver("repo_uri", lambda rel: "file://" + _repo_path(rel), replace=True)
OmegaConf.register_new_resolver("repo_sqlite", lambda rel: "sqlite:///" + _repo_path(rel), replace=True)


def env_overrides() -> list[str]:
    """Hydra overrides from ``LANDCOVER_OVERRIDES`` (shell-quoted, space-separated); [] if unset."""
    return shlex.split(os.environ.get("LANDCOVER_OVERRIDES", ""))


def compose(overrides: Sequence[str] = ()) -> DictConfig:
    """Compose ``setup/conf/config.yaml`` with Hydra overrides, exactly as the CLI would.

    ``LANDCOVER_OVERRIDES`` comes first, so an explicit override of the same key wins.
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=[*env_overrides(), *overrides])


def training_variants() -> list[str]:
    """Names of the training recipes (``setup/conf/training/*.yaml``); each becomes a DAG."""
    return sorted(path.stem for path in (CONF_DIR / "training").glob("*.yaml"))


def variant_overrides(variant: str) -> list[str]:
    """The Hydra overrides that select a training variant."""
    if variant not in training_variants():
        raise ValueError(
            f"unknown training variant {variant!r}; choose from {', '.join(training_variants())}"
        )
    return [f"training={variant}"]


def dag_schedule(variant: str) -> str | None:
    """The Airflow schedule of a variant's DAG (``training.schedule``): None = manual only."""
    schedule = compose(variant_overrides(variant)).training.get("schedule")
    return str(schedule) if schedule else None


def apply_storage(cfg: DictConfig) -> None:
    """Point the storage layer at the configured S3 endpoint, region and profile."""
    from core import storage

    s3 = cfg.storage.s3
    storage.configure(endpoint_url=s3.endpoint_url, region=s3.region, profile=s3.profile)


def to_yaml(cfg: DictConfig) -> str:
    """The fully resolved config as YAML: what a run logs so it can be reproduced."""
    return OmegaConf.to_yaml(cfg, resolve=True)

"""Hydra entry point: ``python -m training.train model=clay_tiny training.epochs=3``.

Runs the same pipeline steps as the Airflow DAG, in order, without Airflow.
``--cfg job`` prints the composed config and exits.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from core.config import CONF_DIR


@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from training.pipeline import run_all

    run_all(cfg)


if __name__ == "__main__":
    main()

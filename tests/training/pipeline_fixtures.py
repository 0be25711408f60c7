"""A tiny, self-contained training setup: LANDCOVER_HOME in a temp folder with 1 small scene per split."""

from __future__ import annotations

from pathlib import Path

from training.data.synthetic import generate_dataset

# Small enough that a whole pipeline run takes seconds on 2 cores, big enough to learn something.
TINY_OVERRIDES = [
    "training.epochs=2",
    "training.val_every_n_epochs=1",
    "training.chips_per_scene=16",
    "training.val_chips_per_scene=4",
    "training.batch_size=4",
    "model.head_width=16",
    "data.chip_size=64",
    "logging.num_sample_images=1",
]


def make_tiny_home(home: Path) -> Path:
    """Synthetic data (1 scene of 256 px per split) under ``home/data/synthetic``."""
    generate_dataset(str(home / "data" / "synthetic"), scenes_per_split=1, size=256, seed=7, workers=1)
    return home


def promotion_history(root: str, model_name: str) -> list[dict]:
    """Every promotion decision the registry recorded for ``model_name``, oldest first."""
    import json

    from core import artifacts, storage

    prefix = artifacts.history_uri(root, model_name)
    return [json.loads(storage.read_text(uri)) for uri in storage.list_uris(prefix, suffix=".json")]

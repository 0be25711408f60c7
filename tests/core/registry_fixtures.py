"""Helpers for the registry tests: a fake export, held-out metrics, registering a version.

Imported by ``tests/core/test_registry.py``, ``tests/training/test_promotion.py`` and
``tests/training/test_registry_mlflow.py``; each defines its own thin fixtures over these.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from core import registry

MODEL = "chesapeake-landcover"
CLASSES = ["water", "tree_canopy", "low_vegetation", "barren", "impervious_other", "impervious_road"]
CONFIG_YAML = "model:\n  preset: tiny\ntraining:\n  epochs: 1\n"


def registry_root(request: pytest.FixtureRequest) -> str:
    """A registry root on a local folder (param ``file``) or on the moto S3 server (``s3``)."""
    if request.param == "file":
        return request.getfixturevalue("tmp_uri") + "/registry"
    return request.getfixturevalue("s3_bucket") + "/registry"


def fake_export(folder: Path) -> Path:
    """A small file standing in for a compact export, under ``folder``."""
    path = folder / "export" / "model.safetensors"
    path.parent.mkdir()
    path.write_bytes(b"fake-safetensors-" + bytes(range(256)) * 4)
    return path


def held_out_metrics(miou: float) -> dict:
    """Held-out metrics with ``miou`` and a per-class IoU in which one class is absent (NaN)."""
    per_class = {name: min(1.0, miou + 0.01 * i) for i, name in enumerate(CLASSES)}
    per_class["barren"] = float("nan")  # absent from the held-out set
    return {"miou": miou, "weighted_iou": miou + 0.1, "pixel_accuracy": 0.9, "per_class_iou": per_class}


def register(root: str, export: Path, miou: float, **kwargs) -> dict:
    """Register ``export`` as a version of :data:`MODEL` with :func:`held_out_metrics` of ``miou``."""
    return registry.register_version(root, MODEL, export, held_out_metrics(miou), CONFIG_YAML, **kwargs)

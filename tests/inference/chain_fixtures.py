"""Helpers for the inference-chain tests: a tiny champion in a registry, scenes, settings.

Imported by ``test_chain_*.py``, ``test_statemachine.py`` and ``test_handlers.py``. The tiny
random model is built and exported once per test session (a few seconds), then registered and
promoted into each test's own registry.
"""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path
from typing import Any

from core import registry, storage
from inference.settings import ChainSettings
from tests.data.builders import write_bad_naip
from tests.inference.helpers_core import tiny_export
from training import promotion

MODEL_NAME = "chesapeake-landcover"
SCENE_SIZE = 256
#: The chain's tiny champion: the model as initialised, with drift reference statistics.
CHAMPION_EXPORT = {"content_scale": None, "reference_stats": True}


@functools.cache
def tiny_throughput() -> dict[str, Any]:
    """The tiny export's measured throughput, as the training pipeline stores it (measured once)."""
    from inference.blocks import measure_throughput
    from training.models.predictor import TorchPredictor

    return measure_throughput(TorchPredictor(tiny_export(**CHAMPION_EXPORT)), 128, chips=4).to_dict()


def make_champion(registry_uri: str, model_name: str = MODEL_NAME, miou: float = 0.5) -> dict[str, Any]:
    """Register the tiny export in ``registry_uri`` and promote it; returns the champion pointer."""
    metrics = {"miou": miou, "throughput": tiny_throughput()}
    manifest = registry.register_version(
        registry_uri,
        model_name,
        tiny_export(**CHAMPION_EXPORT),
        metrics,
        "model: tiny\n",
        caveat="test model",
    )
    decision = promotion.promote_if_better(registry_uri, model_name, manifest["version"])
    assert decision.promoted
    pointer = registry.champion(registry_uri, model_name)
    assert pointer is not None
    return pointer


def make_challenger(registry_uri: str, model_name: str = MODEL_NAME, seed: int = 1, miou: float = 0.4) -> str:
    """Register another tiny export (weights from ``seed``) and name it the challenger; its version."""
    metrics = {"miou": miou, "throughput": tiny_throughput()}
    manifest = registry.register_version(
        registry_uri,
        model_name,
        tiny_export(seed=seed, **CHAMPION_EXPORT),
        metrics,
        "model: tiny\n",
        caveat="test challenger",
    )
    promotion.name_challenger(registry_uri, model_name, manifest["version"], reason="test challenger")
    return str(manifest["version"])


def write_scene(uri: str, seed: int, size: int = SCENE_SIZE) -> str:
    """A synthetic NAIP scene (with its nodata border) written to ``uri``."""
    from training.data.synthetic import make_scene, write_naip_tif

    scene = make_scene(seed, size)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "scene.tif"
        write_naip_tif(path, scene.image, scene.transform, scene.crs)
        storage.upload(path, uri)
    return uri


def write_bad(uri: str, kind: str) -> str:
    """A file failing NAIP validation with reason ``kind``, written to ``uri``."""
    with tempfile.TemporaryDirectory() as tmp:
        path = write_bad_naip(Path(tmp) / "bad.tif", kind)
        storage.upload(path, uri)
    return uri


def chain_settings(root_uri: str, ledger_url: str, **overrides: Any) -> ChainSettings:
    """Settings with input/, predictions/ and registry/ under ``root_uri``; small, fast defaults."""
    values: dict[str, Any] = {
        "input_uri": storage.join(root_uri, "input"),
        "output_uri": storage.join(root_uri, "predictions"),
        "registry_uri": storage.join(root_uri, "registry"),
        "model_name": MODEL_NAME,
        "ledger_url": ledger_url,
        "backend": "torch",
        "chip_size": 128,
        "overlap": 16,
        "batch_size": 4,
        "lease_s": 0.0,  # one execution at a time: a scene left predicting is from a crashed attempt
        "model_cache_dir": tempfile.mkdtemp(prefix="chain-model-"),
        "scene_cache_dir": tempfile.mkdtemp(prefix="chain-scenes-"),
        "infer_memory_mb": 3008,
    }
    values.update(overrides)
    return ChainSettings.model_validate(values)


def migrated(url: str) -> str:
    """Migrate the ledger at ``url`` to head and return the URL."""
    from inference.ledger import db

    db.migrate(url)
    return url


def fast_retries(monkeypatch: Any) -> list[float]:
    """Record the interpreter's Retry waits instead of sleeping them; returns the recorded seconds.

    Test-only patch of a library internal: moto's retrier calls ``time.sleep`` for the
    definition's real backoff (2 s, 4 s, ... with jitter), which would make fault tests slow. The
    module's ``time`` is replaced for this test only (``monkeypatch`` undoes it).
    """
    from types import SimpleNamespace

    from setup.tools import moto_shim

    retrier = moto_shim.import_interpreter(
        "moto.stepfunctions.parser.asl.component.common.retry.retrier_decl"
    )
    sleeps: list[float] = []
    monkeypatch.setattr(retrier, "time", SimpleNamespace(sleep=sleeps.append))
    return sleeps

"""The ledger's lineage names the encoder: a prediction row carries the encoder name and version
that the served artifact's metadata records (real Postgres, the real chain)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from core import registry, storage
from core.model_card import ENCODER_REGISTRY, RANDOM_INIT
from inference import handlers, transactions
from inference.ledger import repository
from inference.ledger.models import Prediction, Scene
from inference.steps.assemble import encoder_lineage
from setup.tools import local_statemachine as local
from tests.inference.chain_fixtures import MODEL_NAME, chain_settings, migrated, tiny_throughput, write_scene
from training import promotion

RECORD = {
    "source": ENCODER_REGISTRY,
    "uri": "s3://registry/encoders/clay-tiny-mae/v7/encoder.safetensors",
    "sha256": "ab" * 32,
    "verified": True,
    "encoder_name": "clay-tiny-mae",
    "version": "20261207T150000000000Z-0123456789ab",
    "registry_uri": "s3://registry",
    "objective": "mae",
    "input_uri": "s3://imagery/unlabelled/",
}


def _champion_with_encoder(registry_uri: str) -> str:
    """Register and promote a tiny export whose metadata names an encoder registry version."""
    from training.models.export import save_export
    from training.models.head import build_segmenter

    torch.manual_seed(0)
    model = build_segmenter("tiny", head_width=32).eval()
    path = Path(tempfile.mkdtemp(prefix="encoder-export-")) / "model.safetensors"
    save_export(model, str(path), encoder_weights=RECORD)
    manifest = registry.register_version(
        registry_uri,
        MODEL_NAME,
        path,
        {"miou": 0.5, "throughput": tiny_throughput()},
        "model: tiny\n",
        caveat="test model",
    )
    assert promotion.promote_if_better(registry_uri, MODEL_NAME, manifest["version"]).promoted
    return str(manifest["version"])


def test_encoder_lineage_of_each_source() -> None:
    assert encoder_lineage({"encoder_weights": RECORD}) == {
        "encoder_name": "clay-tiny-mae",
        "encoder_version": RECORD["version"],
    }
    assert encoder_lineage({"encoder_weights": {"source": RANDOM_INIT}}) == {
        "encoder_name": RANDOM_INIT,
        "encoder_version": None,
    }
    assert encoder_lineage({"encoder_weights": {"source": "clay-v1.5"}})["encoder_name"] == "clay-v1.5"
    # An artifact exported before the record existed names none.
    assert encoder_lineage({}) == {"encoder_name": None, "encoder_version": None}
    assert encoder_lineage({"encoder_weights": None}) == {"encoder_name": None, "encoder_version": None}


def test_a_prediction_row_names_the_served_encoder(tmp_uri, postgres_url) -> None:
    settings = chain_settings(tmp_uri, migrated(postgres_url))
    version = _champion_with_encoder(settings.registry_uri)
    write_scene(storage.join(settings.input_uri, "scene-0.tif"), seed=100)
    handlers.configure(settings)
    try:
        result = local.run_execution(settings.manifest_prefix, execution_id="encoder-1")
    finally:
        handlers.configure(None)
    assert result.succeeded, (result.error, result.cause)
    with transactions.session(settings) as s:
        rows = [p for scene in s.query(Scene) for p in repository.predictions_for(s, scene)]
        assert len(rows) == 1
        row: Prediction = rows[0]
        assert row.model_version == version
        assert (row.encoder_name, row.encoder_version) == ("clay-tiny-mae", RECORD["version"])

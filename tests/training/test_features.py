"""The fp16 feature cache: written once, reused, and equivalent to running the frozen encoder."""

from __future__ import annotations

import json

import torch

from training import storage
from training.data.chesapeake import find_scenes
from training.data.chips import read_scene_chips
from training.data.naip import normalize
from training.data.synthetic import generate_dataset
from training.features import CachedFeatures, ChipRecipe, cache_fingerprint, cache_split
from training.models.head import build_segmenter
from training.models.losses import build_loss


def _setup(tmp_path):
    root = str(tmp_path / "data")
    generate_dataset(root, scenes_per_split=1, size=256, seed=3, splits=("train",), workers=1)
    torch.manual_seed(0)
    model = build_segmenter("tiny", head_width=16).eval()
    return model, find_scenes(root, "train")


def test_cache_is_written_once_and_reused(tmp_path) -> None:
    model, scenes = _setup(tmp_path)
    recipe = ChipRecipe(size=64, random_count=6, seed=1)
    split_uri = storage.join(storage.to_uri(tmp_path / "cache"), "train")
    manifest = cache_split(model, scenes, recipe, split_uri, shard_size=4)
    assert manifest["count"] == len(manifest["windows"]) > 0
    assert len(manifest["shards"]) == -(-manifest["count"] // 4)  # shards of at most 4 chips

    data = CachedFeatures(split_uri)
    assert data.features.dtype == torch.float16
    assert data.features.shape[1:] == (192, 8, 8)
    assert data[0]["mask"].shape == (64, 64)

    # A second call finds the manifest and does no work (even with a model that would differ).
    other = build_segmenter("tiny", head_width=16)
    assert cache_split(other, scenes, recipe, split_uri) == manifest
    # ...but the fingerprint of a different encoder or recipe differs, so it lands elsewhere.
    assert cache_fingerprint(model.encoder, scenes, {"train": recipe}) != cache_fingerprint(
        other.encoder, scenes, {"train": recipe}
    )
    assert cache_fingerprint(model.encoder, scenes, {"train": recipe}) != cache_fingerprint(
        model.encoder, scenes, {"train": ChipRecipe(size=64, random_count=7, seed=1)}
    )


def test_cached_training_loss_matches_end_to_end(tmp_path) -> None:
    """The loss on cached (fp16) features equals the loss of the frozen encoder run end to end."""
    model, scenes = _setup(tmp_path)
    recipe = ChipRecipe(size=64, random_count=4, seed=2)
    split_uri = storage.join(storage.to_uri(tmp_path / "cache"), "train")
    cache_split(model, scenes, recipe, split_uri)
    data = CachedFeatures(split_uri)
    windows = json.loads(storage.read_text(storage.join(split_uri, "manifest.json")))["windows"]
    chips = read_scene_chips(scenes[0], **recipe.read_kwargs(0))
    assert [w.to_dict() for w in chips.windows] == [
        {k: w[k] for k in ("row", "col", "size")} for w in windows
    ]

    loss_fn = build_loss("focal", gamma=2.0, ignore_index=6)
    model.head.train()  # BatchNorm in training mode, as in a real training step
    torch.manual_seed(0)
    batch = [data[i] for i in range(len(data))]
    cached = loss_fn(
        model.forward_from_features(torch.stack([b["features"] for b in batch])),
        torch.stack([b["mask"] for b in batch]),
    )
    with torch.no_grad():
        features = model.forward_features(torch.from_numpy(normalize(chips.images)))
    end_to_end = loss_fn(model.forward_from_features(features), torch.from_numpy(chips.labels).long())
    # fp16 storage of features is the only difference.
    torch.testing.assert_close(cached, end_to_end, rtol=2e-3, atol=1e-4)

"""The feature cache in scene shards: same chips as one pass, resumes per shard, one shard per array child."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from core import storage
from core.config import REPO_ROOT
from tests.data.builders import write_scene_pair
from training.data.chesapeake import find_scenes
from training.device import select_device
from training.feature_shards import cache_splits, plan_shards
from training.features import CachedFeatures, ChipRecipe, cache_split
from training.models.head import build_segmenter

CPU = select_device("32-true", "cpu")


def test_plan_numbers_shards_across_splits() -> None:
    plan = plan_shards({"train": 5, "val": 1, "test": 0}, 2)
    assert [(s.index, s.split, s.part, s.first_scene, s.count) for s in plan] == [
        (0, "train", 0, 0, 2),
        (1, "train", 1, 2, 2),
        (2, "train", 2, 4, 1),
        (3, "val", 0, 0, 1),
    ]
    with pytest.raises(ValueError, match="scenes_per_shard"):
        plan_shards({"train": 1}, 0)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    for i in range(5):
        write_scene_pair(root / "data" / "train", f"t{i}", size=64, seed=i)
    torch.manual_seed(0)
    model = build_segmenter("tiny", 7, 16).eval()
    scenes = {"train": find_scenes(str(root / "data"), "train")}
    recipes = {"train": ChipRecipe(size=32, random_count=2, seed=3)}
    return root, model, scenes, recipes


def test_sharded_cache_equals_one_pass_and_resumes(world, monkeypatch) -> None:
    root, model, scenes, recipes = world
    one = cache_split(model, scenes["train"], recipes["train"], storage.to_uri(root / "one" / "train"), 4)
    options = {"shard_size": 4, "batch_size": 3, "scenes_per_shard": 2}
    cache = storage.to_uri(root / "sharded")

    # A crash while caching the second shard: the first shard's part survives.
    import training.feature_shards as fs

    real = fs.cache_split
    calls = []

    def crash_on_second(*args, **kwargs):
        calls.append(args[3])
        if len(calls) == 2:
            raise RuntimeError("spot instance reclaimed")
        return real(*args, **kwargs)

    monkeypatch.setattr(fs, "cache_split", crash_on_second)
    with pytest.raises(RuntimeError, match="reclaimed"):
        cache_splits(model, scenes, recipes, cache, CPU, **options)
    assert storage.exists(storage.join(cache, "train", "parts", "part-00000", "manifest.json"))
    assert not storage.exists(storage.join(cache, "train", "manifest.json"))

    # The re-run skips the finished shard and encodes only the others.
    monkeypatch.setattr(fs, "cache_split", real)
    import training.features as features

    real_encode = features.encode_chips
    batches = []
    monkeypatch.setattr(
        features,
        "encode_chips",
        lambda m, images, b=8, **kw: batches.append(len(images)) or real_encode(m, images, b, **kw),
    )
    counts = cache_splits(model, scenes, recipes, cache, CPU, **options)
    assert counts == {"train": one["count"]}
    assert len(batches) == 3  # scenes t2, t3, t4; t0 and t1 were in the finished shard
    merged = json.loads(storage.read_text(storage.join(cache, "train", "manifest.json")))
    assert merged["windows"] == one["windows"] and len(merged["parts"]) == 3

    a = CachedFeatures(storage.join(cache, "train"))
    b = CachedFeatures(storage.to_uri(root / "one" / "train"))
    assert torch.equal(a.labels, b.labels)
    torch.testing.assert_close(a.features, b.features)

    # Done: a third call reads the manifest and encodes nothing.
    batches.clear()
    assert cache_splits(model, scenes, recipes, cache, CPU, **options) == counts and batches == []


def test_only_one_shard_for_an_array_child(world) -> None:
    root, model, scenes, recipes = world
    cache = storage.to_uri(root / "child")
    options = {"shard_size": 4, "batch_size": 8, "scenes_per_shard": 2}
    assert cache_splits(model, scenes, recipes, cache, CPU, only=1, **options) is None
    parts = storage.join(cache, "train", "parts")
    assert storage.exists(storage.join(parts, "part-00001", "manifest.json"))
    assert not storage.exists(storage.join(parts, "part-00000", "manifest.json"))
    assert not storage.exists(storage.join(cache, "train", "manifest.json"))
    with pytest.raises(ValueError, match="3 shards"):
        cache_splits(model, scenes, recipes, cache, CPU, only=3, **options)


def test_step_cli_reads_the_array_index(tmp_path) -> None:
    from training.step import shard_index

    assert shard_index(None, {}) is None
    assert shard_index(None, {"AWS_BATCH_JOB_ARRAY_INDEX": "4"}) == 4
    assert shard_index(2, {"AWS_BATCH_JOB_ARRAY_INDEX": "4"}) == 2
    with pytest.raises(ValueError, match="not an integer"):
        shard_index(None, {"AWS_BATCH_JOB_ARRAY_INDEX": "x"})
    proc = subprocess.run(
        [sys.executable, "-m", "training.step", "nope", "--run-uri", storage.to_uri(tmp_path)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
    )
    assert proc.returncode != 0 and "unknown step 'nope'" in proc.stderr

"""The feature cache in shards of scenes: resumable per shard, and one AWS Batch array child each.

A split's scenes are cut into consecutive shards of ``training.scenes_per_shard`` scenes. Each
shard is cached on its own by :func:`training.features.cache_split` into

    <fingerprint>/<split>/parts/part-00003/   shard-*.safetensors + manifest.json (written last)

so a crash loses at most the shard in progress: a re-run skips every part whose manifest
exists. When all parts of a split are there, their manifests are merged into the split's
``manifest.json``, the file :class:`training.features.CachedFeatures` and the evaluation read;
its chips are exactly those of an unsharded cache (each scene keeps its seed, ``seed + index``,
whatever shard it lands in).

The shards of all splits are numbered in one sequence (:func:`plan_shards`): the index of an
array child (``AWS_BATCH_JOB_ARRAY_INDEX``) names the shard it caches.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from core import artifacts, storage
from training.data.chesapeake import SPLITS, SceneRecord
from training.device import DeviceChoice
from training.features import ChipRecipe, cache_split
from training.models.head import ClaySegmenter

log = logging.getLogger(__name__)

MANIFEST_NAME = artifacts.FEATURE_MANIFEST_NAME


@dataclass(frozen=True)
class SceneShard:
    """A run of consecutive scenes of one split.

    Args:
        index: position in the plan over all splits (the array child that caches it).
        split: train, val or test.
        part: position among the split's shards.
        first_scene: index of its first scene in the split's scene list.
        count: number of scenes.
    """

    index: int
    split: str
    part: int
    first_scene: int
    count: int

    def part_uri(self, split_uri: str) -> str:
        return storage.join(split_uri, "parts", f"part-{self.part:05d}")


def plan_shards(scene_counts: Mapping[str, int], scenes_per_shard: int) -> list[SceneShard]:
    """Every split's scenes cut into shards of at most ``scenes_per_shard``, numbered across splits.

    Raises:
        ValueError: ``scenes_per_shard`` is not positive.
    """
    if scenes_per_shard < 1:
        raise ValueError(f"training.scenes_per_shard must be at least 1, got {scenes_per_shard}")
    shards: list[SceneShard] = []
    for split in (s for s in SPLITS if s in scene_counts):
        for part, first in enumerate(range(0, scene_counts[split], scenes_per_shard)):
            count = min(scenes_per_shard, scene_counts[split] - first)
            shards.append(SceneShard(len(shards), split, part, first, count))
    return shards


def cache_shard(
    model: ClaySegmenter,
    scenes: Sequence[SceneRecord],
    recipe: ChipRecipe,
    split_uri: str,
    shard: SceneShard,
    shard_size: int,
    batch_size: int,
) -> dict:
    """Cache one shard's scenes into its part folder (a no-op if its manifest exists)."""
    chunk = scenes[shard.first_scene : shard.first_scene + shard.count]
    # cache_split seeds scene i with recipe.seed + i; shifting the seed keeps each scene's chips.
    shifted = dataclasses.replace(recipe, seed=recipe.seed + shard.first_scene)
    return cache_split(
        model, chunk, shifted, shard.part_uri(split_uri), shard_size, batch_size, allow_empty=True
    )


def merge_parts(split_uri: str, parts: Sequence[SceneShard], recipe: ChipRecipe) -> dict:
    """Write the split's manifest from its parts' manifests (all must exist); returns it.

    Raises:
        RuntimeError: a part has not been cached yet (names it).
        ValueError: the split has no usable chip at all.
    """
    manifests = []
    for shard in parts:
        uri = storage.join(shard.part_uri(split_uri), MANIFEST_NAME)
        if not storage.exists(uri):
            raise RuntimeError(
                f"shard {shard.index} ({shard.split} part {shard.part}) has no manifest at {uri}; "
                "run cache_features again (or that array child) to finish it"
            )
        manifests.append(json.loads(storage.read_text(uri)))
    count = sum(m["count"] for m in manifests)
    if count == 0:
        raise ValueError(f"no usable chips in the scenes for {split_uri}: all were mostly nodata")
    manifest = {
        "count": count,
        "shards": [s for m in manifests for s in m["shards"]],
        "windows": [w for m in manifests for w in m["windows"]],
        "feature_shape": next(m["feature_shape"] for m in manifests if m["count"]),
        "chip_size": recipe.size,
        "recipe": vars(recipe),
        "parts": [shard.part_uri(split_uri) for shard in parts],
    }
    storage.write_text(storage.join(split_uri, MANIFEST_NAME), json.dumps(manifest))
    return manifest


def cache_splits(
    model: ClaySegmenter,
    scenes: Mapping[str, Sequence[SceneRecord]],
    recipes: Mapping[str, ChipRecipe],
    root: str,
    device: DeviceChoice,
    *,
    shard_size: int,
    batch_size: int,
    scenes_per_shard: int,
    only: int | None = None,
) -> dict[str, int] | None:
    """Cache every split under ``root`` shard by shard, then merge; returns chips per split.

    With ``only`` (an array child) just that shard is cached and None is returned; the merge is
    left to a later call without ``only``, which finds every part done.

    Raises:
        ValueError: ``only`` is outside the plan.
    """
    plan = plan_shards({split: len(scenes[split]) for split in recipes}, scenes_per_shard)
    if only is not None and not 0 <= only < len(plan):
        raise ValueError(f"shard {only} does not exist: this run has {len(plan)} shards (0..{len(plan) - 1})")
    model = model.to(device.device)
    counts: dict[str, int] = {}
    with device.autocast():
        for split, recipe in recipes.items():
            split_uri = storage.join(root, split)
            manifest_uri = storage.join(split_uri, MANIFEST_NAME)
            parts = [s for s in plan if s.split == split]
            if only is None and storage.exists(manifest_uri):
                counts[split] = json.loads(storage.read_text(manifest_uri))["count"]
                continue
            for shard in parts:
                if only is not None and shard.index != only:
                    continue
                done = storage.exists(storage.join(shard.part_uri(split_uri), MANIFEST_NAME))
                result = cache_shard(model, scenes[split], recipe, split_uri, shard, shard_size, batch_size)
                log.info(
                    "[cache_features] shard %d/%d (%s part %d, %d scenes): %d chips%s",
                    shard.index + 1,
                    len(plan),
                    split,
                    shard.part,
                    shard.count,
                    result["count"],
                    " (already cached)" if done else "",
                )
            if only is None:
                counts[split] = merge_parts(split_uri, parts, recipe)["count"]
    return None if only is not None else counts

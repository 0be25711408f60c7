"""The fp16 feature cache: written once, reused, and equivalent to running the frozen encoder."""

from __future__ import annotations

import json

import pytest
import torch

from core import storage
from core.naip import normalize
from training.data.chesapeake import find_scenes
from training.data.chips import read_scene_chips
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
    # ... and so does the precision the encoder runs in.
    assert cache_fingerprint(
        model.encoder, scenes, {"train": recipe}, precision="32-true"
    ) != cache_fingerprint(model.encoder, scenes, {"train": recipe}, precision="bf16-mixed")


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


def test_cache_stores_the_chip_and_augments_features_pixels_and_mask_alike(tmp_path) -> None:
    """Format 2 keeps the uint8 chip beside its features; flips, turns and crops move all three."""
    from training.features import CACHE_FORMAT, dihedral

    model, scenes = _setup(tmp_path)
    recipe = ChipRecipe(size=64, random_count=3, seed=4)
    split_uri = storage.join(storage.to_uri(tmp_path / "cache"), "train")
    cache_split(model, scenes, recipe, split_uri)
    plain = CachedFeatures(split_uri)
    chips = read_scene_chips(scenes[0], **recipe.read_kwargs(0))
    assert CACHE_FORMAT == 2 and plain.images.dtype == torch.uint8
    assert torch.equal(plain.images, torch.from_numpy(chips.images))
    torch.testing.assert_close(plain[0]["pixels"], torch.from_numpy(normalize(chips.images[0])))

    # The fingerprint names the encoder layers the head reads.
    assert cache_fingerprint(model.encoder, scenes, {"train": recipe}) != cache_fingerprint(
        model.encoder, scenes, {"train": recipe}, feature_layers=(1, -1)
    )

    augmented = CachedFeatures(split_uri, augment=True, crop=32, seed=0)
    seen = set()
    for i in range(len(augmented)):
        for _ in range(6):
            item = augmented[i]
            assert item["features"].shape == (192, 4, 4) and item["pixels"].shape == (4, 32, 32)
            assert item["mask"].shape == (32, 32)
            # Find the transform and the window: the three tensors must agree on both.
            found = False
            for k in range(4):
                for flip in (False, True):
                    undo_f = torch.rot90(dihedral(item["features"], 0, flip), -k, dims=(-2, -1))
                    for top in range(5):
                        for left in range(5):
                            ref = plain.features[i, :, top : top + 4, left : left + 4].float()
                            if torch.equal(undo_f, ref):
                                undo_p = torch.rot90(dihedral(item["pixels"], 0, flip), -k, dims=(-2, -1))
                                undo_m = torch.rot90(dihedral(item["mask"], 0, flip), -k, dims=(-2, -1))
                                rows = slice(8 * top, 8 * top + 32)
                                cols = slice(8 * left, 8 * left + 32)
                                torch.testing.assert_close(undo_p, plain.pixels(i)[:, rows, cols])
                                assert torch.equal(undo_m, plain.labels[i, rows, cols].long())
                                found, _ = True, seen.add((k, flip))
            assert found
    assert len(seen) > 2  # several of the 8 transforms were drawn
    with pytest.raises(ValueError, match="multiple of the patch size"):
        CachedFeatures(split_uri, crop=12)


def test_cache_of_dihedral_views_serves_the_encoders_features_of_the_turned_chip(tmp_path) -> None:
    """With views, an augmented item's features are what the encoder gives the turned chip
    (not the turned grid of the upright chip's features), with pixels and mask turned alike and
    cropped on the same window; a recipe of one view keeps the fingerprint of older caches."""
    from training.features import DIHEDRAL_VIEWS, dihedral, view_transform

    model, scenes = _setup(tmp_path)
    recipe = ChipRecipe(size=64, random_count=2, seed=5, views=DIHEDRAL_VIEWS)
    split_uri = storage.join(storage.to_uri(tmp_path / "cache"), "train")
    manifest = cache_split(model, scenes, recipe, split_uri)
    assert manifest["feature_shape"] == [DIHEDRAL_VIEWS, 192, 8, 8] and manifest["recipe"]["views"] == 8
    data = CachedFeatures(split_uri, augment=True, crop=32, seed=0)
    assert data.views == DIHEDRAL_VIEWS and data.features.shape[1:] == (DIHEDRAL_VIEWS, 192, 8, 8)
    chips = read_scene_chips(scenes[0], **recipe.read_kwargs(0))
    with torch.inference_mode():
        encoded = {
            v: model.forward_features(dihedral(torch.from_numpy(normalize(chips.images)), *view_transform(v)))
            for v in range(DIHEDRAL_VIEWS)
        }
    # A frozen ViT is not equivariant: turning its grid is not encoding the turned chip.
    k, flip = view_transform(1)
    assert not torch.allclose(dihedral(encoded[0], k, flip), encoded[1], atol=1e-2)
    seen = set()
    for i in range(len(data)):
        for _ in range(8):
            item = data[i]
            assert item["features"].shape == (192, 4, 4) and item["pixels"].shape == (4, 32, 32)
            found = False
            for v in range(DIHEDRAL_VIEWS):
                full = encoded[v][i].to(torch.float16).float()
                for top in range(5):
                    for left in range(5):
                        if torch.equal(item["features"], full[:, top : top + 4, left : left + 4]):
                            rows, cols = slice(8 * top, 8 * top + 32), slice(8 * left, 8 * left + 32)
                            turned_pixels = dihedral(data.pixels(i), *view_transform(v))
                            turned_mask = dihedral(data.labels[i].long(), *view_transform(v))
                            torch.testing.assert_close(item["pixels"], turned_pixels[:, rows, cols])
                            assert torch.equal(item["mask"], turned_mask[rows, cols])
                            found, _ = True, seen.add(v)
            assert found
    assert len(seen) > 2
    # Without augmentation a cache of views serves the upright chip (view 0), whole.
    upright = CachedFeatures(split_uri)[0]
    torch.testing.assert_close(upright["features"], encoded[0][0].to(torch.float16).float())
    assert torch.equal(upright["mask"], data.labels[0].long())
    # One view hashes as recipes did before views existed; more views are another cache.
    one = ChipRecipe(size=64, random_count=2, seed=5)
    assert "views" not in one.identity()
    assert cache_fingerprint(model.encoder, scenes, {"train": one}) != cache_fingerprint(
        model.encoder, scenes, {"train": recipe}
    )
    with pytest.raises(ValueError, match="views"):
        ChipRecipe(views=9)


def test_band_jitter_scales_each_band_of_the_chip_only_when_augmenting(tmp_path) -> None:
    """band_jitter draws one gain per band and item, applied to the digital numbers of the chip
    (the mask and the cached features are untouched); off, or without augment, nothing moves."""
    model, scenes = _setup(tmp_path)
    recipe = ChipRecipe(size=64, random_count=2, seed=6)
    split_uri = storage.join(storage.to_uri(tmp_path / "cache"), "train")
    cache_split(model, scenes, recipe, split_uri)
    jittered = CachedFeatures(split_uri, augment=True, seed=3, band_jitter=0.1)
    assert torch.equal(
        CachedFeatures(split_uri, band_jitter=0.1)[0]["pixels"], CachedFeatures(split_uri)[0]["pixels"]
    )
    mean = jittered._mean
    std = jittered._std
    gains = []
    for i in range(len(jittered)):
        # Fresh datasets per item: the first draws of a seed are the same geometric ones, and
        # the jitter's draws come after them.
        a = CachedFeatures(split_uri, augment=True, seed=3 + i)[i]
        b = CachedFeatures(split_uri, augment=True, seed=3 + i, band_jitter=0.1)[i]
        assert torch.equal(a["mask"], b["mask"]) and torch.equal(a["features"], b["features"])
        dn_a, dn_b = a["pixels"] * std + mean, b["pixels"] * std + mean  # (4, S, S) digital numbers
        gain = dn_b.flatten(1).sum(1) / dn_a.flatten(1).sum(1)  # (4,) one gain per band
        torch.testing.assert_close(dn_b, gain.view(-1, 1, 1) * dn_a, rtol=1e-4, atol=1e-3)
        assert bool(((gain > 0.9 - 1e-6) & (gain < 1.1 + 1e-6)).all())
        gains.append(gain)
    assert not torch.allclose(gains[0], torch.ones(4))
    with pytest.raises(ValueError, match="band_jitter"):
        CachedFeatures(split_uri, band_jitter=1.5)


def test_brightness_jitter_scales_all_bands_of_the_chip_by_one_gain(tmp_path) -> None:
    """brightness_jitter draws one gain per item, common to all bands (band ratios, so NDVI,
    are kept); the mask and features are untouched, and without augment nothing moves."""
    model, scenes = _setup(tmp_path)
    recipe = ChipRecipe(size=64, random_count=2, seed=6)
    split_uri = storage.join(storage.to_uri(tmp_path / "cache"), "train")
    cache_split(model, scenes, recipe, split_uri)
    assert torch.equal(
        CachedFeatures(split_uri, brightness_jitter=0.2)[0]["pixels"],
        CachedFeatures(split_uri)[0]["pixels"],
    )
    reference = CachedFeatures(split_uri)
    mean, std = reference._mean, reference._std
    gains = []
    for i in range(len(reference)):
        a = CachedFeatures(split_uri, augment=True, seed=3 + i)[i]
        b = CachedFeatures(split_uri, augment=True, seed=3 + i, brightness_jitter=0.2)[i]
        assert torch.equal(a["mask"], b["mask"]) and torch.equal(a["features"], b["features"])
        dn_a, dn_b = a["pixels"] * std + mean, b["pixels"] * std + mean
        gain = dn_b.flatten(1).sum(1) / dn_a.flatten(1).sum(1)  # (4,) must all be one value
        torch.testing.assert_close(gain, gain[:1].expand(4), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(dn_b, gain[0] * dn_a, rtol=1e-4, atol=1e-3)
        assert 0.8 - 1e-6 < float(gain[0]) < 1.2 + 1e-6
        gains.append(float(gain[0]))
    assert len(set(round(g, 4) for g in gains)) == len(gains) and abs(gains[0] - 1.0) > 1e-3
    with pytest.raises(ValueError, match="brightness_jitter"):
        CachedFeatures(split_uri, brightness_jitter=1.0)


def test_band_offset_and_pixel_noise_stay_digital_numbers_a_sensor_can_give(tmp_path) -> None:
    """band_offset shifts each band by one offset per item, pixel_noise adds per-pixel noise, and
    the result is clipped to 0..255 like a uint8 sensor (an unclipped dark pixel could go negative
    and blow up NDVI's denominator); features and mask are untouched."""
    model, scenes = _setup(tmp_path)
    recipe = ChipRecipe(size=64, random_count=2, seed=6)
    split_uri = storage.join(storage.to_uri(tmp_path / "cache"), "train")
    cache_split(model, scenes, recipe, split_uri)
    plain = CachedFeatures(split_uri, augment=True, seed=3)[0]
    shifted = CachedFeatures(split_uri, augment=True, seed=3, band_offset=40.0)[0]
    noisy = CachedFeatures(split_uri, augment=True, seed=3, pixel_noise=300.0)[0]
    mean, std = CachedFeatures(split_uri)._mean, CachedFeatures(split_uri)._std
    dn = {k: v["pixels"] * std + mean for k, v in (("plain", plain), ("shifted", shifted), ("noisy", noisy))}
    assert torch.equal(plain["features"], shifted["features"]) and torch.equal(plain["mask"], noisy["mask"])
    inside = (dn["plain"] > 45) & (dn["plain"] < 210)  # away from the clip at both ends
    delta = (dn["shifted"] - dn["plain"])[inside]
    assert 0 < float(delta.abs().max()) <= 40.0 + 1e-3
    for name in ("shifted", "noisy"):
        assert float(dn[name].min()) >= -1e-3 and float(dn[name].max()) <= 255.0 + 1e-3
    assert float((dn["noisy"] - dn["plain"]).std()) > 5.0
    with pytest.raises(ValueError, match="band_offset"):
        CachedFeatures(split_uri, band_offset=-1.0)
    with pytest.raises(ValueError, match="pixel_noise"):
        CachedFeatures(split_uri, pixel_noise=-1.0)

"""Feature cache: frozen-encoder features computed once per chip, stored as fp16 shards.

Head epochs then read shards instead of running the encoder. A cache lives under
``<features_uri>/<fingerprint>/`` where the fingerprint hashes the encoder weights and the
chip recipe, so a changed encoder or recipe never reuses stale features:

    <fingerprint>/encoder.safetensors          the exact encoder the features came from
    <fingerprint>/<split>/shard-00000.safetensors   features fp16 (N, dim, h, w), or (N, V, dim, h, w)
                                                    with V dihedral views per chip; labels uint8 (N, S, S),
                                                    images uint8 (N, 4, S, S) (heads that read pixels)
    <fingerprint>/<split>/manifest.json        shards, chip windows, shapes (written last)
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from core import artifacts, storage
from core.naip import normalize
from training.data.chesapeake import SceneRecord
from training.data.chips import read_scene_chips
from training.models.clay import ClayEncoder
from training.models.head import ClaySegmenter

#: Number of dihedral views of a square chip: 4 quarter turns, each also mirrored.
DIHEDRAL_VIEWS = 8


@dataclass(frozen=True)
class ChipRecipe:
    """How a split's chips are cut: ``random_count`` seeded chips per scene, or a full grid (None).

    ``views`` is how many of the :data:`DIHEDRAL_VIEWS` of each chip are encoded (view ``v`` is
    :func:`dihedral` with ``k = v % 4``, ``flip = v >= 4``): 1 encodes the chip as it is. With
    more, an augmented training item takes the features the encoder gave the turned chip, not the
    turned grid of the upright chip's features (which a frozen ViT never emits at inference).
    """

    size: int = 256
    random_count: int | None = None
    overlap: int = 0
    seed: int = 0
    max_nodata_fraction: float = 0.5
    max_pixels: int | None = None
    views: int = 1

    def __post_init__(self) -> None:
        if not 1 <= self.views <= DIHEDRAL_VIEWS:
            raise ValueError(f"views must be 1..{DIHEDRAL_VIEWS}, got {self.views}")

    def identity(self) -> dict:
        """The recipe's fields as hashed and recorded; ``views`` only when above 1, so caches
        made before views existed keep their fingerprint."""
        fields = dict(vars(self))
        if self.views == 1:
            del fields["views"]
        return fields

    def read_kwargs(self, scene_index: int) -> dict:
        return {
            "size": self.size,
            "overlap": self.overlap,
            "random_count": self.random_count,
            "seed": self.seed + scene_index,
            "max_nodata_fraction": self.max_nodata_fraction,
            "max_pixels": self.max_pixels,
        }


def encoder_fingerprint(encoder: ClayEncoder) -> str:
    """sha256 of the encoder's weights (names, shapes and values), first 16 hex digits."""
    digest = hashlib.sha256()
    for name, tensor in sorted(encoder.state_dict().items()):
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


#: Layout of the shards (2: the uint8 chip is stored beside its features and labels).
CACHE_FORMAT = 2


def cache_fingerprint(
    encoder: ClayEncoder,
    scenes: Sequence[SceneRecord],
    recipes: dict[str, ChipRecipe],
    feature_layers: Sequence[int] = (-1,),
    precision: str | None = None,
) -> str:
    """Identity of a cache: the encoder, the encoder layers the head reads, the scenes, each
    split's chip recipe, the configured precision the encoder runs in (a bf16 cache is not an
    fp32 one) and the shard layout."""
    payload = {
        "format": CACHE_FORMAT,
        "precision": precision,
        "feature_layers": [int(i) for i in feature_layers],
        "encoder": encoder_fingerprint(encoder),
        "scenes": sorted(s.image_uri for s in scenes),
        "recipes": {split: recipe.identity() for split, recipe in sorted(recipes.items())},
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def view_transform(view: int) -> tuple[int, bool]:
    """``(k, flip)`` of dihedral view ``view`` (see :class:`ChipRecipe`)."""
    return view % 4, view >= 4


@torch.inference_mode()
def encode_chips(
    model: ClaySegmenter, images: np.ndarray, batch_size: int = 8, views: int = 1
) -> torch.Tensor:
    """Encoder grids (N, dim, h, w), fp32 on the CPU, for uint8 chips (N, 4, S, S); with
    ``views`` > 1, (N, views, dim, h, w): view ``v`` is the grid of the chip turned by
    :func:`view_transform` ``(v)`` (square chips only).

    Runs on the model's device, under whatever autocast the caller opened (training.device)."""
    model.eval()
    device = next(model.parameters()).device
    if views > 1 and images.shape[-1] != images.shape[-2]:
        raise ValueError(f"dihedral views need square chips, got {images.shape[-2]}x{images.shape[-1]}")
    per_view = []
    for view in range(views):
        k, flip = view_transform(view)
        out = []
        for start in range(0, len(images), batch_size):
            chunk = images[start : start + batch_size]
            pixels = torch.from_numpy(normalize(chunk)).to(device)  # (B, 4, S, S)
            if views > 1:
                pixels = dihedral(pixels, k, flip).contiguous()
            out.append(model.forward_features(pixels).float().cpu())  # (B, dim, h, w)
        per_view.append(torch.cat(out) if out else torch.empty(0))
    return per_view[0] if views == 1 else torch.stack(per_view, dim=1)  # (N, [V,] dim, h, w)


def _upload_tensors(tensors: dict[str, torch.Tensor], uri: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "shard.safetensors"
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
        storage.upload(path, uri)


def _download_tensors(uri: str) -> dict[str, torch.Tensor]:
    local = storage.local_path(uri)
    if local is not None:
        return load_file(str(local))
    with tempfile.TemporaryDirectory() as tmp:
        return load_file(str(storage.download(uri, Path(tmp) / "shard.safetensors")))


def cache_split(
    model: ClaySegmenter,
    scenes: Sequence[SceneRecord],
    recipe: ChipRecipe,
    split_uri: str,
    shard_size: int = 256,
    batch_size: int = 8,
    allow_empty: bool = False,
) -> dict:
    """Encode every chip of ``scenes`` into fp16 shards under ``split_uri``; returns the manifest.

    Idempotent: an existing manifest is returned as is (it is written last, so it only
    exists once every shard has landed). ``allow_empty`` records a manifest with no chips
    instead of raising (one part of a split, see :mod:`training.feature_shards`).
    """
    manifest_uri = storage.join(split_uri, artifacts.FEATURE_MANIFEST_NAME)
    if storage.exists(manifest_uri):
        return json.loads(storage.read_text(manifest_uri))

    shards: list[dict] = []
    windows: list[dict] = []
    pending_feats: list[torch.Tensor] = []
    pending_labels: list[np.ndarray] = []
    pending_images: list[np.ndarray] = []

    def flush() -> None:
        if not pending_feats:
            return
        uri = storage.join(split_uri, artifacts.shard_name(len(shards)))
        feats = torch.cat(pending_feats).to(torch.float16)
        labels = torch.from_numpy(np.concatenate(pending_labels))
        images = torch.from_numpy(np.concatenate(pending_images))
        _upload_tensors({"features": feats, "labels": labels, "images": images}, uri)
        shards.append({"uri": uri, "count": len(feats)})
        pending_feats.clear()
        pending_labels.clear()
        pending_images.clear()

    # disable=None: a bar on a terminal only; in a task log it would repaint into the file.
    progress = tqdm(scenes, desc=f"features {split_uri.rsplit('/', 1)[-1]}", unit="scene", disable=None)
    for index, scene in enumerate(progress):
        chips = read_scene_chips(scene, **recipe.read_kwargs(index))
        if len(chips) == 0:
            continue
        features = encode_chips(model, chips.images, batch_size, views=recipe.views)
        for start in range(0, len(chips), shard_size):
            pending_feats.append(features[start : start + shard_size])
            pending_labels.append(chips.labels[start : start + shard_size])
            pending_images.append(chips.images[start : start + shard_size])
            if sum(len(f) for f in pending_feats) >= shard_size:
                flush()
        windows += [
            {"scene_id": scene.scene_id, "image_uri": scene.image_uri, **w.to_dict()} for w in chips.windows
        ]
        progress.set_postfix(chips=len(windows))
    flush()
    if not windows and not allow_empty:
        raise ValueError(f"no usable chips in {len(scenes)} scenes for {split_uri}: all were mostly nodata")

    manifest = {
        "count": len(windows),
        "shards": shards,
        "windows": windows,
        "feature_shape": list(features.shape[1:]) if windows else None,
        "chip_size": recipe.size,
        "recipe": recipe.identity(),
    }
    storage.write_text(manifest_uri, json.dumps(manifest))
    return manifest


def save_encoder(encoder: ClayEncoder, uri: str) -> None:
    """The encoder weights (fp32) beside its features, so later steps rebuild the same encoder."""
    if not storage.exists(uri):
        _upload_tensors(dict(encoder.state_dict()), uri)


def load_encoder_weights(encoder: ClayEncoder, uri: str) -> ClayEncoder:
    """Load the weights saved by :func:`save_encoder` (strictly)."""
    from training.models.checkpoint import load_encoder

    return load_encoder(encoder, _download_tensors(uri))


def dihedral(x: torch.Tensor, k: int, flip: bool) -> torch.Tensor:
    """Rotate the last two axes by ``k`` quarter turns, then mirror left-right if ``flip``."""
    x = torch.rot90(x, k, dims=(-2, -1))
    return torch.flip(x, dims=(-1,)) if flip else x


class CachedFeatures(Dataset):
    """A split of the cache in memory.

    Items are ``{"features": fp32 (dim, h, w), "pixels": fp32 (4, S, S) normalised, "mask":
    int64 (S, S)}`` (``pixels`` only when the shards hold the chips).

    Args:
        split_uri: the split's folder in the cache.
        augment: draw one of the 8 flips/quarter turns per item and apply it to the feature
            grid, the chip and the mask alike (training only). A cache of several dihedral
            views (``ChipRecipe.views``) draws one of its views instead: the encoder's features
            of the turned chip, with the chip and mask turned to match. Without ``augment``
            such a cache serves view 0 (the upright chip).
        crop: cut a random ``crop`` x ``crop`` window per item, aligned to the patch grid (a
            multiple of ``S / h``); None, or a crop not smaller than the chip, keeps the whole chip.
        seed: seed of the augmentation draws.
        band_jitter: with ``augment``, scale each band of an item's chip by a gain drawn from
            ``U(1 - band_jitter, 1 + band_jitter)`` (before normalisation): acquisitions differ
            in sun angle and phenology, and a few training scenes show only a few of them.
            The cached features stay those of the chip as acquired. 0 turns it off.
        brightness_jitter: with ``augment``, also scale all bands of an item's chip by one common
            gain drawn from ``U(1 - brightness_jitter, 1 + brightness_jitter)``: exposure and sun
            elevation change overall brightness but keep band ratios (NDVI). 0 turns it off
            (the baseline's setting: 0.15 measured worse on the served path).
        band_offset: with ``augment``, also shift each band of an item's chip by an offset drawn
            from ``U(-band_offset, band_offset)`` digital numbers (haze, path radiance and another
            sensor's calibration add to the signal as well as scale it). 0 turns it off.
        pixel_noise: with ``augment``, add independent per-pixel Gaussian noise to an item's
            chip, its std (digital numbers) drawn from ``U(0, pixel_noise)`` per item: sensors
            differ in noise, and a head that trusts single pixels labels a noisy uniform field
            salt-and-pepper. The cached features stay those of the chip as acquired. 0 = off.
    """

    def __init__(
        self,
        split_uri: str,
        augment: bool = False,
        crop: int | None = None,
        seed: int = 0,
        band_jitter: float = 0.0,
        brightness_jitter: float = 0.0,
        band_offset: float = 0.0,
        pixel_noise: float = 0.0,
    ):
        manifest = json.loads(storage.read_text(storage.join(split_uri, artifacts.FEATURE_MANIFEST_NAME)))
        parts = [_download_tensors(shard["uri"]) for shard in manifest["shards"]]
        self.features = torch.cat([p["features"] for p in parts])  # (N, [V,] dim, h, w) fp16
        #: Dihedral views encoded per chip (1: the upright chip only).
        self.views = int(self.features.shape[1]) if self.features.ndim == 5 else 1
        self.labels = torch.cat([p["labels"] for p in parts])  # (N, S, S) uint8
        has_images = bool(parts) and all("images" in p for p in parts)
        self.images = torch.cat([p["images"] for p in parts]) if has_images else None  # (N, 4, S, S) uint8
        self.windows: list[dict] = manifest["windows"]
        if len(self.features) != manifest["count"]:
            raise ValueError(
                f"cache at {split_uri} is incomplete: {len(self.features)} of {manifest['count']} chips"
            )
        if not 0.0 <= band_jitter < 1.0:
            raise ValueError(f"band_jitter must be in [0, 1), got {band_jitter}")
        if not 0.0 <= brightness_jitter < 1.0:
            raise ValueError(f"brightness_jitter must be in [0, 1), got {brightness_jitter}")
        self.augment, self.crop, self.band_jitter = augment, crop, float(band_jitter)
        self.brightness_jitter = float(brightness_jitter)
        if band_offset < 0:
            raise ValueError(f"band_offset must be >= 0, got {band_offset}")
        self.band_offset = float(band_offset)
        if pixel_noise < 0:
            raise ValueError(f"pixel_noise must be >= 0, got {pixel_noise}")
        self.pixel_noise = float(pixel_noise)
        self.generator = torch.Generator().manual_seed(seed)
        if crop is not None and len(self.features):
            size, grid = self.labels.shape[-1], self.features.shape[-1]  # the last axis in every layout
            patch = size // grid
            if crop <= 0 or crop % patch:
                raise ValueError(f"crop {crop} must be a positive multiple of the patch size {patch}")
            # A crop as large as the chip (or larger) keeps the whole chip.
        from core.naip import NAIP_MEANS, NAIP_STDS

        self._mean = torch.tensor(NAIP_MEANS, dtype=torch.float32).view(-1, 1, 1)
        self._std = torch.tensor(NAIP_STDS, dtype=torch.float32).view(-1, 1, 1)

    def __len__(self) -> int:
        return len(self.features)

    def pixels(self, index: int | slice) -> torch.Tensor:
        """Normalised float32 chips (as ``naip.normalize``) of ``index``."""
        if self.images is None:
            raise ValueError("this cache holds no chips (written before format 2); rebuild it")
        return (self.images[index].float() - self._mean) / self._std

    def _radiometry(self, pixels: torch.Tensor) -> torch.Tensor:
        """Another acquisition of a normalised chip: band gains and offsets, then sensor noise, on
        digital numbers clipped to 0..255 as a uint8 sensor saturates (an unclipped dark pixel
        could go negative, and NDVI's denominator with it)."""
        if not (self.band_jitter or self.brightness_jitter or self.band_offset or self.pixel_noise):
            return pixels
        bands = pixels.shape[0]
        gain, offset = torch.ones(bands, 1, 1), torch.zeros(bands, 1, 1)
        if self.band_jitter:
            draw = torch.rand(bands, 1, 1, generator=self.generator)
            gain = gain * (1.0 + self.band_jitter * (2.0 * draw - 1.0))
        if self.brightness_jitter:
            draw = torch.rand(1, generator=self.generator)
            gain = gain * (1.0 + self.brightness_jitter * (2.0 * draw - 1.0))
        if self.band_offset:
            draw = torch.rand(bands, 1, 1, generator=self.generator)
            offset = self.band_offset * (2.0 * draw - 1.0)
        dn = gain * (pixels * self._std + self._mean) + offset
        if self.pixel_noise:
            sigma = self.pixel_noise * float(torch.rand(1, generator=self.generator))
            dn = dn + torch.randn(pixels.shape, generator=self.generator) * sigma
        return (dn.clamp(0.0, 255.0) - self._mean) / self._std

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        mask = self.labels[index].long()
        pixels = self.pixels(index) if self.images is not None else None
        turned = False  # the dihedral draw done here already (a cache of views)
        if self.views > 1:
            view = int(torch.randint(0, self.views, (1,), generator=self.generator)) if self.augment else 0
            k, flip = view_transform(view)
            features = self.features[index, view].float()  # the encoder's grid of the turned chip
            mask = dihedral(mask, k, flip)
            pixels = dihedral(pixels, k, flip) if pixels is not None else None
            turned = True
        else:
            features = self.features[index].float()
        if self.crop is not None and self.crop < mask.shape[-1]:
            patch = mask.shape[-1] // features.shape[-1]
            cells = self.crop // patch
            top, left = (
                int(v)
                for v in torch.randint(0, features.shape[-1] - cells + 1, (2,), generator=self.generator)
            )
            features = features[:, top : top + cells, left : left + cells]
            rows, cols = (
                slice(top * patch, top * patch + self.crop),
                slice(left * patch, left * patch + self.crop),
            )
            mask = mask[rows, cols]
            pixels = pixels[:, rows, cols] if pixels is not None else None
        if self.augment and not turned:
            k = int(torch.randint(0, 4, (1,), generator=self.generator))
            flip = bool(torch.randint(0, 2, (1,), generator=self.generator))
            features, mask = dihedral(features, k, flip), dihedral(mask, k, flip)
            pixels = dihedral(pixels, k, flip) if pixels is not None else None
        if self.augment and pixels is not None:
            pixels = self._radiometry(pixels)
        item = {"features": features.contiguous(), "mask": mask.contiguous()}
        if pixels is not None:
            item["pixels"] = pixels.contiguous()
        return item

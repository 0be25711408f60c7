"""Dataset statistics: per-band moments, percentiles and histograms, and class frequencies.

Pixels are uint8, so the accumulator keeps an exact 256-bin count per band. Mean, std and
percentiles come from those counts exactly, however many scenes stream through, and the coarse
histogram (``bins`` equal bins over 0..256, edges written out) is a sum of them. The drift
monitor compares new imagery against this reference with PSI / Jensen-Shannon.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from rasterio.windows import Window

from core import storage
from core.classes import CLASS_NAMES, NUM_CLASSES, remap_lc
from core.limits import DEFAULT_MAX_PIXELS
from core.naip import NAIP_BANDS, open_naip, open_raster

PERCENTILES: tuple[float, ...] = (2.0, 50.0, 98.0)
DEFAULT_BINS = 32
STATS_VERSION = 1


@dataclass
class BandStats:
    """Statistics of one band over valid pixels. ``histogram`` is normalised to sum to 1."""

    name: str
    count: int
    mean: float
    std: float
    min: int
    max: int
    percentiles: dict[str, float]
    histogram: list[float]


@dataclass
class DatasetStats:
    """JSON-serialisable dataset statistics; ``bin_edges`` has ``len(histogram) + 1`` entries."""

    bands: list[BandStats]
    bin_edges: list[float]
    class_names: list[str]
    class_counts: list[int]
    class_fractions: list[float]
    n_scenes: int = 0
    n_chips: int = 0
    version: int = STATS_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    def band(self, name: str) -> BandStats:
        for b in self.bands:
            if b.name == name:
                return b
        raise KeyError(f"no band {name!r}; bands are {[b.name for b in self.bands]}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DatasetStats:
        values = dict(data)
        values["bands"] = [BandStats(**b) for b in values["bands"]]
        return cls(**values)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def save(self, uri: str) -> None:
        storage.write_text(uri, self.to_json())

    @classmethod
    def load(cls, uri: str) -> DatasetStats:
        return cls.from_dict(json.loads(storage.read_text(uri)))


class StatsAccumulator:
    """Streaming accumulator: feed images/labels with :meth:`update`, then call :meth:`result`.

    Args:
        band_names: names of the image bands, in order.
        bins: number of equal histogram bins over 0..256 (must divide 256).
        num_classes: number of label classes (ids ``0..num_classes-1``).
        class_names: names for the classes.
    """

    def __init__(
        self,
        band_names: Sequence[str] = NAIP_BANDS,
        bins: int = DEFAULT_BINS,
        num_classes: int = NUM_CLASSES,
        class_names: Sequence[str] = CLASS_NAMES,
    ) -> None:
        if bins <= 0 or 256 % bins:
            raise ValueError(f"bins must divide 256 (e.g. 16, 32, 64), got {bins}")
        self.band_names = tuple(band_names)
        self.bins = bins
        self.num_classes = num_classes
        self.class_names = tuple(class_names)
        self.value_counts = np.zeros((len(self.band_names), 256), dtype=np.int64)
        self.class_counts = np.zeros(num_classes, dtype=np.int64)
        self.n_scenes = 0
        self.n_chips = 0

    def update(
        self,
        image: np.ndarray | None = None,
        valid: np.ndarray | None = None,
        labels: np.ndarray | None = None,
    ) -> None:
        """Add uint8 ``image`` ``(B, H, W)`` or ``(N, B, H, W)``, its bool ``valid`` mask
        (``(H, W)``/``(N, H, W)``, None = all valid) and/or uint8 class-id ``labels``."""
        if image is not None:
            img = np.asarray(image)
            if img.dtype != np.uint8:
                raise ValueError(f"stats expect uint8 imagery, got {img.dtype}")
            if img.ndim == 3:
                img = img[None]
                valid = None if valid is None else np.asarray(valid)[None]
            if img.ndim != 4 or img.shape[1] != len(self.band_names):
                raise ValueError(
                    f"expected image (B, H, W) or (N, B, H, W) with B={len(self.band_names)}, got {image.shape}"
                )
            for b in range(img.shape[1]):
                band = img[:, b]
                values = band if valid is None else band[np.asarray(valid, dtype=bool)]
                self.value_counts[b] += np.bincount(values.ravel(), minlength=256)
            self.n_chips += img.shape[0]
        if labels is not None:
            lab = np.asarray(labels).ravel()
            if lab.size and int(lab.max()) >= self.num_classes:
                raise ValueError(f"label ids must be < {self.num_classes}, found {int(lab.max())}")
            self.class_counts += np.bincount(lab, minlength=self.num_classes)[: self.num_classes]

    def merge(self, other: StatsAccumulator) -> None:
        """Fold another accumulator (e.g. from a worker process) into this one."""
        self.value_counts += other.value_counts
        self.class_counts += other.class_counts
        self.n_scenes += other.n_scenes
        self.n_chips += other.n_chips

    def result(self) -> DatasetStats:
        values = np.arange(256, dtype=np.float64)
        edges = np.linspace(0.0, 256.0, self.bins + 1)
        bands = []
        for name, counts in zip(self.band_names, self.value_counts, strict=True):
            n = int(counts.sum())
            if n:
                mean = float((counts * values).sum() / n)
                var = float((counts * (values - mean) ** 2).sum() / n)
                nonzero = np.flatnonzero(counts)
                cdf = np.cumsum(counts)
                # Inverted-CDF percentile: the smallest value whose CDF reaches q.
                pct = {f"p{q:g}": float(np.searchsorted(cdf, q / 100.0 * n)) for q in PERCENTILES}
                coarse = counts.reshape(self.bins, -1).sum(axis=1) / n
                bands.append(
                    BandStats(
                        name, n, mean, var**0.5, int(nonzero[0]), int(nonzero[-1]), pct, coarse.tolist()
                    )
                )
            else:
                nan = float("nan")
                pct = {f"p{q:g}": nan for q in PERCENTILES}
                bands.append(BandStats(name, 0, nan, nan, 0, 0, pct, [0.0] * self.bins))
        total = int(self.class_counts.sum())
        fractions = (self.class_counts / total).tolist() if total else [0.0] * self.num_classes
        return DatasetStats(
            bands=bands,
            bin_edges=edges.tolist(),
            class_names=list(self.class_names),
            class_counts=[int(c) for c in self.class_counts],
            class_fractions=fractions,
            n_scenes=self.n_scenes,
            n_chips=self.n_chips,
        )


def compute_stats(
    scenes: Iterable[Any],
    bins: int = DEFAULT_BINS,
    block: int = 1024,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> DatasetStats:
    """Statistics over whole scenes, read in ``block``-pixel windows to bound memory.

    ``scenes`` yields :class:`~training.data.chesapeake.SceneRecord` (image + label) or image URIs.
    """
    acc = StatsAccumulator(bins=bins)
    for scene in scenes:
        image_uri = scene if isinstance(scene, str) else scene.image_uri
        label_uri = None if isinstance(scene, str) else scene.label_uri
        with ExitStack() as stack:
            naip = stack.enter_context(open_naip(image_uri, max_pixels=max_pixels))
            label_ds = open_raster(label_uri, stack) if label_uri is not None else None
            h, w = naip.shape
            for r in range(0, h, block):
                for c in range(0, w, block):
                    win = Window(c, r, min(block, w - c), min(block, h - r))
                    labels = None if label_ds is None else remap_lc(label_ds.read(1, window=win))
                    acc.update(naip.read(window=win), naip.valid_mask(window=win), labels)
                    acc.n_chips -= 1  # blocks are not chips
        acc.n_scenes += 1
    return acc.result()

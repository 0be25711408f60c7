"""Seam-free sliding-window prediction of whole scenes and of in-memory images.

How a scene is predicted (:func:`predict_scene`):

- **Windows.** Square ``chip_size`` chips, their origins multiples of the model's patch size
  (8), so every chip's patch grid lines up with the scene's. Per axis the fewest chips that keep
  at least ``overlap`` pixels between neighbours are spread evenly over the scene; the last one
  ends at the scene edge (no wasted chip of padding). Where that would cost more than
  ``MAX_TILING_COST`` x the non-overlapping chip count (small scenes), the overlap narrows, down
  to one patch, to save a row or column of chips (:func:`plan_tiling`). A side shorter than a chip, or not a
  multiple of 8, is reflection-padded and the padding cropped afterwards.
- **Blending.** Each chip's softmax is weighted by a separable cosine (Hann-half) ramp across
  each overlap it shares with a neighbour and 1 elsewhere; on the scene border there is no ramp.
  Over an overlap the two ramps sum to one, so probabilities cross-fade rather than switch at a
  seam, and every pixel's estimate leans on the chip that sees it with the most context.
- **Bounded memory (streaming, as raster-vision's ``predict_scene_ss``).** Chips are predicted
  one chip-row at a time in batches. Probabilities accumulate in a buffer of
  ``K x chip_size x width`` floats; once a chip row is done, the rows no later chip touches are
  final: they are turned into class ids, confidence and summary statistics, and the buffer
  slides down. The full-scene state is the uint8 class and confidence rasters only.
- **Nodata.** Pixels the input marks as nodata get class ``NODATA_CLASS_ID`` and confidence 0;
  chips without a single valid pixel are not run at all.

Per-scene sums for monitoring (class counts, max-softmax, low-confidence count, entropy, band
histograms) are accumulated in the same pass over valid pixels, so the monitor never re-reads
the scene.

Nothing here imports torch: the model is any :class:`inference.runtime.Predictor`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from affine import Affine
from rasterio.windows import Window

from core.classes import CLASS_NAMES, NODATA_CLASS_ID
from core.naip import NAIP_BANDS, normalize, open_naip
from inference.runtime import Predictor
from inference.settings import DEFAULTS

__all__ = [
    "CONFIDENCE_SCALE",
    "PATCH_SIZE",
    "Block",
    "InvalidImageError",
    "ScenePrediction",
    "TilingPlan",
    "axis_offsets",
    "plan_blocks",
    "plan_tiling",
    "predict_array",
    "predict_block",
    "predict_scene",
]

#: ``confidence`` rasters are uint8: max softmax = value * CONFIDENCE_SCALE; 0 means nodata
#: (a real max softmax is at least 1/K, i.e. >= 36 for K = 7).
CONFIDENCE_SCALE = 1.0 / 255.0
#: Clay's patch side: chip origins are multiples of it, so every chip's patch grid lines up.
PATCH_SIZE = 8
_MIN_WEIGHT = 1e-4
#: Fraction of each overlap, at the chip edge, that gets (almost) no weight: the pixels whose
#: receptive field the chip border cuts. The sin² cross-fade spans the middle of the overlap.
BLEND_MARGIN = 0.25


class InvalidImageError(ValueError):
    """An image cannot be decoded or is not 4-band uint8 NAIP (the sync API answers it with a 400)."""


# --- tiling ------------------------------------------------------------------------------------


def _round_up(n: int, m: int) -> int:
    return -(-n // m) * m


def axis_offsets(length: int, chip_size: int, overlap: int, align: int = PATCH_SIZE) -> list[int]:
    """Chip origins along one axis of ``length`` pixels (padded to ``align``, at least a chip).

    The fewest chips whose neighbours overlap by at least ``overlap`` pixels, spread evenly, each
    origin a multiple of ``align``; the last chip ends at the padded length.
    """
    if length < 1:
        raise ValueError(f"axis length must be >= 1, got {length}")
    if chip_size < align or chip_size % align:
        raise ValueError(
            f"chip_size must be a positive multiple of {align} (the patch size), got {chip_size}"
        )
    if not 0 <= overlap < chip_size:
        raise ValueError(f"overlap must be in [0, chip_size={chip_size}), got {overlap}")
    padded = max(chip_size, _round_up(length, align))
    span = padded - chip_size
    if span == 0:
        return [0]
    stride = max(align, (chip_size - overlap) // align * align)
    n = math.ceil(span / stride) + 1
    step = span / (n - 1)
    offsets = [int(i * step) // align * align for i in range(n - 1)] + [span]
    return offsets


@dataclass(frozen=True)
class TilingPlan:
    """Where the chips of an ``height x width`` scene go, and what that costs.

    ``cost_ratio`` is chips run / chips of a non-overlapping tiling (``ceil(H/S) * ceil(W/S)``,
    edge chips padded); ``area_ratio`` is chip pixels run / scene pixels.
    """

    height: int
    width: int
    chip_size: int
    overlap: int
    ys: tuple[int, ...]
    xs: tuple[int, ...]

    @property
    def padded_shape(self) -> tuple[int, int]:
        return self.ys[-1] + self.chip_size, self.xs[-1] + self.chip_size

    @property
    def n_chips(self) -> int:
        return len(self.ys) * len(self.xs)

    @property
    def baseline_chips(self) -> int:
        return math.ceil(self.height / self.chip_size) * math.ceil(self.width / self.chip_size)

    @property
    def cost_ratio(self) -> float:
        return self.n_chips / self.baseline_chips

    @property
    def area_ratio(self) -> float:
        return self.n_chips * self.chip_size**2 / (self.height * self.width)


#: The most a scene's chips may cost relative to its non-overlapping chip count before
#: :func:`plan_tiling` narrows the overlap (halving it, never below one patch) to need fewer chips.
#: Narrow seams cost accuracy near chip borders (tests/inference/test_tiling_cost.py measures
#: it), so only scenes above this ratio narrow: at 256 px chips that is scenes of about 1 km².
MAX_TILING_COST = 1.3


def plan_tiling(
    height: int,
    width: int,
    chip_size: int = DEFAULTS.chip_size,
    overlap: int = DEFAULTS.overlap,
    align: int = PATCH_SIZE,
    max_cost_ratio: float | None = MAX_TILING_COST,
) -> TilingPlan:
    """The sliding-window plan :func:`predict_scene` uses for a scene of this size.

    Adaptive overlap: the fewest chips that keep ``overlap`` pixels between neighbours, unless
    that costs more than ``max_cost_ratio`` x the non-overlapping chip count; then the overlap
    is halved (down to one patch, ``align``) while that saves chips, and the plan with the
    widest overlap at the lowest chip count wins. A 1000 px side, for example, takes 4 chips of
    256 px 8 px apart instead of 5 chips 32 px apart (16 chips instead of 25 for 1 km² at 1 m).
    Chips are spread evenly, so the real overlap is often wider than the one asked for.
    ``max_cost_ratio=None`` keeps ``overlap`` whatever it costs.
    """

    def plan(o: int) -> TilingPlan:
        ys = tuple(axis_offsets(height, chip_size, o, align))
        xs = tuple(axis_offsets(width, chip_size, o, align))
        return TilingPlan(height, width, chip_size, o, ys, xs)

    best = plan(overlap)
    current = overlap
    while max_cost_ratio is not None and best.cost_ratio > max_cost_ratio and current > align:
        current = max(align, current // 2 // align * align)
        candidate = plan(current)
        if candidate.n_chips < best.n_chips:
            best = candidate
    return best


@dataclass(frozen=True)
class Block:
    """A rectangle of a scene's chip grid that one infer call predicts.

    ``chip_rows``/``chip_cols`` are the ``[start, stop)`` chip indices whose "own" pixels the
    block outputs: the rows from a chip row's origin to the next one's (the pixels the
    whole-scene pass finalises after that chip row), likewise for columns. ``window`` is that
    core in scene pixels, ``(row_off, col_off, height, width)``; the cores of a scene's blocks
    partition it. To blend its border pixels exactly as the whole-scene pass does, a block also
    runs the chips before its core that still cover it (its halo, one overlap wide), so it reads
    ``read_window``.
    """

    index: int
    chip_rows: tuple[int, int]
    chip_cols: tuple[int, int]
    window: tuple[int, int, int, int]

    def chips(self, plan: TilingPlan) -> int:
        """Chips this block runs (halo included): its cost, before chips skipped as all-nodata."""
        r0 = _first_covering(plan.ys, self.chip_rows[0], plan.chip_size)
        c0 = _first_covering(plan.xs, self.chip_cols[0], plan.chip_size)
        return (self.chip_rows[1] - r0) * (self.chip_cols[1] - c0)


def _core_edges(offsets: Sequence[int], length: int) -> list[int]:
    """Pixel edges of the chips' own spans along an axis: each origin, then the axis end."""
    return [*offsets[1:], length]


def plan_blocks(plan: TilingPlan, block_chips: int) -> list[Block]:
    """Split ``plan``'s chip grid into blocks of at most ``block_chips`` x ``block_chips`` chips.

    Row-major, index 0 at the top left; a scene no larger than one block is one block.
    """
    if block_chips < 1:
        raise ValueError(f"block_chips must be >= 1, got {block_chips}")
    ends_y, ends_x = _core_edges(plan.ys, plan.height), _core_edges(plan.xs, plan.width)
    blocks = []
    for r in range(0, len(plan.ys), block_chips):
        r1 = min(r + block_chips, len(plan.ys))
        y0 = 0 if r == 0 else plan.ys[r]
        for c in range(0, len(plan.xs), block_chips):
            c1 = min(c + block_chips, len(plan.xs))
            x0 = 0 if c == 0 else plan.xs[c]
            window = (y0, x0, ends_y[r1 - 1] - y0, ends_x[c1 - 1] - x0)
            blocks.append(Block(len(blocks), (r, r1), (c, c1), window))
    return blocks


def whole_scene(plan: TilingPlan) -> Block:
    """The one block that is the whole scene (what :func:`predict_scene` predicts)."""
    return Block(0, (0, len(plan.ys)), (0, len(plan.xs)), (0, 0, plan.height, plan.width))


def _ramp(dist: np.ndarray, overlap: int, margin: float) -> np.ndarray:
    """Weight by distance from a chip edge shared with a neighbour over ``overlap`` pixels.

    ~0 over the outer ``margin * overlap`` pixels (where the chip lacks context), a sin² rise over
    the middle, 1 beyond. Symmetric about the overlap's centre, so the two neighbours' weights
    sum to one across the overlap.
    """
    lo = margin * overlap
    width = max(overlap - 2.0 * lo, 1e-6)
    t = np.clip((dist - lo) / width, 0.0, 1.0)
    return np.sin(0.5 * np.pi * t) ** 2


def _ramps(offsets: Sequence[int], chip_size: int, margin: float = BLEND_MARGIN) -> list[np.ndarray]:
    """Per chip along one axis: a 1-D weight, ramped over each overlap with a neighbour."""
    out = []
    d = np.arange(chip_size, dtype=np.float64) + 0.5  # distance from the leading edge
    for i, o in enumerate(offsets):
        w = np.ones(chip_size, dtype=np.float64)
        if i > 0:
            lead = offsets[i - 1] + chip_size - o
            if lead > 0:
                w *= _ramp(d, lead, margin)
        if i + 1 < len(offsets):
            trail = o + chip_size - offsets[i + 1]
            if trail > 0:
                w *= _ramp(chip_size - d, trail, margin)
        out.append(np.maximum(w, _MIN_WEIGHT).astype(np.float32))
    return out


# --- result ------------------------------------------------------------------------------------


@dataclass
class ScenePrediction:
    """A predicted scene plus the per-scene sums the monitor needs.

    Attributes:
        classes: uint8 ``(H, W)`` model class ids; ``NODATA_CLASS_ID`` where the input is nodata.
        confidence: uint8 ``(H, W)`` max softmax scaled by 255 (``* CONFIDENCE_SCALE`` for the
            probability); 0 where the input is nodata.
        valid: bool ``(H, W)``, True where the input holds data.
        crs, transform: the input's georeference (None for in-memory arrays).
        class_counts: int64 ``(K,)`` predicted pixels per class over valid pixels.
        confidence_sum: sum of max softmax over valid pixels (float64, unquantised).
        low_confidence_count: valid pixels with max softmax < ``low_confidence_threshold``.
        entropy_sum: sum over valid pixels of the softmax entropy normalised by ``ln K`` (0..1).
        band_counts: int64 ``(4, 256)`` histogram of each input band's uint8 values over valid
            pixels (exact, so any binning and moments derive from it).
    """

    classes: np.ndarray
    confidence: np.ndarray
    valid: np.ndarray
    class_counts: np.ndarray
    confidence_sum: float
    low_confidence_count: int
    low_confidence_threshold: float
    entropy_sum: float
    band_counts: np.ndarray
    crs: Any = None
    transform: Any = None
    profile: dict[str, Any] = field(default_factory=dict)
    source_uri: str | None = None
    band_names: tuple[str, ...] = NAIP_BANDS
    class_names: tuple[str, ...] = CLASS_NAMES
    chip_size: int = DEFAULTS.chip_size
    overlap: int = DEFAULTS.overlap
    n_chips: int = 0
    n_chips_skipped: int = 0
    seconds: float = 0.0
    #: The scene pixels these arrays cover, ``(row_off, col_off, height, width)``; a block's
    #: core window, or the whole scene.
    window: tuple[int, int, int, int] | None = None

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.classes.shape)  # type: ignore[return-value]

    @property
    def num_classes(self) -> int:
        return len(self.class_counts)

    @property
    def n_valid(self) -> int:
        return int(self.class_counts.sum())

    @property
    def pixel_area_m2(self) -> float:
        """Ground area of one pixel (1.0 when there is no transform: NAIP's 1 m GSD)."""
        if self.transform is None:
            return 1.0
        t = self.transform
        return float(abs(t.a * t.e - t.b * t.d))

    @property
    def valid_area_km2(self) -> float:
        return self.n_valid * self.pixel_area_m2 / 1e6

    @property
    def class_fractions(self) -> np.ndarray:
        n = self.n_valid
        return self.class_counts / n if n else np.zeros(self.num_classes)

    @property
    def mean_max_softmax(self) -> float:
        n = self.n_valid
        return self.confidence_sum / n if n else float("nan")

    @property
    def low_confidence_share(self) -> float:
        n = self.n_valid
        return self.low_confidence_count / n if n else float("nan")

    @property
    def mean_entropy(self) -> float:
        n = self.n_valid
        return self.entropy_sum / n if n else float("nan")

    def band_mean_std(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-band mean and (population) std of the valid input pixels."""
        values = np.arange(256, dtype=np.float64)
        n = self.band_counts.sum(axis=1).astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = (self.band_counts * values).sum(axis=1) / n
            var = (self.band_counts * (values[None, :] - mean[:, None]) ** 2).sum(axis=1) / n
        return mean, np.sqrt(var)

    def confidence_float(self) -> np.ndarray:
        """Max softmax as float32 ``(H, W)`` (0 on nodata)."""
        return self.confidence.astype(np.float32) * np.float32(CONFIDENCE_SCALE)


# --- the engine ----------------------------------------------------------------------------------

WindowReader = Callable[[int, int, int, int], tuple[np.ndarray, np.ndarray]]


def _pad_to(arr: np.ndarray, rows: int, cols: int, mode: str) -> np.ndarray:
    """Pad the last two axes at the bottom/right to ``(rows, cols)``."""
    pr, pc = rows - arr.shape[-2], cols - arr.shape[-1]
    if pr == 0 and pc == 0:
        return arr
    widths = [(0, 0)] * (arr.ndim - 2) + [(0, pr), (0, pc)]
    if mode == "constant":
        return np.pad(arr, widths, mode="constant")
    return np.pad(arr, widths, mode="reflect" if min(arr.shape[-2:]) > 1 else "edge")


def _batches(items: list[int], size: int) -> Iterator[list[int]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _first_covering(offsets: Sequence[int], index: int, chip_size: int) -> int:
    """The first chip along an axis that still covers pixels from ``offsets[index]`` on."""
    k = index
    while k > 0 and offsets[k - 1] + chip_size > offsets[index]:
        k -= 1
    return k


@dataclass
class _BlockOutputs:
    """A block's core-window rasters and running summaries, filled band of final rows by band."""

    classes: np.ndarray  # (h, w) uint8 class ids, NODATA_CLASS_ID outside the valid pixels
    confidence: np.ndarray  # (h, w) uint8 max softmax x 255, 0 outside the valid pixels
    valid: np.ndarray  # (h, w) bool
    class_counts: np.ndarray  # (K,)
    band_counts: np.ndarray  # (bands, 256) histogram of the valid input pixels
    confidence_sum: float = 0.0
    entropy_sum: float = 0.0
    low_count: int = 0

    @classmethod
    def empty(cls, height: int, width: int, num_classes: int) -> _BlockOutputs:
        return cls(
            classes=np.full((height, width), NODATA_CLASS_ID, dtype=np.uint8),
            confidence=np.zeros((height, width), dtype=np.uint8),
            valid=np.zeros((height, width), dtype=bool),
            class_counts=np.zeros(num_classes, dtype=np.int64),
            band_counts=np.zeros((len(NAIP_BANDS), 256), dtype=np.int64),
        )

    def add_rows(
        self,
        p: np.ndarray,
        v: np.ndarray,
        image: np.ndarray,
        out_rows: slice,
        log_k: float,
        low_confidence_threshold: float,
    ) -> None:
        """Keep final rows: ``p`` (K, r, w) blended probabilities, ``v`` (r, w) their valid
        pixels, ``image`` (bands, r, w) their input, ``out_rows`` where they go in the core."""
        k = p.shape[0]
        cls = p.argmax(axis=0).astype(np.uint8)  # (r, w)
        top = p.max(axis=0)  # (r, w)
        ent = np.zeros(top.shape, dtype=np.float32)
        for c in range(k):
            pc = p[c]
            ent -= pc * np.log(np.maximum(pc, 1e-12))
        ent /= np.float32(log_k)
        self.classes[out_rows][v] = cls[v]
        self.confidence[out_rows][v] = np.clip(np.rint(top[v] * 255.0), 1, 255).astype(np.uint8)
        self.valid[out_rows] = v
        self.class_counts += np.bincount(cls[v], minlength=k)[:k]
        self.confidence_sum += float(top[v].sum(dtype=np.float64))
        self.entropy_sum += float(ent[v].sum(dtype=np.float64))
        self.low_count += int((top[v] < low_confidence_threshold).sum())
        for b in range(self.band_counts.shape[0]):
            self.band_counts[b] += np.bincount(image[b][v], minlength=256)


def _blend_chip_row(
    predictor: Predictor,
    strip: np.ndarray,
    chip_x: dict[int, int],
    todo: list[int],
    weights: tuple[np.ndarray, list[np.ndarray]],
    acc: np.ndarray,
    wsum: np.ndarray,
    batch_size: int,
) -> None:
    """Predict one chip row's chips ``todo`` (column indices; ``chip_x`` their buffer columns) in
    batches and add their probabilities, weighted by the blend ramps, into ``acc`` / ``wsum``."""
    k, size = acc.shape[0], acc.shape[1]
    row_ramp, col_ramps = weights
    for batch in _batches(todo, batch_size):
        chips = np.stack([strip[:, :, chip_x[j] : chip_x[j] + size] for j in batch])  # (B, 4, S, S)
        probs = predictor.predict_proba(normalize(chips))  # (B, K, S, S)
        if probs.shape != (len(batch), k, size, size):
            raise ValueError(
                f"predictor returned shape {probs.shape}; expected {(len(batch), k, size, size)}"
            )
        for b, j in enumerate(batch):
            x = chip_x[j]
            w2 = row_ramp[:, None] * col_ramps[j][None, :]  # (S, S)
            acc[:, :, x : x + size] += probs[b] * w2
            wsum[:, x : x + size] += w2


def _slide(acc: np.ndarray, wsum: np.ndarray, step: int) -> None:
    """Slide the probability buffer down by ``step`` rows, zeroing the rows that come in."""
    size = wsum.shape[0]
    if step < size:
        acc[:, : size - step] = acc[:, step:]
        wsum[: size - step] = wsum[step:]
    acc[:, size - step :] = 0.0
    wsum[size - step :] = 0.0


def _run(
    predictor: Predictor,
    read: WindowReader,
    plan: TilingPlan,
    block: Block,
    *,
    batch_size: int,
    low_confidence_threshold: float,
) -> ScenePrediction:
    """Predict the pixels of ``block`` (its core window) with the scene's chips that cover them.

    The chips, their blend weights and the order in which they accumulate are those of the
    whole-scene pass, so a block's pixels equal the one-pass result wherever the predictor's
    output does not depend on which chips share its batch.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    start = time.perf_counter()
    k = int(predictor.num_classes)
    size, height, width = plan.chip_size, plan.height, plan.width
    ys, xs = plan.ys, plan.xs
    wy, wx = _ramps(ys, size), _ramps(xs, size)
    (i0, i1), (j0, j1) = block.chip_rows, block.chip_cols
    r0, c0 = _first_covering(ys, i0, size), _first_covering(xs, j0, size)
    core_y0, core_x0, core_h, core_w = block.window
    read_x0 = xs[c0]
    read_x1 = min(xs[j1 - 1] + size, width)
    wb = xs[j1 - 1] + size - read_x0  # buffer width: the block's chips side by side
    lc0, lc1 = core_x0 - read_x0, core_x0 - read_x0 + core_w  # core columns in the buffer

    out = _BlockOutputs.empty(core_h, core_w, k)
    acc = np.zeros((k, size, wb), dtype=np.float32)  # (K, S, Wb): one band of probabilities
    wsum = np.zeros((size, wb), dtype=np.float32)  # (S, Wb)
    n_run = n_skipped = 0
    log_k = math.log(k) if k > 1 else 1.0

    for i in range(r0, i1):
        y = ys[i]
        y_end = min(y + size, height)
        image, valid = read(y, y_end, read_x0, read_x1)  # (4, h, w) uint8, (h, w) bool
        strip = _pad_to(image, size, wb, "reflect")  # (4, S, Wb)
        vstrip = _pad_to(valid, size, wb, "constant")  # (S, Wb)
        local = {j: xs[j] - read_x0 for j in range(c0, j1)}
        todo = [j for j, x in local.items() if vstrip[:, x : x + size].any()]
        n_skipped += len(local) - len(todo)
        _blend_chip_row(predictor, strip, local, todo, (wy[i], wx), acc, wsum, batch_size)
        n_run += len(todo)

        # Rows above the next chip row's origin are final; those in the core are kept.
        step = ys[i + 1] - y if i + 1 < len(ys) else size
        if i >= i0:
            rows = min(y + step, height) - y
            p = acc[:, :rows, lc0:lc1]  # (K, r, w), normalised in place: these rows leave the buffer
            ws = wsum[:rows, lc0:lc1]
            v = valid[:rows, lc0:lc1] & (ws > 0)
            np.divide(p, np.maximum(ws, _MIN_WEIGHT)[None], out=p)
            out_rows = slice(y - core_y0, y - core_y0 + rows)
            out.add_rows(p, v, image[:, :rows, lc0:lc1], out_rows, log_k, low_confidence_threshold)
        _slide(acc, wsum, step)

    return ScenePrediction(
        classes=out.classes,
        confidence=out.confidence,
        valid=out.valid,
        class_counts=out.class_counts,
        confidence_sum=out.confidence_sum,
        low_confidence_count=out.low_count,
        low_confidence_threshold=low_confidence_threshold,
        entropy_sum=out.entropy_sum,
        band_counts=out.band_counts,
        chip_size=size,
        overlap=plan.overlap,
        n_chips=n_run,
        n_chips_skipped=n_skipped,
        seconds=time.perf_counter() - start,
        window=block.window,
    )


# --- public entry points ----------------------------------------------------------------------------


def predict_scene(
    predictor: Predictor,
    image_uri: str,
    *,
    chip_size: int = DEFAULTS.chip_size,
    overlap: int = DEFAULTS.overlap,
    batch_size: int = DEFAULTS.batch_size,
    max_pixels: int | None = None,
    low_confidence_threshold: float = DEFAULTS.low_confidence_threshold,
) -> ScenePrediction:
    """Predict a whole NAIP scene (local path, ``file://`` or ``s3://``) with a blended sliding window.

    Args:
        predictor: a loaded model (:func:`inference.runtime.load_predictor`).
        image_uri: the 4-band uint8 GeoTIFF; validated with ``open_naip`` (raises
            ``NaipValidationError`` subclasses with a ``reason`` code).
        chip_size: model input side in pixels (a multiple of the patch size, 8).
        overlap: minimum overlap between neighbouring chips, blended with cosine ramps.
        batch_size: chips per model call.
        max_pixels: refuse larger scenes; None means the chain's default.
        low_confidence_threshold: max softmax below this counts as low confidence.
    """
    return predict_block(
        predictor,
        image_uri,
        block_chips=None,
        chip_size=chip_size,
        overlap=overlap,
        batch_size=batch_size,
        max_pixels=max_pixels,
        low_confidence_threshold=low_confidence_threshold,
    )


def predict_block(
    predictor: Predictor,
    image_uri: str,
    block_index: int = 0,
    *,
    block_chips: int | None,
    chip_size: int = DEFAULTS.chip_size,
    overlap: int = DEFAULTS.overlap,
    batch_size: int = DEFAULTS.batch_size,
    max_pixels: int | None = None,
    low_confidence_threshold: float = DEFAULTS.low_confidence_threshold,
    expected_window: Sequence[int] | None = None,
) -> ScenePrediction:
    """Predict block ``block_index`` of :func:`plan_blocks` (``block_chips`` chips a side; None:
    the whole scene) of a NAIP scene; the result covers the block's core window.

    ``expected_window``: the window the caller planned for this block (the manifest's); a
    mismatch (other settings, another model's patch size) raises rather than writing pixels
    to the wrong place. Other arguments as :func:`predict_scene`.
    """
    limit = DEFAULTS.max_pixels if max_pixels is None else max_pixels
    with open_naip(image_uri, max_pixels=limit) as scene:
        height, width = scene.shape
        align = int(getattr(predictor, "patch_size", PATCH_SIZE))
        plan = plan_tiling(height, width, chip_size, overlap, align)
        blocks = [whole_scene(plan)] if block_chips is None else plan_blocks(plan, block_chips)
        if not 0 <= block_index < len(blocks):
            raise ValueError(f"block {block_index} is not one of this scene's {len(blocks)} blocks")
        block = blocks[block_index]
        if expected_window is not None and tuple(expected_window) != block.window:
            raise ValueError(
                f"block {block_index} of {image_uri} is window {block.window} with these settings, "
                f"not the planned {tuple(expected_window)}"
            )

        def read(y0: int, y1: int, x0: int, x1: int) -> tuple[np.ndarray, np.ndarray]:
            window = Window(x0, y0, x1 - x0, y1 - y0)
            return scene.read(window), scene.valid_mask(window)

        pred = _run(
            predictor,
            read,
            plan,
            block,
            batch_size=batch_size,
            low_confidence_threshold=low_confidence_threshold,
        )
        pred.crs, pred.profile = scene.crs, scene.profile
        row_off, col_off, _, _ = block.window
        pred.transform = scene.transform @ Affine.translation(col_off, row_off)
        pred.source_uri = str(image_uri)
    return pred


def predict_array(
    predictor: Predictor,
    image: np.ndarray,
    valid: np.ndarray | None = None,
    *,
    chip_size: int = DEFAULTS.chip_size,
    overlap: int = DEFAULTS.overlap,
    batch_size: int = DEFAULTS.batch_size,
    low_confidence_threshold: float = DEFAULTS.low_confidence_threshold,
) -> ScenePrediction:
    """Predict an in-memory uint8 ``(4, H, W)`` image; ``valid`` defaults to "any band non-zero"."""
    image = _check_image(image)
    if valid is None:
        valid = image.any(axis=0)
    elif valid.shape != image.shape[1:]:
        raise InvalidImageError(f"valid mask shape {valid.shape} does not match image {image.shape[1:]}")
    valid = np.asarray(valid, dtype=bool)
    _, height, width = image.shape

    def read(y0: int, y1: int, x0: int, x1: int) -> tuple[np.ndarray, np.ndarray]:
        return image[:, y0:y1, x0:x1], valid[y0:y1, x0:x1]

    plan = plan_tiling(height, width, chip_size, overlap, int(getattr(predictor, "patch_size", PATCH_SIZE)))
    return _run(
        predictor,
        read,
        plan,
        whole_scene(plan),
        batch_size=batch_size,
        low_confidence_threshold=low_confidence_threshold,
    )


def _check_image(image: np.ndarray) -> np.ndarray:
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[0] != len(NAIP_BANDS) and arr.shape[-1] == len(NAIP_BANDS):
        arr = np.moveaxis(arr, -1, 0)  # (H, W, 4) -> (4, H, W)
    if arr.ndim != 3 or arr.shape[0] != len(NAIP_BANDS):
        raise InvalidImageError(
            f"image must have 4 bands (red, green, blue, nir) as (4, H, W); got shape {arr.shape}"
        )
    if min(arr.shape[1:]) < 1:
        raise InvalidImageError(f"image is empty: shape {arr.shape}")
    if arr.dtype != np.uint8:
        if arr.dtype.kind in "iu" and arr.size and int(arr.min()) >= 0 and int(arr.max()) <= 255:
            arr = arr.astype(np.uint8)
        else:
            detail = " containing NaN" if arr.dtype.kind == "f" and np.isnan(arr).any() else ""
            raise InvalidImageError(
                f"image must be uint8 NAIP digital numbers (0..255), got {arr.dtype}{detail}"
            )
    return np.ascontiguousarray(arr)

"""Monitoring metrics of predictions against the training reference statistics (pure numpy).

Everything here turns sums into ledger rows ``(name, key, value)``; writing them is the chain's
job. A scene's sums come from :class:`inference.predict.ScenePrediction` as a
:class:`SceneSummary`, which is small, JSON-serialisable (``to_dict``/``from_dict``) and adds
up across scenes, so run-level metrics are exact, not averages of averages.

Drift compares distributions on the reference's own support:

- class distribution: predicted fractions of the real classes (No Data excluded) against the
  model's own predicted mix on its held-out scenes (the training label fractions for older
  references), renormalised without No Data;
- each band: the histogram of valid uint8 values on the reference's ``bin_edges`` against the
  reference histogram.

``psi`` is the population stability index with epsilon smoothing (0.1 is usually read as a
moderate shift, 0.25 as a large one); ``js_divergence`` is the Jensen-Shannon divergence in bits,
bounded to [0, 1]. A scene or run is flagged when any PSI exceeds the threshold.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from core.classes import CLASS_NAMES, NODATA_CLASS_ID
from core.naip import NAIP_BANDS
from inference.settings import DEFAULTS

__all__ = [
    "MetricRow",
    "SceneSummary",
    "band_histogram",
    "drift_rows",
    "js_divergence",
    "psi",
    "reference_class_distribution",
    "run_metrics",
    "scene_metrics",
]

MetricRow = tuple[str, str, float]
PSI_EPSILON = 1e-4


# --- divergences -------------------------------------------------------------------------------


def _as_distribution(x: Sequence[float] | np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64).ravel()
    if arr.size == 0 or not np.isfinite(arr).all() or (arr < 0).any():
        raise ValueError(f"{name} must be a non-empty array of finite non-negative values, got {arr}")
    total = arr.sum()
    if total <= 0:
        raise ValueError(f"{name} sums to zero; there is no distribution to compare")
    return arr / total


def psi(p: Sequence[float] | np.ndarray, q: Sequence[float] | np.ndarray, eps: float = PSI_EPSILON) -> float:
    """Population stability index ``sum((p - q) * ln(p / q))`` of current ``p`` vs reference ``q``.

    Both are normalised, then smoothed with ``eps`` per bin so empty bins stay finite.
    """
    pn, qn = _as_distribution(p, "p"), _as_distribution(q, "q")
    if pn.shape != qn.shape:
        raise ValueError(f"distributions differ in length: {pn.size} vs {qn.size}")
    pn = (pn + eps) / (1.0 + eps * pn.size)
    qn = (qn + eps) / (1.0 + eps * qn.size)
    return float(np.sum((pn - qn) * np.log(pn / qn)))


def js_divergence(p: Sequence[float] | np.ndarray, q: Sequence[float] | np.ndarray) -> float:
    """Jensen-Shannon divergence in bits (base 2), in [0, 1]; 0 for identical distributions."""
    pn, qn = _as_distribution(p, "p"), _as_distribution(q, "q")
    if pn.shape != qn.shape:
        raise ValueError(f"distributions differ in length: {pn.size} vs {qn.size}")
    m = 0.5 * (pn + qn)

    def kl(a: np.ndarray) -> float:
        nz = a > 0
        return float(np.sum(a[nz] * np.log2(a[nz] / m[nz])))

    return float(min(1.0, max(0.0, 0.5 * kl(pn) + 0.5 * kl(qn))))


def band_histogram(value_counts: np.ndarray, bin_edges: Sequence[float]) -> np.ndarray:
    """Counts of uint8 values (``(256,)``) re-binned on ``bin_edges`` (as ``DatasetStats`` writes them)."""
    counts = np.asarray(value_counts, dtype=np.float64)
    if counts.shape != (256,):
        raise ValueError(f"expected 256 value counts, got shape {counts.shape}")
    hist, _ = np.histogram(np.arange(256), bins=np.asarray(bin_edges, dtype=np.float64), weights=counts)
    return hist


def reference_class_distribution(reference_stats: Mapping[str, Any]) -> np.ndarray:
    """The class mix predictions are compared with, without No Data, renormalised (``(K-1,)``).

    That is the model's own predicted class mix on its held-out scenes
    (``reference_stats["predictions"]["class_fractions"]``, written at registration), so
    predictions are compared with predictions; references without it (older exports) fall
    back to the training label fractions.
    """
    predicted = (reference_stats.get("predictions") or {}).get("class_fractions")
    fractions = np.asarray(predicted or reference_stats["class_fractions"], dtype=np.float64)
    keep = np.arange(fractions.size) != NODATA_CLASS_ID
    return _as_distribution(fractions[keep], "reference class fractions")


# --- scene sums ----------------------------------------------------------------------------------


@dataclass
class SceneSummary:
    """Additive per-scene sums over valid pixels; ``+`` merges scenes (for run-level metrics)."""

    class_counts: np.ndarray
    band_counts: np.ndarray
    confidence_sum: float
    low_confidence_count: int
    entropy_sum: float
    pixel_area_m2: float = 1.0
    n_scenes: int = 1
    seconds: float = 0.0
    band_names: tuple[str, ...] = NAIP_BANDS
    class_names: tuple[str, ...] = CLASS_NAMES
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_prediction(cls, pred: Any) -> SceneSummary:
        """From an :class:`inference.predict.ScenePrediction`."""
        return cls(
            class_counts=np.asarray(pred.class_counts, dtype=np.int64).copy(),
            band_counts=np.asarray(pred.band_counts, dtype=np.int64).copy(),
            confidence_sum=float(pred.confidence_sum),
            low_confidence_count=int(pred.low_confidence_count),
            entropy_sum=float(pred.entropy_sum),
            pixel_area_m2=float(pred.pixel_area_m2),
            seconds=float(pred.seconds),
            band_names=tuple(pred.band_names),
            class_names=tuple(pred.class_names),
        )

    @property
    def n_valid(self) -> int:
        return int(self.class_counts.sum())

    @property
    def area_km2(self) -> float:
        return self.n_valid * self.pixel_area_m2 / 1e6

    def __add__(self, other: SceneSummary) -> SceneSummary:
        if self.class_names != other.class_names or self.band_names != other.band_names:
            raise ValueError("cannot merge summaries with different class or band tables")
        n = self.n_valid + other.n_valid
        # Pixel area can differ between scenes; keep the area exact via a weighted mean.
        area = (self.area_km2 + other.area_km2) * 1e6 / n if n else self.pixel_area_m2
        return SceneSummary(
            class_counts=self.class_counts + other.class_counts,
            band_counts=self.band_counts + other.band_counts,
            confidence_sum=self.confidence_sum + other.confidence_sum,
            low_confidence_count=self.low_confidence_count + other.low_confidence_count,
            entropy_sum=self.entropy_sum + other.entropy_sum,
            pixel_area_m2=area,
            n_scenes=self.n_scenes + other.n_scenes,
            seconds=self.seconds + other.seconds,
            band_names=self.band_names,
            class_names=self.class_names,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "class_counts": [int(c) for c in self.class_counts],
            "band_counts": [[int(c) for c in row] for row in self.band_counts],
            "confidence_sum": self.confidence_sum,
            "low_confidence_count": self.low_confidence_count,
            "entropy_sum": self.entropy_sum,
            "pixel_area_m2": self.pixel_area_m2,
            "n_scenes": self.n_scenes,
            "seconds": self.seconds,
            "band_names": list(self.band_names),
            "class_names": list(self.class_names),
            "extra": dict(self.extra),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SceneSummary:
        values = dict(data)
        values["class_counts"] = np.asarray(values["class_counts"], dtype=np.int64)
        values["band_counts"] = np.asarray(values["band_counts"], dtype=np.int64)
        values["band_names"] = tuple(values.get("band_names", NAIP_BANDS))
        values["class_names"] = tuple(values.get("class_names", CLASS_NAMES))
        return cls(**values)


# --- rows ----------------------------------------------------------------------------------------------


def drift_rows(
    class_counts: np.ndarray,
    band_counts: np.ndarray,
    reference_stats: Mapping[str, Any],
    threshold: float = DEFAULTS.drift_threshold,
    band_names: Sequence[str] = NAIP_BANDS,
) -> tuple[list[MetricRow], bool]:
    """PSI / JS rows of the class and band distributions against ``reference_stats``
    (a ``DatasetStats.to_dict()``), and whether any PSI exceeds ``threshold``."""
    rows: list[MetricRow] = []
    worst = 0.0
    counts = np.asarray(class_counts, dtype=np.float64)
    keep = np.arange(counts.size) != NODATA_CLASS_ID
    # Reference stats computed without labels carry no class fractions: no class drift then.
    if counts[keep].sum() > 0 and sum(reference_stats.get("class_fractions") or ()) > 0:
        ref = reference_class_distribution(reference_stats)
        value = psi(counts[keep], ref)
        worst = max(worst, value)
        rows += [("psi_class", "", value), ("js_class", "", js_divergence(counts[keep], ref))]
    edges = reference_stats["bin_edges"]
    ref_bands = {b["name"]: b for b in reference_stats["bands"]}
    for name, values in zip(band_names, np.asarray(band_counts), strict=True):
        ref_band = ref_bands.get(name)
        if ref_band is None or not sum(ref_band["histogram"]) or values.sum() == 0:
            continue
        hist = band_histogram(values, edges)
        value = psi(hist, ref_band["histogram"])
        worst = max(worst, value)
        rows += [("psi_band", name, value), ("js_band", name, js_divergence(hist, ref_band["histogram"]))]
    flag = bool(rows) and worst > threshold
    rows.append(("drift_flag", "", 1.0 if flag else 0.0))
    return rows, flag


def _summary_rows(summary: SceneSummary) -> list[MetricRow]:
    n = summary.n_valid
    rows: list[MetricRow] = [("area_km2", "", summary.area_km2), ("valid_pixels", "", float(n))]
    for name, count in zip(summary.class_names, summary.class_counts, strict=True):
        rows.append(("class_fraction", name, float(count) / n if n else 0.0))
        rows.append(("class_area_km2", name, float(count) * summary.pixel_area_m2 / 1e6))
    if n:
        rows += [
            ("mean_max_softmax", "", summary.confidence_sum / n),
            ("low_confidence_share", "", summary.low_confidence_count / n),
            ("entropy", "", summary.entropy_sum / n),
        ]
    values = np.arange(256, dtype=np.float64)
    for name, counts in zip(summary.band_names, summary.band_counts, strict=True):
        total = counts.sum()
        if not total:
            continue
        mean = float((counts * values).sum() / total)
        std = math.sqrt(float((counts * (values - mean) ** 2).sum() / total))
        rows += [("band_mean", name, mean), ("band_std", name, std)]
    return rows


def scene_metrics(
    pred: Any,
    reference_stats: Mapping[str, Any] | None = None,
    threshold: float = DEFAULTS.drift_threshold,
) -> tuple[list[MetricRow], bool]:
    """Ledger rows of one scene (a ``ScenePrediction`` or :class:`SceneSummary`) and its drift flag.

    Rows: ``area_km2``, ``valid_pixels``, ``class_fraction``/``class_area_km2`` per class name,
    ``mean_max_softmax``, ``low_confidence_share``, ``entropy`` (normalised by ln K, 0..1),
    ``band_mean``/``band_std`` per band, and with ``reference_stats`` the drift rows of
    :func:`drift_rows`. Without reference statistics ``drift_flag`` is not written.
    """
    summary = pred if isinstance(pred, SceneSummary) else SceneSummary.from_prediction(pred)
    rows = _summary_rows(summary)
    if reference_stats is None:
        return rows, False
    drift, flag = drift_rows(
        summary.class_counts, summary.band_counts, reference_stats, threshold, summary.band_names
    )
    return rows + drift, flag


def run_metrics(
    summaries: Iterable[SceneSummary],
    reference_stats: Mapping[str, Any] | None = None,
    *,
    seconds_total: float | None = None,
    cost_usd: float | None = None,
    threshold: float = DEFAULTS.drift_threshold,
) -> tuple[list[MetricRow], bool]:
    """Run-level rows over all scenes of a run (write them with ``scene_id`` NULL) and the flag.

    Adds ``scenes_predicted``, ``seconds_total`` (default: the scenes' prediction seconds),
    ``reference_class_fraction`` per class (the training mix, without No Data),
    ``cost_usd`` (when given: :meth:`inference.settings.ChainDefaults.lambda_cost_usd`) and ``cost_usd_per_km2``
    to the rows of :func:`scene_metrics` over the merged sums.
    """
    items = list(summaries)
    rows: list[MetricRow] = [("scenes_predicted", "", float(len(items)))]
    seconds = float(sum(s.seconds for s in items)) if seconds_total is None else float(seconds_total)
    rows.append(("seconds_total", "", seconds))
    if cost_usd is not None:
        rows.append(("cost_usd", "", float(cost_usd)))
    if not items:
        return rows, False
    total = items[0]
    for s in items[1:]:
        total = total + s
    scene_rows, flag = scene_metrics(total, reference_stats, threshold)
    rows += scene_rows
    if reference_stats is not None and sum(reference_stats.get("class_fractions") or ()) > 0:
        # What the dashboards draw the run's class mix against.
        names = [n for i, n in enumerate(total.class_names) if i != NODATA_CLASS_ID]
        reference = reference_class_distribution(reference_stats)
        rows += [("reference_class_fraction", n, float(f)) for n, f in zip(names, reference, strict=True)]
    if cost_usd is not None and total.area_km2 > 0:
        rows.append(("cost_usd_per_km2", "", float(cost_usd) / total.area_km2))
    return rows, flag

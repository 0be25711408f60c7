"""Whole-scene prediction time at 1, 4 and 16 km² (1000², 2000², 4000² px at 1 m).

Scenes are synthetic NAIP GeoTIFFs (one 1000² generated scene, mirrored/tiled to the larger
sizes) on local disk, predicted end to end with ``inference.predict.predict_scene`` (read,
normalise, sliding window with overlap + blending, class/confidence rasters, monitor sums).

For each size it reports the median seconds, seconds per km², the tiling plan (chips run vs
the non-overlapping chip count ``ceil(H/256) * ceil(W/256)``), and the measured cost ratio:
scene seconds / (non-overlapping chips x the median seconds of one chip through the same
predictor, measured in the same run). Linearity: seconds per km² at each size and a
least-squares fit ``seconds = a + b * km²`` with its R². ``overhead_s`` is the time the scene
spent outside the model's calls (reading, normalising, blending, writing), timed around each
``predict_proba`` call, so a scene's cost can be rebuilt for another preset's chip time.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from setup.tools.bench.budget import Budget

__all__ = ["bench_scenes", "write_scenes"]

SIZES_PX = (1000, 2000, 4000)


def write_scenes(folder: Path, sizes: tuple[int, ...] = SIZES_PX, seed: int = 11) -> dict[int, str]:
    """Synthetic NAIP GeoTIFFs of the given square sizes; returns {size: path}."""
    from training.data.synthetic import make_scene, write_naip_tif

    folder.mkdir(parents=True, exist_ok=True)
    base = make_scene(seed, min(sizes[0], 1000))
    out: dict[int, str] = {}
    for size in sizes:
        path = folder / f"scene_{size}.tif"
        out[size] = str(path)
        if path.exists():
            continue
        reps = -(-size // base.image.shape[1])
        tile = np.concatenate([base.image, base.image[:, ::-1]], axis=1)
        tile = np.concatenate([tile, tile[:, :, ::-1]], axis=2)
        image = np.tile(tile, (1, reps, reps))[:, :size, :size]
        write_naip_tif(path, np.ascontiguousarray(image), base.transform, base.crs)
    return out


class _TimedPredictor:
    """``predictor`` with the seconds spent inside its ``predict_proba`` calls added up."""

    def __init__(self, predictor: Any) -> None:
        self._predictor = predictor
        self.seconds = 0.0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._predictor, name)

    def predict_proba(self, chips: np.ndarray) -> np.ndarray:
        t0 = time.perf_counter()
        try:
            return self._predictor.predict_proba(chips)
        finally:
            self.seconds += time.perf_counter() - t0


def _chip_seconds(predictor: Any, runs: int, budget: Budget, chip: int = 256) -> float:
    from setup.tools.bench.chips import sample_chips

    chips = sample_chips(runs, chip)
    predictor.predict_proba(chips[:1])
    seconds = []
    for i in budget.repeats("scene chip time", runs, 3, 0.05):
        t0 = time.perf_counter()
        predictor.predict_proba(chips[i][None])
        seconds.append(time.perf_counter() - t0)
    return statistics.median(seconds)


def bench_scenes(
    predictor: Any,
    scenes: dict[int, str],
    runs: dict[int, int],
    *,
    chip: int = 256,
    overlap: int | None = None,
    batch_size: int = 8,
    chip_runs: int = 5,
    budget: Budget,
) -> dict[str, Any]:
    """Time ``predict_scene`` on each scene; cost ratios against this predictor's chip time.

    Every scene runs at least once; on a slow CPU ``budget`` may stop a scene's repeats early.
    The largest scene runs first, each with its area's share of the time left.
    """
    from inference.predict import plan_tiling, predict_scene
    from inference.settings import DEFAULTS

    overlap = DEFAULTS.overlap if overlap is None else overlap
    chip_s = _chip_seconds(predictor, chip_runs, budget, chip)
    rows = []
    largest_first = sorted(scenes.items(), reverse=True)
    for k, (size, uri) in enumerate(largest_first):
        plan = plan_tiling(size, size, chip, overlap)
        seconds, outside = [], []
        # Each scene's share of the time left is its area's share of the scenes still to run.
        share = 0.8 * size**2 / sum(s**2 for s, _ in largest_first[k:])
        for _ in budget.repeats(f"scene {size} px", runs.get(size, 1), 1, share):
            timed = _TimedPredictor(predictor)
            t0 = time.perf_counter()
            predict_scene(timed, uri, chip_size=chip, overlap=overlap, batch_size=batch_size)
            seconds.append(time.perf_counter() - t0)
            outside.append(seconds[-1] - timed.seconds)
        med = statistics.median(seconds)
        km2 = size * size / 1e6
        rows.append(
            {
                "size_px": size,
                "km2": km2,
                "runs": len(seconds),
                "seconds": seconds,
                "median_s": med,
                "s_per_km2": med / km2,
                "chips_run": plan.n_chips,
                "chips_nonoverlapping": plan.baseline_chips,
                "chip_count_ratio": plan.cost_ratio,
                "cost_ratio": med / (plan.baseline_chips * chip_s),
                "s_per_chip_run": med / plan.n_chips,
                "overhead_s": statistics.median(outside),
            }
        )
    rows.sort(key=lambda r: r["size_px"])
    fit = _linear_fit([r["km2"] for r in rows], [r["median_s"] for r in rows]) if len(rows) > 1 else None
    return {
        "chip_s": chip_s,
        "chip_runs": chip_runs,
        "overlap": overlap,
        "batch_size": batch_size,
        "scenes": rows,
        "linear_fit": fit,
    }


def _linear_fit(x: list[float], y: list[float]) -> dict[str, float]:
    xa, ya = np.asarray(x), np.asarray(y)
    b, a = np.polyfit(xa, ya, 1)
    pred = a + b * xa
    ss_res = float(((ya - pred) ** 2).sum())
    ss_tot = float(((ya - ya.mean()) ** 2).sum()) or 1.0
    return {"intercept_s": float(a), "s_per_km2": float(b), "r2": 1.0 - ss_res / ss_tot}

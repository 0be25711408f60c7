"""Per-chip latency of the eager fp32 path and the optimised (ONNX Runtime int8) path.

Both paths are timed through the real predictors (``TorchPredictor`` fp32 and
``OnnxPredictor``): one 256x256 chip per call (batch 1, the handler's micro-batch), softmax
included, after one untimed warm-up call. Each timed call gets a different chip cut from a
synthetic NAIP scene, and the argmax of both paths over all those chips gives the pixel
agreement. The eager runs come first and the optimised runs after, never interleaved, so
neither runtime's idle worker threads steal cycles from the other.
"""

from __future__ import annotations

import gc
import statistics
import time
from typing import Any

import numpy as np

__all__ = ["bench_chips", "sample_chips"]


def sample_chips(n: int, chip: int = 256, seed: int = 7) -> np.ndarray:
    """``n`` normalised float32 chips (n, 4, chip, chip) cut from synthetic NAIP scenes."""
    from training.data.naip import normalize
    from training.data.synthetic import generate_scene

    side = chip * max(2, int(np.ceil(np.sqrt(n))))
    image, _ = generate_scene(seed, side)
    per_row = side // chip
    out = np.empty((n, 4, chip, chip), dtype=np.float32)
    for i in range(n):
        y, x = divmod(i % (per_row * per_row), per_row)
        out[i] = normalize(image[:, y * chip : (y + 1) * chip, x * chip : (x + 1) * chip])
    return out


def _timed(predictor: Any, chips: np.ndarray, warmup: int = 1) -> tuple[list[float], np.ndarray]:
    for i in range(warmup):
        predictor.predict_proba(chips[i % len(chips)][None])
    seconds, classes = [], []
    for chip in chips:
        t0 = time.perf_counter()
        probs = predictor.predict_proba(chip[None])
        seconds.append(time.perf_counter() - t0)
        classes.append(probs.argmax(axis=1)[0].astype(np.uint8))
    return seconds, np.stack(classes)


def _summary(seconds: list[float], flops: float, peak_gflops: float, peak_name: str) -> dict[str, Any]:
    med = statistics.median(seconds)
    gflops = flops / med / 1e9
    return {
        "runs": len(seconds),
        "seconds": seconds,
        "ms_per_chip": med * 1e3,
        "chips_per_s": 1.0 / med,
        "gflops": gflops,
        "peak_name": peak_name,
        "peak_gflops": peak_gflops,
        "share_of_peak": gflops / peak_gflops if peak_gflops else None,
    }


def bench_chips(
    export_path: str,
    onnx_path: str,
    flops: float,
    peaks: dict[str, Any],
    eager_runs: int,
    opt_runs: int,
    chip: int = 256,
) -> dict[str, Any]:
    """Eager fp32 vs optimised latency, throughput, GFLOP/s, share of peak and agreement."""
    from inference.runtime import TorchPredictor
    from inference.runtime_onnx import OnnxPredictor

    chips = sample_chips(max(eager_runs, opt_runs), chip)
    eager = TorchPredictor(export_path, dtype="float32")
    eager_s, eager_cls = _timed(eager, chips[:eager_runs])
    del eager
    gc.collect()
    time.sleep(0.5)  # let torch's OpenMP workers stop spinning before ONNX Runtime starts
    opt = OnnxPredictor(onnx_path)
    opt_s, opt_cls = _timed(opt, chips[:opt_runs])
    del opt
    gc.collect()
    n = min(eager_runs, opt_runs)
    agreement = float((eager_cls[:n] == opt_cls[:n]).mean())
    eager_sum = _summary(eager_s, flops, peaks["fp32"]["gflops"], "fp32")
    opt_sum = _summary(opt_s, flops, peaks["int8"]["gflops"], "int8")
    opt_sum["share_of_fp32_peak"] = opt_sum["gflops"] / peaks["fp32"]["gflops"]
    return {
        "chip": chip,
        "batch": 1,
        "eager_fp32": eager_sum,
        "optimized": opt_sum,
        "speedup": eager_sum["ms_per_chip"] / opt_sum["ms_per_chip"],
        "pixel_agreement": agreement,
        "agreement_chips": n,
    }

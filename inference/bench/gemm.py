"""Measured GEMM peak of this CPU in fp32, bf16 and int8 (square matmuls, all cores).

- fp32: ``torch.matmul`` (oneDNN/MKL sgemm).
- bf16: ``torch.matmul`` on bf16 tensors (n = 1024 only). Without native bf16 (AVX512-BF16 or
  AMX) this is an emulated path; the figure is reported as measured, however slow.
- int8: the kernel the optimised path runs: ONNX Runtime ``MatMulInteger`` (uint8 activations x
  int8 weights, MLAS's u8s8 path; u8u8 is measured too), and ``torch._int_mm`` (s8s8) where
  the CPU build has it. The int8 peak is the best of the ONNX Runtime kernels; each figure
  says which kernel produced it.

Every figure is the median GOP/s (2 n^3 / seconds, a multiply-add counted as 2) over
``runs`` timed calls after a warm-up, at the size that gave the best median.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["measure_peaks", "time_call"]


def time_call(fn: Callable[[], Any], runs: int, warmup: int = 1) -> list[float]:
    """Seconds of ``runs`` calls of ``fn`` after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def _gops(n: int, seconds: float) -> float:
    return 2.0 * n**3 / seconds / 1e9


def _torch_peak(dtype_name: str, sizes: list[int], runs: int) -> dict[str, Any]:
    import torch

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    best: dict[str, Any] = {}
    gen = torch.Generator().manual_seed(0)
    for n in sizes:
        a = torch.randn(n, n, generator=gen).to(dtype)
        b = torch.randn(n, n, generator=gen).to(dtype)
        with torch.inference_mode():
            secs = time_call(lambda a=a, b=b: torch.matmul(a, b), runs)
        gops = _gops(n, statistics.median(secs))
        if gops > best.get("gflops", 0.0):
            best = {"gflops": gops, "n": n, "runs": runs, "kernel": f"torch.matmul {dtype_name}"}
    return best


def _torch_int_mm(sizes: list[int], runs: int) -> dict[str, Any] | None:
    import torch

    if not hasattr(torch, "_int_mm"):
        return None
    best: dict[str, Any] = {}
    gen = torch.Generator().manual_seed(0)
    for n in sizes:
        a = torch.randint(-128, 127, (n, n), dtype=torch.int8, generator=gen)
        b = torch.randint(-128, 127, (n, n), dtype=torch.int8, generator=gen)
        try:
            with torch.inference_mode():
                secs = time_call(lambda a=a, b=b: torch._int_mm(a, b), runs)
        except (RuntimeError, NotImplementedError):
            return None
        gops = _gops(n, statistics.median(secs))
        if gops > best.get("gops", 0.0):
            best = {"gops": gops, "n": n, "runs": runs, "kernel": "torch._int_mm s8s8->s32"}
    return best


def _ort_matmul_integer(n: int, weight_signed: bool, folder: Path) -> Any:
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    if weight_signed:
        w = rng.integers(-128, 128, (n, n), dtype=np.int8)
        wzp = np.array(0, dtype=np.int8)
    else:
        w = rng.integers(0, 256, (n, n), dtype=np.uint8)
        wzp = np.array(128, dtype=np.uint8)
    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["a", "w", "azp", "wzp"], ["y"])],
        "gemm",
        [helper.make_tensor_value_info("a", TensorProto.UINT8, [n, n])],
        [helper.make_tensor_value_info("y", TensorProto.INT32, [n, n])],
        [
            numpy_helper.from_array(w, "w"),
            numpy_helper.from_array(np.array(128, dtype=np.uint8), "azp"),
            numpy_helper.from_array(wzp, "wzp"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = folder / f"mmi_{n}_{int(weight_signed)}.onnx"
    onnx.save(model, str(path))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _ort_int8_peak(sizes: list[int], runs: int, threads: int | None) -> dict[str, Any]:
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="gemm-") as tmp:
        for signed, label in ((True, "u8s8"), (False, "u8u8")):
            best: dict[str, Any] = {}
            for n in sizes:
                session = _ort_matmul_integer(n, signed, Path(tmp))
                a = np.random.default_rng(1).integers(0, 256, (n, n), dtype=np.uint8)
                secs = time_call(lambda s=session, a=a: s.run(None, {"a": a}), runs)
                gops = _gops(n, statistics.median(secs))
                if gops > best.get("gops", 0.0):
                    best = {
                        "gops": gops,
                        "n": n,
                        "runs": runs,
                        "kernel": f"onnxruntime MatMulInteger {label}",
                    }
            results[label] = best
    return results


def measure_peaks(sizes: list[int] | None = None, runs: int = 5, bf16_size: int = 1024) -> dict[str, Any]:
    """fp32, bf16 and int8 GEMM peaks (GFLOP/s or GOP/s) with the kernel and size of each.

    Returns ``{"fp32": {...}, "bf16": {...}, "int8": {...}, "int8_kernels": {...}, "bf16_native": bool}``
    where each entry has ``gflops`` (ops per second / 1e9, int8 included), ``n``, ``runs`` and ``kernel``.
    """
    import torch

    sizes = sizes or [2048, 3072]
    fp32 = _torch_peak("fp32", sizes, runs)
    # Emulated bf16 runs at ~1 GFLOP/s here: a 1024 matmul already takes seconds.
    bf16 = _torch_peak("bf16", [bf16_size], max(2, runs // 2))
    ort_int8 = _ort_int8_peak(sizes, runs, torch.get_num_threads())
    # torch._int_mm has no fast CPU kernel on every build (0.3 GOP/s on AVX2): a small size keeps
    # it from costing minutes; it is reported, never used as the peak.
    torch_int8 = _torch_int_mm([min(sizes[0], 768)], max(2, runs // 2))
    kernels = dict(ort_int8)
    if torch_int8:
        kernels["torch_s8s8"] = torch_int8
    best_label = max(ort_int8, key=lambda k: ort_int8[k]["gops"])
    best = ort_int8[best_label]
    try:
        native_bf16 = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        native_bf16 = False
    return {
        "fp32": fp32,
        "bf16": {**bf16, "native": native_bf16},
        "int8": {"gflops": best["gops"], "n": best["n"], "runs": best["runs"], "kernel": best["kernel"]},
        "int8_kernels": {k: {**v, "gflops": v["gops"]} for k, v in kernels.items()},
        "threads": torch.get_num_threads(),
    }

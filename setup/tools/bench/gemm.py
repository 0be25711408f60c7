"""Measured GEMM peak of this CPU in fp32, bf16 and int8 (square matmuls, all cores).

Each precision is measured with every runtime the candidate paths use, and its peak is the
best of them: a runtime whose kernels miss this CPU's widest instructions must not lower the
bar the others are judged against (on AVX-512 ``torch.matmul`` fp32 has measured well below
MLAS's and oneDNN's).

- fp32: ``torch.matmul`` (MKL/oneDNN sgemm), ONNX Runtime ``MatMul`` (MLAS) and OpenVINO
  ``MatMul`` (oneDNN).
- bf16: ``torch.matmul`` on bf16 tensors (n = 1024 only; without native bf16, AVX512-BF16 or
  AMX, this is an emulated path, reported as measured however slow) and OpenVINO's bf16
  ``MatMul`` where the plugin really runs bf16 (it falls back to fp32 elsewhere).
- int8: ONNX Runtime ``MatMulInteger`` (uint8 activations x int8 weights, MLAS's u8s8 path;
  u8u8 is measured too), OpenVINO's int8 ``MatMul`` on a QDQ graph (what ``openvino-int8``
  runs), and ``torch._int_mm`` (s8s8) where the CPU build has it (reported, never the peak:
  no CPU path serves it). Each figure says which kernel produced it.

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


def _best_size(
    sizes: list[int], runs: int, kernel: str, call_for: Callable[[int], Callable[[], Any] | None]
) -> dict[str, Any] | None:
    """``{"gflops", "n", "runs", "kernel"}`` of the size whose ``call_for(n)`` call has the best
    median; None when ``call_for`` returns None (the kernel does not run as itself here)."""
    best: dict[str, Any] = {}
    for n in sizes:
        call = call_for(n)
        if call is None:
            return None
        gflops = _gops(n, statistics.median(time_call(call, runs)))
        if gflops > best.get("gflops", 0.0):
            best = {"gflops": gflops, "n": n, "runs": runs, "kernel": kernel}
    return best or None


def _torch_peak(dtype_name: str, sizes: list[int], runs: int) -> dict[str, Any]:
    import torch

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    gen = torch.Generator().manual_seed(0)

    def call_for(n: int) -> Callable[[], Any]:
        a = torch.randn(n, n, generator=gen).to(dtype)
        b = torch.randn(n, n, generator=gen).to(dtype)
        return lambda: torch.matmul(a, b)

    with torch.inference_mode():
        best = _best_size(sizes, runs, f"torch.matmul {dtype_name}", call_for)
    assert best is not None  # every size runs
    return best


def _torch_int_mm(sizes: list[int], runs: int) -> dict[str, Any] | None:
    import torch

    if not hasattr(torch, "_int_mm"):
        return None
    gen = torch.Generator().manual_seed(0)

    def call_for(n: int) -> Callable[[], Any]:
        a = torch.randint(-128, 127, (n, n), dtype=torch.int8, generator=gen)
        b = torch.randint(-128, 127, (n, n), dtype=torch.int8, generator=gen)
        return lambda: torch._int_mm(a, b)

    try:
        with torch.inference_mode():
            return _best_size(sizes, runs, "torch._int_mm s8s8->s32", call_for)
    except (RuntimeError, NotImplementedError):
        return None


def _gemm_graph(n: int, kind: str, path: Path) -> Path:
    """An ONNX graph of one n x n x n GEMM with constant weights: ``fp32`` (MatMul),
    ``u8s8`` / ``u8u8`` (MatMulInteger) or ``qdq`` (uint8 activations x int8 weights in QDQ
    form, the shape of the calibrated ``model.int8-qdq.onnx``); written to ``path``."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    fp32_in = helper.make_tensor_value_info("a", TensorProto.FLOAT, [n, n])
    fp32_out = helper.make_tensor_value_info("y", TensorProto.FLOAT, [n, n])
    if kind == "fp32":
        w = numpy_helper.from_array(rng.standard_normal((n, n)).astype(np.float32), "w")
        graph = helper.make_graph(
            [helper.make_node("MatMul", ["a", "w"], ["y"])], "gemm", [fp32_in], [fp32_out], [w]
        )
    elif kind == "qdq":
        consts = {
            "a_scale": np.array(0.05, np.float32),
            "a_zero": np.array(0, np.uint8),
            "w_q": rng.integers(-127, 128, (n, n), dtype=np.int8),
            "w_scale": np.array(0.01, np.float32),
            "w_zero": np.array(0, np.int8),
        }
        nodes = [
            helper.make_node("QuantizeLinear", ["a", "a_scale", "a_zero"], ["a_q"]),
            helper.make_node("DequantizeLinear", ["a_q", "a_scale", "a_zero"], ["a_dq"]),
            helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zero"], ["w_dq"]),
            helper.make_node("MatMul", ["a_dq", "w_dq"], ["y"]),
        ]
        inits = [numpy_helper.from_array(v, k) for k, v in consts.items()]
        graph = helper.make_graph(nodes, "gemm", [fp32_in], [fp32_out], inits)
    else:
        signed = kind == "u8s8"
        w = (
            rng.integers(-128, 128, (n, n), dtype=np.int8)
            if signed
            else rng.integers(0, 256, (n, n), dtype=np.uint8)
        )
        wzp = np.array(0, dtype=np.int8) if signed else np.array(128, dtype=np.uint8)
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
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def _input(n: int, kind: str) -> np.ndarray:
    rng = np.random.default_rng(1)
    if kind in ("u8s8", "u8u8"):
        return rng.integers(0, 256, (n, n), dtype=np.uint8)
    a = rng.standard_normal((n, n)).astype(np.float32)
    return np.abs(a) if kind == "qdq" else a  # QDQ: uint8 activations, zero point 0


def _ort_run(path: Path) -> Callable[[np.ndarray], Any]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return lambda a: session.run(None, {"a": a})


def _openvino_run(path: Path, precision: str) -> tuple[Callable[[np.ndarray], Any], str]:
    """An OpenVINO CPU infer call on ``path`` and the precision the plugin says it runs."""
    import openvino as ov

    from inference.runtime_openvino import compiled_precision

    hint = "bf16" if precision == "bf16" else "f32"
    compiled = ov.Core().compile_model(
        str(path), "CPU", {"INFERENCE_PRECISION_HINT": hint, "PERFORMANCE_HINT": "LATENCY"}
    )
    request = compiled.create_infer_request()
    return (lambda a: request.infer({0: a})), compiled_precision(compiled)


def _graph_peaks(sizes: list[int], runs: int) -> dict[str, dict[str, Any]]:
    """Best median GOP/s (as ``gflops``) per runtime kernel over ``sizes``, keyed by a short label.

    ONNX Runtime always; OpenVINO where it is installed (its bf16 only where the plugin
    reports bf16, so a fp32 fallback is never counted as a bf16 figure).
    """
    from inference.runtime_cpu import runtime_available

    kernels = [
        ("ort_fp32", "fp32", "onnxruntime MatMul fp32 (MLAS)", "fp32"),
        ("u8s8", "u8s8", "onnxruntime MatMulInteger u8s8", "int8"),
        ("u8u8", "u8u8", "onnxruntime MatMulInteger u8u8", "int8"),
    ]
    if runtime_available("openvino"):
        kernels += [
            ("ov_fp32", "fp32", "openvino MatMul fp32", "fp32"),
            ("ov_bf16", "fp32", "openvino MatMul bf16", "bf16"),
            ("ov_qdq", "qdq", "openvino MatMul int8 (QDQ u8s8)", "int8"),
        ]
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="gemm-") as tmp:
        for label, kind, kernel, precision in kernels:

            def call_for(n: int, kind: str = kind, precision: str = precision, label: str = label) -> Any:
                path = _gemm_graph(n, kind, Path(tmp) / f"{kind}_{n}.onnx")
                if label.startswith("ov_"):
                    run, effective = _openvino_run(path, precision)
                    if precision == "bf16" and effective != "bf16":
                        return None  # no native bf16 in OpenVINO here: not a bf16 figure
                else:
                    run = _ort_run(path)
                a = _input(n, kind)
                return lambda: run(a)

            best = _best_size(sizes, runs, kernel, call_for)
            if best:
                results[label] = {**best, "precision": precision}
    return results


def _best(kernels: dict[str, dict[str, Any]]) -> dict[str, Any]:
    label = max(kernels, key=lambda k: kernels[k]["gflops"])
    return {key: kernels[label][key] for key in ("gflops", "n", "runs", "kernel")}


def measure_peaks(sizes: list[int] | None = None, runs: int = 5, bf16_size: int = 1024) -> dict[str, Any]:
    """fp32, bf16 and int8 GEMM peaks (GFLOP/s or GOP/s): the best kernel of each precision.

    Returns ``{"fp32": {...}, "bf16": {..., "native": bool}, "int8": {...}, "<precision>_kernels":
    {label: {...}}, "threads": int}`` where each entry has ``gflops`` (ops per second / 1e9, int8
    included), ``n``, ``runs`` and ``kernel``; the ``_kernels`` maps hold every kernel measured.
    """
    import torch

    sizes = sizes or [2048, 3072]
    graph = _graph_peaks(sizes, runs)
    by_precision: dict[str, dict[str, dict[str, Any]]] = {"fp32": {}, "bf16": {}, "int8": {}}
    by_precision["fp32"]["torch_fp32"] = _torch_peak("fp32", sizes, runs)
    # Emulated bf16 (no native bf16) is slow enough that one size is all the budget affords.
    by_precision["bf16"]["torch_bf16"] = _torch_peak("bf16", [bf16_size], max(2, runs // 2))
    for label, k in graph.items():
        by_precision[k["precision"]][label] = k
    peaks: dict[str, Any] = {p: _best(k) for p, k in by_precision.items()}
    # torch._int_mm has no fast CPU kernel on every build: a small size keeps
    # it from costing minutes; it is reported, never used as the peak.
    torch_int8 = _torch_int_mm([min(sizes[0], 768)], max(2, runs // 2))
    if torch_int8:
        by_precision["int8"]["torch_s8s8"] = torch_int8
    try:
        native_bf16 = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        native_bf16 = False
    peaks["bf16"]["native"] = native_bf16
    for precision, kernels in by_precision.items():
        peaks[f"{precision}_kernels"] = kernels
    peaks["threads"] = torch.get_num_threads()
    return peaks

"""Where one chip's time goes on the served path: the runtime's own per-operator profile.

The served artifact is loaded as the dispatcher loads it, with the runtime's profiler on
(OpenVINO ``PERF_COUNT``, ONNX Runtime's node trace), and one chip is profiled after a
warm-up. Operators are grouped by the ONNX nodes they run (the names follow the modules of
:mod:`training.models.clay`):

- ``weight matmuls``: the qkv, attention-output and MLP projections (what int8 quantises first);
- ``attention``: the score and value products with their softmax (one fused operator in OpenVINO);
- ``convolutions``: the patch embedding and the segmentation head's convs;
- ``other``: LayerNorms, GELU, adds, reshapes, quantise/dequantise, reorders.

Each group's FLOPs come from the bench's count (:func:`setup.tools.bench.models.analytic_flops`),
so its rate says how close that part runs to the measured peak of the precision it runs in.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

__all__ = ["GROUPS", "operator_group", "profile_chip", "render_profile"]

GROUPS: tuple[str, ...] = ("weight matmuls", "attention", "convolutions", "other")
#: The Linear modules of a Clay block (clay.py: Attention.to_qkv / to_out, FeedForward net.1 / net.3).
_LINEAR = re.compile(r"/(to_qkv|to_out|net\.1|net\.3)/")
#: The attention products: Block child 0's own MatMul / MatMul_1 (torch's SDPA as exported).
_ATTENTION = re.compile(r"/layers\.\d+\.0/(MatMul(_1)?|Softmax)(\b|_|$)")
_MATMUL_TYPES = ("MatMul", "FullyConnected", "Gemm")


def operator_group(op_type: str, nodes: Iterable[str]) -> str:
    """The group of :data:`GROUPS` a runtime operator belongs to, from the ONNX nodes it runs."""
    nodes = list(nodes)
    if any(_ATTENTION.search(n) for n in nodes):
        return "attention"
    if any(t in op_type for t in _MATMUL_TYPES) and any(_LINEAR.search(n) for n in nodes):
        return "weight matmuls"
    if "Conv" in op_type:
        return "convolutions"
    return "other"


def profile_chip(
    path: str,
    backend: str,
    kwargs: dict[str, Any],
    chip: Any,
    flops: dict[str, Any],
    peaks: dict[str, tuple[str, float]],
) -> dict[str, Any]:
    """Profile one chip (after one warm-up) of ``path`` on ``backend`` with the served ``kwargs``.

    Args:
        peaks: per group with FLOPs, the precision it runs in and that precision's peak
            (``{"attention": ("fp32", 390.0), ...}``).

    Returns each group's seconds, share of the operators' total, FLOPs, GFLOP/s and share of its
    precision's peak, plus the wall time of the profiled call.
    """
    import time

    from inference.runtime import load_predictor

    if backend not in ("onnx", "openvino"):
        return {"error": f"no operator profile for backend {backend!r}"}
    predictor = load_predictor(path, backend=backend, **kwargs, profile=True)
    predictor.predict_proba(chip[None])
    t0 = time.perf_counter()
    predictor.predict_proba(chip[None])
    wall = time.perf_counter() - t0
    times = predictor.operator_times()
    del predictor
    seconds = dict.fromkeys(GROUPS, 0.0)
    counts = dict.fromkeys(GROUPS, 0)
    for op in times:
        group = operator_group(op.op_type, op.nodes)
        seconds[group] += op.seconds
        counts[group] += 1
    group_flops = {
        "weight matmuls": flops["linear"],
        "attention": flops["attention"],
        "convolutions": flops["total"] - flops["linear"] - flops["attention"],
        "other": 0.0,
    }
    total = sum(seconds.values())
    groups = {}
    for name in GROUPS:
        s, f = seconds[name], group_flops[name]
        rate = f / s / 1e9 if s and f else None
        peak_name, peak = peaks.get(name, (None, 0.0))
        groups[name] = {
            "seconds": s,
            "share_of_time": s / total if total else None,
            "operators": counts[name],
            "gflop": f / 1e9,
            "gflops": rate,
            "peak_name": peak_name,
            "share_of_peak": rate / peak if rate and peak else None,
        }
    return {"backend": backend, "wall_s": wall, "operators_s": total, "groups": groups}


def render_profile(preset: str, prof: dict[str, Any]) -> str:
    """One line: each group's milliseconds, share of the chip and rate against the peak."""
    if "groups" not in prof:
        return f"  {preset:6s} served chip profile: {prof.get('error', 'not measured')}"
    parts = []
    for name, g in prof["groups"].items():
        part = f"{name} {g['seconds'] * 1e3:.0f} ms ({g['share_of_time']:.0%}"
        if g["share_of_peak"]:
            part += f", {g['gflops']:.0f} GFLOP/s = {g['share_of_peak']:.0%} of the {g['peak_name']} peak"
        parts.append(part + ")")
    return (
        f"  {preset:6s} served chip profile ({prof['backend']} operator counters, 1 chip, "
        f"{prof['operators_s'] * 1e3:.0f} ms in operators of {prof['wall_s'] * 1e3:.0f} ms): "
        + "; ".join(parts)
    )

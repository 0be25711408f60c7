"""OpenVINO predictor: the CPU plugin on an ONNX graph, in bf16 where the CPU has it, else fp32.

Runs ``model.int8-qdq.onnx`` or ``model.fp32.onnx`` (or any ONNX written by
:mod:`training.models.onnx_export`), reading the model's metadata from the ONNX
``metadata_props`` (:func:`~inference.runtime.read_onnx_metadata_props` seeks past the weights).
On the QDQ graph the plugin runs the quantised MatMuls in int8 (AMX-INT8 / VNNI kernels) and
everything else at ``precision``.

- ``precision="bf16"`` asks the CPU plugin for bf16 inference (``INFERENCE_PRECISION_HINT``).
  :attr:`effective_precision` is what the compiled model reports, never assumed: some CPUs
  without native bf16 get fp32, others bf16 emulated at a fraction of fp32's speed (Intel
  AVX-512 without AVX512-BF16 reports bf16). Emulated bf16 logs a warning and sets
  :attr:`emulated_bf16`; the dispatcher only picks bf16 on AMX (:mod:`inference.runtime_cpu`).
- ``profile``: the plugin's per-operator counters (``PERF_COUNT``); :meth:`operator_times`
  reads them for the last request (the bench's profile of the served chip).
- ``cache_dir``: OpenVINO's compiled-model cache (``CACHE_DIR``); the second load of the same
  model on the same CPU imports the compiled blob instead of compiling, which cuts cold start;
  :attr:`cached_graph` says whether this load did.

Never imports torch (the Lambda image does not ship it).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from inference.runtime import OperatorTime, check_chips, default_num_threads, read_onnx_metadata_props
from inference.runtime_cpu import detect_cpu

__all__ = ["OpenVinoPredictor", "compiled_precision"]

PRECISIONS = ("fp32", "bf16")

log = logging.getLogger(__name__)


def compiled_precision(compiled: Any) -> str:
    """The float precision a compiled model really runs (``fp32``, ``bf16``, ``fp16``), read back
    from the plugin, which falls back to fp32 where the CPU lacks the requested precision."""
    hint = compiled.get_property("INFERENCE_PRECISION_HINT")
    name = getattr(hint, "get_type_name", lambda: str(hint))()
    return {"f32": "fp32", "bf16": "bf16", "f16": "fp16"}.get(name, str(hint))


class OpenVinoPredictor:
    """A :class:`~inference.runtime.Predictor` over an OpenVINO CPU compiled model.

    Args:
        path: local ONNX file.
        precision: ``fp32`` or ``bf16`` (a hint; see :attr:`effective_precision`).
        num_threads: inference threads; defaults to the CPUs this process may use.
        cache_dir: compiled-model cache folder (None: no cache).
        profile: collect per-operator times (:meth:`operator_times`).
    """

    backend = "openvino"

    def __init__(
        self,
        path: str | os.PathLike[str],
        precision: str = "fp32",
        num_threads: int | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        profile: bool = False,
    ) -> None:
        import openvino as ov

        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        self.path = Path(path)
        if not self.path.exists():
            raise FileNotFoundError(f"no ONNX model at {self.path}")
        core = ov.Core()
        self.capabilities = [str(c) for c in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")]
        config: dict[str, Any] = {
            "INFERENCE_NUM_THREADS": int(num_threads or default_num_threads()),
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
        }
        if profile:
            config["PERF_COUNT"] = True
        blobs_before: set[Path] = set()
        if cache_dir is not None:
            Path(cache_dir).mkdir(parents=True, exist_ok=True)
            blobs_before = set(Path(cache_dir).glob("*.blob"))
            core.set_property({"CACHE_DIR": str(cache_dir)})
        self.precision = precision
        self.metadata: dict[str, Any] = read_onnx_metadata_props(self.path)
        # From the path, not a read model: with a cached blob OpenVINO then skips the ONNX parse.
        self.compiled = core.compile_model(str(self.path), "CPU", config)
        # A cached load writes no new blob (the cache is keyed by model, device and config).
        self.cached_graph = bool(blobs_before) and not (set(Path(cache_dir).glob("*.blob")) - blobs_before)
        self.effective_precision = compiled_precision(self.compiled)
        cpu = detect_cpu()
        self.emulated_bf16 = self.effective_precision == "bf16" and not cpu.native_bf16
        if self.emulated_bf16:
            log.warning(
                "OpenVINO runs %s in bf16 on a CPU without native bf16 (%s, class %s): emulated, "
                "slower than fp32; use precision=fp32 here",
                self.path.name,
                cpu.model,
                cpu.cpu_class,
            )
        self._request = self.compiled.create_infer_request()
        shape = self.compiled.input(0).get_partial_shape()
        self.bands = int(shape[1].get_length()) if shape[1].is_static else 4
        size = self.metadata.get("chip_size")
        self.chip_size: int | None = int(size) if isinstance(size, int) else None
        classes = self.metadata.get("num_classes")
        if classes is None:
            out = self.compiled.output(0).get_partial_shape()
            classes = out[1].get_length() if out[1].is_static else None
        if classes is None:
            raise ValueError(f"{self.path}: cannot tell the number of classes (no metadata)")
        self.num_classes = int(classes)

    def __repr__(self) -> str:
        return (
            f"OpenVinoPredictor({str(self.path)!r}, precision={self.precision!r} "
            f"(runs {self.effective_precision}), classes={self.num_classes})"
        )

    def operator_times(self) -> list[OperatorTime]:
        """Per-operator times of the last request, in execution order (needs ``profile=True``)."""
        if not self.compiled.get_property("PERF_COUNT"):
            raise RuntimeError("operator_times needs OpenVinoPredictor(..., profile=True)")
        nodes: dict[str, tuple[str, ...]] = {}
        for op in self.compiled.get_runtime_model().get_ordered_ops():
            rt = op.get_rt_info()
            if "originalLayersNames" in rt:
                nodes[op.get_friendly_name()] = tuple(rt["originalLayersNames"].astype(str).split(","))
        return [
            OperatorTime(
                info.node_type, nodes.get(info.node_name, (info.node_name,)), info.real_time.total_seconds()
            )
            for info in self._request.get_profiling_info()
            if info.status == info.Status.EXECUTED
        ]

    def predict_proba(self, chips: np.ndarray) -> np.ndarray:
        """Softmax probabilities (B, K, S, S) float32 for normalised float32 chips (B, 4, S, S)."""
        chips = check_chips(chips, self.bands, self.chip_size)
        n = chips.shape[0]
        if n == 0:
            return np.zeros((0, self.num_classes, *chips.shape[-2:]), dtype=np.float32)
        out = np.empty((n, self.num_classes, *chips.shape[-2:]), dtype=np.float32)
        for i in range(n):  # one chip per request: memory does not grow with the batch
            result = self._request.infer({0: np.ascontiguousarray(chips[i : i + 1])})
            out[i : i + 1] = next(iter(result.values()))
        return out

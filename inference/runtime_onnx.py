"""ONNX Runtime predictor: the infer Lambda's default backend (needs onnxruntime + numpy only).

It runs ``model.int8.onnx`` written by :mod:`training.models.onnx_export`: normalised float32
chips (B, 4, S, S) in, softmax probabilities (B, K, S, S) out, with the model's metadata
(class table, normalisation, reference statistics, ...) read from the ONNX ``metadata_props``.

This module must never import torch: the Lambda image does not ship it (a test checks this in
a fresh interpreter).

Memory: a batch is run in micro-batches of at most ``max_batch`` chips (default 1), so peak
activation memory does not grow with the caller's batch size (the large preset's attention
scores alone are ~70 MB per chip); the CPU memory arena is kept, but with the
``kSameAsRequested`` growth strategy so it does not over-allocate by powers of two.

Cold start: with ``cache_dir`` the first session saves its fully optimised graph (all ORT
optimisations, including the CPU-specific layout ones) in ORT format under a key of the model
file, the ORT version and this CPU's flags (built in a throwaway session without weight
prepacking, so building it does not hold the weights twice); every session, the first one
included, then loads that file with graph optimisation off and uses its bytes in place for the
weights (no second copy), so a cold start does neither the optimisation nor the copy.

Profiling: with ``profile=True`` the session records ONNX Runtime's per-node times;
:meth:`OnnxPredictor.operator_times` ends that recording and returns the last run's nodes.

Determinism: activations are quantised dynamically with one scale per tensor, so a chip run
together with others could come out slightly different than alone. With ``max_batch=1`` (the
default) every chip's probabilities depend on that chip only, whatever the caller's batching.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from inference.runtime import OperatorTime, check_chips, default_num_threads

__all__ = ["OnnxPredictor", "optimized_cache_path", "session_options"]

log = logging.getLogger(__name__)


def session_options(threads: int | None = None, low_memory: bool = True) -> Any:
    """ORT session options: all graph optimisations, ``threads`` intra-op threads, one inter-op
    thread, sequential execution, and an arena that grows only by what is requested."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads or default_num_threads()
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if low_memory:
        options.enable_mem_pattern = False
    return options


def optimized_cache_path(model: Path, cache_dir: str | os.PathLike[str]) -> Path:
    """Where the optimised ORT-format graph of ``model`` for this CPU and ORT version is cached."""
    import onnxruntime as ort

    from inference.runtime_cpu import detect_cpu

    st = model.stat()
    cpu = detect_cpu()
    key = f"{model.resolve()}|{st.st_size}|{st.st_mtime_ns}|{ort.__version__}|{cpu.arch}|{sorted(cpu.flags)}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return Path(cache_dir) / f"{model.stem}.{digest}.ort"


def _provider_options(low_memory: bool) -> list[tuple[str, dict[str, str]]]:
    if not low_memory:
        return [("CPUExecutionProvider", {})]
    return [("CPUExecutionProvider", {"arena_extend_strategy": "kSameAsRequested"})]


def _decode(raw: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in raw.items():
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


class OnnxPredictor:
    """A :class:`~inference.runtime.Predictor` over an ONNX Runtime CPU session.

    Args:
        path: local path of ``model.int8.onnx`` (or any ONNX written by ``onnx_export``).
        num_threads: intra-op threads; defaults to the CPUs this process may use.
        max_batch: chips per session run; larger caller batches are split (bounds memory).
        low_memory: arena/memory-pattern settings for a small resident set (default True).
        cache_dir: where the optimised graph for this CPU is cached (None: no cache).
        profile: record per-node times (:meth:`operator_times`; not with ``cache_dir``).
    """

    backend = "onnx"

    def __init__(
        self,
        path: str | os.PathLike[str],
        num_threads: int | None = None,
        max_batch: int = 1,
        low_memory: bool = True,
        cache_dir: str | os.PathLike[str] | None = None,
        profile: bool = False,
    ) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise FileNotFoundError(f"no ONNX model at {self.path}")
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if profile and cache_dir is not None:
            raise ValueError("profile and cache_dir are exclusive: profiling runs the uncached session")
        self.max_batch = max_batch
        self.cached_graph: str | None = None  # the optimised graph file the session runs
        self.graph_cache_built = False  # whether this process wrote that file
        self._profile_dir = tempfile.TemporaryDirectory(prefix="ort-profile-") if profile else None
        self.session = self._session(num_threads, low_memory, cache_dir)
        self.metadata: dict[str, Any] = _decode(self.session.get_modelmeta().custom_metadata_map)
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        self.input_name = self.metadata.get("input_name", inputs[0].name)
        self.output_name = self.metadata.get("output_name", outputs[0].name)
        shape = inputs[0].shape  # ["batch", 4, S, S]
        self.bands = int(shape[1]) if isinstance(shape[1], int) else 4
        size = self.metadata.get("chip_size", shape[-1])
        self.chip_size: int | None = int(size) if isinstance(size, int) else None
        classes = self.metadata.get("num_classes")
        if classes is None:
            classes = outputs[0].shape[1] if isinstance(outputs[0].shape[1], int) else None
        if classes is None:
            raise ValueError(f"{self.path}: cannot tell the number of classes (no metadata)")
        self.num_classes = int(classes)

    def _session(
        self, threads: int | None, low_memory: bool, cache_dir: str | os.PathLike[str] | None
    ) -> Any:
        import onnxruntime as ort

        providers = _provider_options(low_memory)
        if cache_dir is None:
            options = session_options(threads, low_memory)
            if self._profile_dir is not None:
                options.enable_profiling = True
                options.profile_file_prefix = str(Path(self._profile_dir.name) / "ort")
            return ort.InferenceSession(str(self.path), options, providers=providers)
        cached = optimized_cache_path(self.path, cache_dir)
        if not cached.exists():
            self._build_cache(cached, threads, low_memory, providers)
        if cached.exists():
            options = session_options(threads, low_memory)
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
            options.add_session_config_entry("session.load_model_format", "ORT")
            options.add_session_config_entry("session.use_ort_model_bytes_directly", "1")
            options.add_session_config_entry("session.use_ort_model_bytes_for_initializers", "1")
            try:
                session = ort.InferenceSession(str(cached), options, providers=providers)
                self.cached_graph = str(cached)
                return session
            except Exception as exc:  # a stale or truncated cache: drop it, run uncached
                log.warning("ignoring unreadable cached graph %s (%s)", cached, exc)
                cached.unlink(missing_ok=True)
        return ort.InferenceSession(str(self.path), session_options(threads, low_memory), providers=providers)

    def _build_cache(self, cached: Path, threads: int | None, low_memory: bool, providers: list) -> None:
        """Optimise the graph once and save it to ``cached``, in a session that is then dropped.

        Its kernels skip weight prepacking (the saved graph is the same; prepacked copies are
        made by the session that runs it), so building the cache does not hold the weights
        twice: the first cold start on a CPU peaks no higher than a cached one.
        """
        import onnxruntime as ort

        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_name(f".{cached.name}.{os.getpid()}.tmp")
        options = session_options(threads, low_memory)
        options.optimized_model_filepath = str(tmp)
        options.add_session_config_entry("session.save_model_format", "ORT")
        options.add_session_config_entry("session.disable_prepacking", "1")
        try:
            ort.InferenceSession(str(self.path), options, providers=providers)
            os.replace(tmp, cached)
            self.graph_cache_built = True
        except Exception as exc:  # a read-only or full cache folder: run uncached
            log.warning("could not write the optimised graph cache %s (%s)", cached, exc)
            tmp.unlink(missing_ok=True)

    def __repr__(self) -> str:
        return f"OnnxPredictor({str(self.path)!r}, chip_size={self.chip_size}, classes={self.num_classes})"

    def operator_times(self) -> list[OperatorTime]:
        """Per-node times of the last session run, in execution order (needs ``profile=True``).

        Ends ONNX Runtime's recording: later runs are not profiled.
        """
        if self._profile_dir is None:
            raise RuntimeError("operator_times needs OnnxPredictor(..., profile=True)")
        events = json.loads(Path(self.session.end_profiling()).read_text())
        runs = [e for e in events if e.get("name") == "model_run"]
        if not runs:
            raise RuntimeError("no profiled run yet: call predict_proba first")
        start, stop = runs[-1]["ts"], runs[-1]["ts"] + runs[-1]["dur"]
        suffix = "_kernel_time"
        return [
            OperatorTime(e["args"]["op_name"], (e["name"].removesuffix(suffix),), e["dur"] / 1e6)
            for e in events
            if e.get("cat") == "Node" and e["name"].endswith(suffix) and start <= e["ts"] <= stop
        ]

    def predict_proba(self, chips: np.ndarray) -> np.ndarray:
        """Softmax probabilities (B, K, S, S) float32 for normalised float32 chips (B, 4, S, S)."""
        chips = check_chips(chips, self.bands, self.chip_size)
        chips = np.ascontiguousarray(chips)
        n = chips.shape[0]
        if n == 0:
            return np.zeros((0, self.num_classes, *chips.shape[-2:]), dtype=np.float32)
        if n <= self.max_batch:
            return self._run(chips)
        out = np.empty((n, self.num_classes, *chips.shape[-2:]), dtype=np.float32)
        for start in range(0, n, self.max_batch):
            stop = min(n, start + self.max_batch)
            out[start:stop] = self._run(chips[start:stop])
        return out

    def _run(self, chips: np.ndarray) -> np.ndarray:
        (probs,) = self.session.run([self.output_name], {self.input_name: chips})
        return np.asarray(probs, dtype=np.float32)

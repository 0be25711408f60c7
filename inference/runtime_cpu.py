"""Pick the fastest inference path this CPU has: detect the instruction set, never assume it.

Order of preference (:data:`PATHS`, first one whose needs are met wins):

1. ``openvino-int8``: OpenVINO's CPU plugin on the static (calibrated) int8 QDQ graph, for x86
   CPUs with an int8 dot product (AMX-INT8 tiles, AVX512-VNNI or AVX-VNNI): the weight and
   attention MatMuls run on oneDNN's int8 kernels, LayerNorms, softmax and the head in fp32.
   ``make bench`` measured it faster than bf16 and ONNX Runtime int8 on CPUs with AMX and on
   CPUs with AVX512-VNNI but no AMX, at a third of bf16's memory; it times both int8 paths side
   by side on every VNNI CPU, so the CPU classes not measured yet are covered there. The float
   rest stays fp32 because bf16 there, though faster, moved 1.4 % of the trained champion's
   pixels. The plugin fuses each attention (int8 Q.K^T, softmax, A.V) into one subgraph; on AMX
   (issue 35, large preset, 2 cores) the products left fp32 took 2.1-2.6x its time and cast to
   bf16 in the graph 0.97-1.5x (five runs), and OpenVINO converted from the PyTorch model gets
   the same subgraph (the plugin decomposes ScaledDotProductAttention outside stateful LLM
   graphs), so the int8 one stays: the element-wise work on the N x N scores (softmax,
   requantisation), not the GEMMs, bounds it.
2. ``openvino-bf16``: OpenVINO's CPU plugin in bf16 on the fp32 ONNX graph, for CPUs with AMX
   bf16 tiles (a champion without the int8 QDQ graph; 98.6 % pixel agreement on the trained
   champion, see 1). AVX512-BF16 alone (without AMX tiles) measured slower than
   int8 and holds the fp32 graph's memory, so such CPUs take path 1 or 3.
3. ``ort-int8-vnni``: ONNX Runtime int8 with full-range (8-bit) weights, for CPUs with an int8
   dot-product instruction (AVX512-VNNI, AVX-VNNI, AMX-INT8; ``asimddp`` on Graviton, class
   ``aarch64``, whose arm64 image ships no OpenVINO: it has no aarch64 wheel for Amazon Linux
   2023's glibc): MLAS's int8 kernels accumulate in 32 bits there, so the 7-bit weights buy
   nothing; also a champion registered before the QDQ graph. Arm speed is not measured yet
   (no arm64 machine here).
4. ``ort-int8-avx2``: ONNX Runtime int8 with 7-bit weights, for AVX2 CPUs without VNNI: the
   ``vpmaddubsw`` pair sum saturates at 16 bits, which the reduced range avoids; also Arm
   without dotprod (NEON only), where the 7-bit weights are safe whatever the kernel.
5. ``torch-fp32``: the compact export with PyTorch (images that ship torch only).

A path is skipped when its runtime is not installed or the champion lacks its artifact; every
skip is recorded with its reason, so the log line and the recorded choice say why the winner won.
Nothing here imports torch, onnxruntime or openvino; :func:`runtime_available` only asks
whether they are installed.
"""

from __future__ import annotations

import importlib.util
import logging
import platform
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from core.artifacts import (
    EXPORT_NAME,
    ONNX_FP32_NAME,
    ONNX_INT8_NAME,
    ONNX_INT8_QDQ_NAME,
    ONNX_INT8_VNNI_NAME,
)

__all__ = [
    "PATHS",
    "CpuInfo",
    "DispatchChoice",
    "RuntimePath",
    "choose_path",
    "detect_cpu",
    "runtime_available",
]

log = logging.getLogger(__name__)

#: The /proc/cpuinfo flags that decide the path (x86 and Arm spellings), reported as found.
FLAGS_OF_INTEREST: tuple[str, ...] = (
    "avx2",
    "fma",
    "avx512f",
    "avx512bw",
    "avx512_vnni",
    "avx_vnni",
    "avx512_bf16",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
    "asimd",
    "asimddp",
    "i8mm",
    "bf16",
)
BF16_FLAGS = frozenset({"amx_bf16", "avx512_bf16"})
AMX_BF16_FLAGS = frozenset({"amx_bf16"})
X86_INT8_DOT_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})
INT8_DOT_FLAGS = X86_INT8_DOT_FLAGS | {"asimddp"}


@dataclass(frozen=True)
class CpuInfo:
    """What this process runs on: model name, architecture and the flags that matter."""

    model: str
    arch: str
    flags: frozenset[str]

    @property
    def native_bf16(self) -> bool:
        """Whether bf16 matmuls run in hardware (AMX-bf16 tiles or AVX512-BF16). Elsewhere a
        runtime may still accept bf16 and emulate it far slower than fp32 (OpenVINO on AVX-512
        without bf16 does); Arm's bf16 is not measured, so it counts as not native."""
        return bool(self.flags & BF16_FLAGS)

    @property
    def cpu_class(self) -> str:
        """``amx``, ``avx512_bf16``, ``vnni``, ``avx2``, ``aarch64`` (Arm: Graviton) or
        ``baseline`` (the best feature it has)."""
        if "asimd" in self.flags:
            return "aarch64"
        if self.flags & {"amx_bf16", "amx_int8"}:
            return "amx"
        if "avx512_bf16" in self.flags:
            return "avx512_bf16"
        if self.flags & INT8_DOT_FLAGS:
            return "vnni"
        if "avx2" in self.flags:
            return "avx2"
        return "baseline"

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "arch": self.arch,
            "cpu_class": self.cpu_class,
            "native_bf16": self.native_bf16,
            "flags": sorted(self.flags),
        }


def _parse_cpuinfo(text: str) -> tuple[str, set[str]]:
    model, flags = "", set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "cpu model") and not model:
            model = value.strip()
        elif key in ("flags", "features") and not flags:
            flags = set(value.split())
    return model, flags


def detect_cpu(cpuinfo_text: str | None = None) -> CpuInfo:
    """Read ``/proc/cpuinfo`` (or ``cpuinfo_text``); keep the flags in :data:`FLAGS_OF_INTEREST`."""
    if cpuinfo_text is None:
        try:
            with open("/proc/cpuinfo") as fh:
                cpuinfo_text = fh.read()
        except OSError:  # pragma: no cover - not Linux
            cpuinfo_text = ""
    model, flags = _parse_cpuinfo(cpuinfo_text)
    return CpuInfo(
        model=model or platform.processor() or "unknown",
        arch=platform.machine(),
        flags=frozenset(f for f in flags if f in FLAGS_OF_INTEREST),
    )


def runtime_available(module: str) -> bool:
    """Whether ``module`` (``onnxruntime``, ``openvino``, ``torch``) is installed, without importing it."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # pragma: no cover
        return False


@dataclass(frozen=True)
class RuntimePath:
    """One way to run the model: backend, artifact and what the CPU must have to make it the fastest."""

    name: str
    backend: str  # a load_predictor backend
    artifact: str  # a name in the registry version folder
    precision: str  # fp32 | bf16 | int8
    module: str  # the runtime package it needs
    needs_any: frozenset[str] = frozenset()  # at least one of these flags (empty: any CPU)
    options: dict[str, Any] = field(default_factory=dict)  # extra load_predictor kwargs
    why: str = ""

    def cpu_reason(self, cpu: CpuInfo) -> str | None:
        """None when ``cpu`` qualifies, else why not."""
        if not self.needs_any or cpu.flags & self.needs_any:
            return None
        return f"CPU lacks {' / '.join(sorted(self.needs_any))}"


PATHS: tuple[RuntimePath, ...] = (
    # The non-quantised remainder runs in fp32: the precision hint applies to every float op,
    # and bf16 in the segmentation head moved 1.4 % of the trained champion's pixels.
    RuntimePath(
        "openvino-int8",
        "openvino",
        ONNX_INT8_QDQ_NAME,
        "int8",
        "openvino",
        X86_INT8_DOT_FLAGS,
        {"precision": "fp32"},
        "oneDNN int8 kernels (AMX-INT8 tiles or VNNI) for the calibrated weight and attention MatMuls, "
        "fp32 for the rest",
    ),
    # Only with AMX tiles: on AVX512-BF16 without AMX `make bench` measured int8 faster, and
    # bf16 holds the fp32 graph, over twice int8's memory.
    RuntimePath(
        "openvino-bf16",
        "openvino",
        ONNX_FP32_NAME,
        "bf16",
        "openvino",
        AMX_BF16_FLAGS,
        {"precision": "bf16"},
        "native bf16 matrix tiles (AMX)",
    ),
    RuntimePath(
        "ort-int8-vnni",
        "onnx",
        ONNX_INT8_VNNI_NAME,
        "int8",
        "onnxruntime",
        INT8_DOT_FLAGS,
        {},
        "int8 dot product with 32-bit accumulation (VNNI / AMX-INT8 / Arm dotprod): full 8-bit weights",
    ),
    RuntimePath(
        "ort-int8-avx2",
        "onnx",
        ONNX_INT8_NAME,
        "int8",
        "onnxruntime",
        frozenset({"avx2", "asimd"}),
        {},
        "AVX2 u8s8 int8 (7-bit weights avoid vpmaddubsw's 16-bit saturation); on Arm without "
        "dotprod, NEON int8",
    ),
    RuntimePath("torch-fp32", "torch", EXPORT_NAME, "fp32", "torch", frozenset(), {}, "portable fallback"),
)


@dataclass
class DispatchChoice:
    """The chosen path, why, and why each better path was passed over."""

    path: RuntimePath
    reason: str
    cpu: CpuInfo
    skipped: list[tuple[str, str]]

    @property
    def backend(self) -> str:
        return self.path.backend

    @property
    def artifact(self) -> str:
        return self.path.artifact

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready record (what each prediction's summary carries)."""
        return {
            "path": self.path.name,
            "backend": self.path.backend,
            "artifact": self.path.artifact,
            "precision": self.path.precision,
            "reason": self.reason,
            "cpu": self.cpu.to_dict(),
            "skipped": [{"path": n, "why": w} for n, w in self.skipped],
        }

    def log_line(self) -> str:
        return (
            f"runtime path {self.path.name} ({self.path.backend}, {self.path.artifact}, {self.path.precision}): "
            f"{self.reason}; CPU {self.cpu.model!r} class {self.cpu.cpu_class}, flags {sorted(self.cpu.flags)}; "
            f"skipped: {'; '.join(f'{n}: {w}' for n, w in self.skipped) or 'none'}"
        )


def choose_path(
    cpu: CpuInfo | None = None,
    has_artifact: Callable[[str], bool] | None = None,
    *,
    has_runtime: Callable[[str], bool] = runtime_available,
    backends: Iterable[str] | None = None,
    paths: Iterable[RuntimePath] = PATHS,
    force: str | None = None,
) -> DispatchChoice:
    """The first of ``paths`` this CPU, this image and this model can run.

    Args:
        cpu: the CPU (default: :func:`detect_cpu`).
        has_artifact: whether the model has an artifact by name (default: every one exists).
        has_runtime: whether a runtime package is installed.
        backends: restrict to these backends (``BACKEND=onnx`` -> ``{"onnx"}``).
        paths: candidates in order of preference.
        force: take the path of this name whatever the CPU (benchmarks compare paths this way);
            its runtime and artifact must still be there. A forced path this CPU does not
            qualify for (its instructions emulated, e.g. bf16 without AMX) logs a warning and
            says so in the reason.

    Raises:
        RuntimeError: no candidate can run here (the skip reasons are in the message).
    """
    cpu = cpu or detect_cpu()
    allowed = set(backends) if backends is not None else None
    forced = (force or "").strip()
    skipped: list[tuple[str, str]] = []
    for path in paths:
        why = None
        if forced and path.name != forced:
            why = f"forced {forced}"
        elif allowed is not None and path.backend not in allowed:
            why = f"backend {path.backend} not allowed (BACKEND={'/'.join(sorted(allowed))})"
        elif not forced and (cpu_why := path.cpu_reason(cpu)):
            why = cpu_why
        elif not has_runtime(path.module):
            why = f"{path.module} not installed in this image"
        elif has_artifact is not None and not has_artifact(path.artifact):
            why = f"model has no {path.artifact}"
        if why:
            skipped.append((path.name, why))
            continue
        if forced:
            reason = f"forced ({forced}); CPU class {cpu.cpu_class}"
            if cpu_why := path.cpu_reason(cpu):
                reason += f"; {cpu_why}: its {path.precision} runs emulated or slow here"
                log.warning("runtime path %s forced on a CPU it is not for: %s", forced, reason)
        elif path.needs_any:
            found = sorted(cpu.flags & path.needs_any)
            reason = f"CPU has {', '.join(found)}: {path.why}"
        else:
            reason = f"{path.why} (no faster path available)"
        return DispatchChoice(path, reason, cpu, skipped)
    raise RuntimeError("no inference path can run here: " + "; ".join(f"{n}: {w}" for n, w in skipped))


def load_chosen(
    choice: DispatchChoice,
    model_path: str,
    *,
    cache_dir: str | None = None,
    num_threads: int | None = None,
) -> Any:
    """Load ``model_path`` (the chosen artifact, local) with the chosen backend and options.

    ``cache_dir`` (ONNX Runtime / OpenVINO): where the CPU-specific optimised graph or compiled
    model is kept, so the next cold start on this CPU skips graph optimisation / compilation.
    The predictor gets a ``runtime`` attribute: :meth:`DispatchChoice.to_dict` plus what the
    runtime reports (OpenVINO's effective precision).
    """
    from inference.runtime import load_predictor

    kwargs: dict[str, Any] = dict(choice.path.options)
    if num_threads is not None:
        kwargs["num_threads"] = num_threads
    if cache_dir is not None and choice.backend in ("onnx", "openvino"):
        kwargs["cache_dir"] = cache_dir
    predictor = load_predictor(model_path, backend=choice.backend, **kwargs)
    record = choice.to_dict()
    effective = getattr(predictor, "effective_precision", None)
    if effective is not None:
        record["effective_precision"] = effective
    if getattr(predictor, "emulated_bf16", False):
        record["emulated_bf16"] = True
    predictor.runtime = record
    log.info(choice.log_line())
    return predictor

"""Pick the device and precision the heavy training steps run with, and say why.

``cache_features`` (the frozen encoder over every chip) and ``train_head`` (Lightning) ask
:func:`select_device` once. The rules:

* **device**: CUDA when one is present (``training.device=auto``), else the CPU. ``cuda`` demands
  a GPU and fails clearly without one; ``cpu`` forces the CPU.
* **precision**: bf16 autocast when ``training.precision`` asks for bf16 *and* the hardware runs
  it natively: a CUDA GPU with bf16 (Ampere and later), or a CPU with AMX-bf16 or AVX512-bf16
  (:attr:`inference.runtime_cpu.CpuInfo.native_bf16`, the one ``/proc/cpuinfo`` reader).
  Elsewhere (an AVX2-only CPU, an older GPU) emulated bf16 is slower than fp32, so fp32 is used. ``32-true`` always means fp32.

The choice is logged with its reason and recorded in the step result, so a run says how it ran.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from inference.runtime_cpu import BF16_FLAGS, detect_cpu

log = logging.getLogger(__name__)

DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda")
BF16_PRECISION = "bf16-mixed"
FP32_PRECISION = "32-true"


def cpu_capability() -> str:
    """PyTorch's dispatch level for this CPU (``AVX2``, ``AVX512``, ``DEFAULT`` ...)."""
    try:
        return str(torch.backends.cpu.get_cpu_capability())
    except (AttributeError, RuntimeError):  # very old builds lack it
        return "unknown"


@dataclass(frozen=True)
class DeviceChoice:
    """Where and how a step computes.

    Args:
        device: torch device type, ``cuda`` or ``cpu``.
        precision: Lightning precision string, ``bf16-mixed`` or ``32-true``.
        reason: one line saying why.
        device_name: the GPU's name or the CPU's dispatch level.
        cpu_bf16_flags: which native-bf16 flags the CPU reported.
    """

    device: str
    precision: str
    reason: str
    device_name: str = ""
    cpu_bf16_flags: tuple[str, ...] = field(default_factory=tuple)

    @property
    def accelerator(self) -> str:
        """Lightning's name for the device."""
        return "gpu" if self.device == "cuda" else "cpu"

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return torch.bfloat16 if self.precision.startswith("bf16") else None

    def trainer_kwargs(self) -> dict[str, Any]:
        """``accelerator``/``devices``/``precision`` for ``pl.Trainer``."""
        return {"accelerator": self.accelerator, "devices": 1, "precision": self.precision}

    @contextlib.contextmanager
    def autocast(self) -> Iterator[None]:
        """bf16 autocast on this device when chosen; a no-op in fp32."""
        if self.autocast_dtype is None:
            yield
            return
        with torch.autocast(device_type=self.device, dtype=self.autocast_dtype):
            yield

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "accelerator": self.accelerator}


def select_device(
    requested_precision: str = BF16_PRECISION,
    device: str = "auto",
    *,
    cuda_available: bool | None = None,
    cuda_bf16: bool | None = None,
    cpuinfo: str | None = None,
) -> DeviceChoice:
    """The best device for ``device`` (auto | cpu | cuda) and the precision it runs natively.

    The keyword-only arguments stand in for the hardware probes (tests use them to cover GPU
    and AMX machines on any CPU); left None, the real hardware is asked.

    Raises:
        ValueError: an unknown device or precision, or ``cuda`` without a GPU.
    """
    if device not in DEVICES:
        raise ValueError(f"training.device={device!r}: use one of {', '.join(DEVICES)}")
    if not (requested_precision.startswith("bf16") or requested_precision in ("32", "32-true")):
        raise ValueError(
            f"training.precision={requested_precision!r}: use {BF16_PRECISION} or {FP32_PRECISION}"
        )
    want_bf16 = requested_precision.startswith("bf16")
    has_cuda = torch.cuda.is_available() if cuda_available is None else cuda_available
    if device == "cuda" and not has_cuda:
        raise ValueError(
            "training.device=cuda but no CUDA device is visible; use training.device=auto to fall back to the CPU"
        )
    if has_cuda and device in ("auto", "cuda"):
        name = torch.cuda.get_device_name(0) if cuda_available is None else "cuda (probe overridden)"
        native = torch.cuda.is_bf16_supported() if cuda_bf16 is None else cuda_bf16
        if not want_bf16:
            choice = DeviceChoice("cuda", FP32_PRECISION, f"CUDA GPU {name}; fp32 requested", name)
        elif native:
            choice = DeviceChoice("cuda", BF16_PRECISION, f"CUDA GPU {name} with native bf16", name)
        else:
            choice = DeviceChoice("cuda", FP32_PRECISION, f"CUDA GPU {name} lacks native bf16; fp32", name)
    else:
        found = tuple(sorted(detect_cpu(cpuinfo).flags & BF16_FLAGS))
        level = cpu_capability()
        where = "no CUDA device" if device == "auto" else "training.device=cpu"
        if not want_bf16:
            reason = f"{where}; CPU ({level}); fp32 requested"
            precision = FP32_PRECISION
        elif found:
            reason = f"{where}; CPU ({level}) has native bf16 ({', '.join(found)})"
            precision = BF16_PRECISION
        else:
            reason = f"{where}; CPU ({level}) has no AMX-bf16/AVX512-bf16, and emulated bf16 is slower: fp32"
            precision = FP32_PRECISION
        choice = DeviceChoice("cpu", precision, reason, level, found)
    log.info("[device] %s, %s: %s", choice.device, choice.precision, choice.reason)
    return choice

"""Device choice: CUDA when present, bf16 only where the hardware runs it natively.

No GPU (nor AMX CPU) is needed: the hardware probes are arguments, and the real probe of this
machine is checked for consistency with /proc/cpuinfo.
"""

from __future__ import annotations

import logging

import pytest
import torch

from inference.runtime_cpu import detect_cpu
from training.device import select_device

AMX_CPUINFO = "processor : 0\nflags : fpu sse avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n"
EPYC_CPUINFO = "processor : 0\nflags : fpu sse avx2 fma\n"
GRAVITON_CPUINFO = "processor : 0\nFeatures : fp asimd bf16 i8mm\n"


def test_cpu_flags_parse_x86_and_arm() -> None:
    assert {"amx_bf16", "avx512_bf16"} <= detect_cpu(AMX_CPUINFO).flags
    assert detect_cpu(AMX_CPUINFO).native_bf16
    assert "bf16" in detect_cpu(GRAVITON_CPUINFO).flags
    assert not detect_cpu(GRAVITON_CPUINFO).native_bf16  # Arm bf16: not measured, not taken
    assert detect_cpu("nothing here").flags == frozenset()


@pytest.mark.parametrize(
    ("cpuinfo", "precision"),
    [(AMX_CPUINFO, "bf16-mixed"), (EPYC_CPUINFO, "32-true"), (GRAVITON_CPUINFO, "32-true")],
)
def test_cpu_bf16_only_with_amx_or_avx512_bf16(cpuinfo: str, precision: str) -> None:
    choice = select_device("bf16-mixed", cuda_available=False, cpuinfo=cpuinfo)
    assert choice.device == "cpu" and choice.accelerator == "cpu"
    assert choice.precision == precision
    assert choice.trainer_kwargs() == {"accelerator": "cpu", "devices": 1, "precision": precision}
    assert ("native bf16" in choice.reason) == (precision == "bf16-mixed")


def test_fp32_requested_is_fp32_everywhere() -> None:
    assert select_device("32-true", cuda_available=False, cpuinfo=AMX_CPUINFO).precision == "32-true"
    assert select_device("32-true", cuda_available=True, cuda_bf16=True).precision == "32-true"


def test_cuda_preferred_with_bf16_when_supported(caplog) -> None:
    with caplog.at_level(logging.INFO, logger="training.device"):
        choice = select_device("bf16-mixed", cuda_available=True, cuda_bf16=True)
    assert (choice.device, choice.accelerator, choice.precision) == ("cuda", "gpu", "bf16-mixed")
    assert choice.autocast_dtype is torch.bfloat16
    assert "[device] cuda, bf16-mixed" in caplog.text
    old_gpu = select_device("bf16-mixed", cuda_available=True, cuda_bf16=False)
    assert old_gpu.precision == "32-true" and "lacks native bf16" in old_gpu.reason
    forced_cpu = select_device("bf16-mixed", "cpu", cuda_available=True, cpuinfo=EPYC_CPUINFO)
    assert forced_cpu.device == "cpu"


def test_errors_name_the_key() -> None:
    with pytest.raises(ValueError, match="no CUDA device"):
        select_device("bf16-mixed", "cuda", cuda_available=False)
    with pytest.raises(ValueError, match=r"training\.device"):
        select_device("bf16-mixed", "tpu")
    with pytest.raises(ValueError, match=r"training\.precision"):
        select_device("16-mixed")


def test_this_machine() -> None:
    """The real probes agree with /proc/cpuinfo, and bf16 autocast really runs where chosen."""
    choice = select_device("bf16-mixed")
    if choice.device == "cpu":
        assert (choice.precision == "bf16-mixed") == detect_cpu().native_bf16
    layer = torch.nn.Linear(8, 4).to(choice.device)
    with choice.autocast():
        out = layer(torch.ones(2, 8, device=choice.device))
    assert out.dtype == (torch.bfloat16 if choice.autocast_dtype else torch.float32)

"""How big a block is: from a model's measured throughput to chips per block.

A block is what one infer call predicts (:func:`inference.predict.plan_blocks`). It must finish
within the infer Lambda's timeout with a safety factor, at the speed the served model really
runs. That speed is a measured figure stored with the model version (``metrics.json``'s
``throughput``, written by the training pipeline's served-path evaluation), or taken from a
benchmark: never a constant here. Measured on a machine with ``threads`` cores, a chip on a
Lambda with fewer vCPUs takes ``threads / vcpus`` times longer (the served path is compute
bound); a Lambda with more vCPUs than were measured is not assumed to be faster.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from core.artifacts import METRICS_NAME
from inference.runtime import Predictor, default_num_threads
from inference.runtime_cpu import detect_cpu
from inference.settings import ChainDefaults

__all__ = [
    "WHOLE_SCENE",
    "BlockSizing",
    "LambdaEstimate",
    "Throughput",
    "block_sizing",
    "lambda_estimate",
    "measure_throughput",
    "throughput_from_bench",
]


@dataclass(frozen=True)
class Throughput:
    """Measured seconds per chip of a model on the served path, and where it was measured."""

    seconds_per_chip: float
    threads: int
    chip_size: int
    cpu: str = "unknown"
    chips: int = 0

    @classmethod
    def from_metrics(cls, metrics: dict[str, Any] | None) -> Throughput | None:
        """From a model version's metrics (``metrics["throughput"]``); None when it has none."""
        raw = (metrics or {}).get("throughput")
        if not isinstance(raw, dict) or not raw.get("seconds_per_chip"):
            return None
        return cls(
            seconds_per_chip=float(raw["seconds_per_chip"]),
            threads=int(raw.get("threads") or 1),
            chip_size=int(raw["chip_size"]),
            cpu=str(raw.get("cpu") or "unknown"),
            chips=int(raw.get("chips") or 0),
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def lambda_seconds_per_chip(self, settings: ChainDefaults, memory_mb: float, chip_size: int) -> float:
        """Seconds a ``chip_size`` chip takes on a Lambda of ``memory_mb`` (pixels scale the time)."""
        slowdown = max(1.0, self.threads / settings.lambda_vcpus(memory_mb))
        return self.seconds_per_chip * slowdown * (chip_size / self.chip_size) ** 2


#: ``block_chips`` of a plan that keeps every scene in one block (what a model without a measured
#: throughput gets: the chain as it was before blocks). Fits the ledger's 32-bit integer.
WHOLE_SCENE = 2**31 - 1


@dataclass(frozen=True)
class BlockSizing:
    """The block side chosen for a run, and why."""

    block_chips: int
    reason: str
    lambda_seconds_per_chip: float | None = None
    seconds_per_block: float | None = None  # estimated, for a full interior block (halo included)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def block_sizing(
    settings: ChainDefaults, throughput: Throughput | None, memory_mb: float | None
) -> BlockSizing:
    """Chips a block side: ``settings.block_chips`` when set, else sized from ``throughput``.

    The largest side ``n`` whose ``(n + 1)²`` chips (the core plus its one-chip halo row and
    column) take at most ``block_time_share`` of the infer timeout on a Lambda of ``memory_mb``.

    With neither a configured size nor a measured throughput (a model registered before
    throughputs were recorded), every scene stays one block (:data:`WHOLE_SCENE`), as before
    blocks existed; the reason says so and how to get real blocks.

    Raises:
        ValueError: even a 2 x 2-chip block would not fit the timeout at the measured speed.
    """
    budget = settings.infer_timeout_s * settings.block_time_share
    if settings.block_chips is not None:
        per_chip = (
            throughput.lambda_seconds_per_chip(settings, memory_mb, settings.chip_size)
            if throughput is not None and memory_mb
            else None
        )
        per_block = None if per_chip is None else per_chip * (settings.block_chips + 1) ** 2
        return BlockSizing(settings.block_chips, "configured (block_chips)", per_chip, per_block)
    if throughput is None or not memory_mb:
        return BlockSizing(
            WHOLE_SCENE,
            f"one block per scene: the champion has no measured throughput ({METRICS_NAME} 'throughput', "
            "written by the training pipeline's served-path evaluation) or no infer memory is set; set "
            "inference.block_chips (BLOCK_CHIPS) or register the model again to predict in blocks",
        )
    per_chip = throughput.lambda_seconds_per_chip(settings, memory_mb, settings.chip_size)
    side = math.isqrt(int(budget / per_chip)) - 1
    if side < 1:
        raise ValueError(
            f"a 2 x 2-chip block would take {4 * per_chip:.0f} s on a {memory_mb:.0f} MB Lambda, over "
            f"{budget:.0f} s ({settings.block_time_share:.0%} of the {settings.infer_timeout_s:.0f} s "
            "timeout): give the infer function more memory"
        )
    reason = (
        f"{throughput.seconds_per_chip:.3f} s/chip measured on {throughput.threads} threads ({throughput.cpu})"
        f" -> {per_chip:.2f} s/chip on {settings.lambda_vcpus(memory_mb):.2f} vCPU ({memory_mb:.0f} MB);"
        f" {(side + 1) ** 2} chips in {budget:.0f} s"
    )
    return BlockSizing(side, reason, per_chip, per_chip * (side + 1) ** 2)


def measure_throughput(
    predictor: Predictor, chip_size: int, chips: int = 8, batch_size: int = 8
) -> Throughput:
    """Time ``predictor`` on ``chips`` random chips after one warm-up batch."""
    rng = np.random.default_rng(0)
    batch = rng.normal(size=(min(batch_size, chips), 4, chip_size, chip_size)).astype(np.float32)
    predictor.predict_proba(batch[:1])
    done, start = 0, time.perf_counter()
    while done < chips:
        n = min(len(batch), chips - done)
        predictor.predict_proba(batch[:n])
        done += n
    seconds = (time.perf_counter() - start) / chips
    return Throughput(seconds, default_num_threads(), chip_size, detect_cpu().model, chips)


def throughput_from_bench(report: dict[str, Any], preset: str = "large") -> Throughput | None:
    """A preset's served-path throughput from a ``make bench`` report (``outputs/bench/bench.json``)."""
    res = (report.get("presets") or {}).get(preset)
    if not res or "optimized" not in res:
        return None
    machine = report.get("machine") or {}
    return Throughput(
        seconds_per_chip=float(res["optimized"]["ms_per_chip"]) / 1e3,
        threads=int(machine.get("cores") or 1),
        chip_size=int(report.get("chip") or ChainDefaults().chip_size),
        cpu=str(machine.get("cpu") or "unknown"),
        chips=int(res["optimized"].get("runs") or 0),
    )


@dataclass(frozen=True)
class LambdaEstimate:
    """What predicting a scene costs on Lambda at a measured throughput."""

    blocks: int
    block_chips: int
    chips: int  # halo included
    seconds_per_block_max: float
    seconds_total: float
    usd: float
    timeout_s: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def lambda_estimate(
    settings: ChainDefaults, throughput: Throughput, height: int, width: int, memory_mb: float
) -> LambdaEstimate:
    """Blocks, the slowest block's time and the scene's compute time and cost on Lambda."""
    from inference.predict import PATCH_SIZE, plan_blocks, plan_tiling

    sizing = block_sizing(settings, throughput, memory_mb)
    per_chip = throughput.lambda_seconds_per_chip(settings, memory_mb, settings.chip_size)
    plan = plan_tiling(height, width, settings.chip_size, settings.overlap, PATCH_SIZE)
    chips = [b.chips(plan) for b in plan_blocks(plan, sizing.block_chips)]
    seconds = per_chip * sum(chips)
    return LambdaEstimate(
        blocks=len(chips),
        block_chips=sizing.block_chips,
        chips=sum(chips),
        seconds_per_block_max=per_chip * max(chips),
        seconds_total=seconds,
        usd=settings.lambda_cost_usd(seconds, int(memory_mb), len(chips) + 1),
        timeout_s=settings.infer_timeout_s,
    )

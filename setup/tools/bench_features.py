"""Feature-extraction throughput of the frozen encoder, and what caching the whole release costs.

    python -m setup.tools.bench_features --preset large --batch-size 64 --chips 512
    python -m setup.tools.bench_features --preset tiny --chips 32          # a quick CPU check

Times the code path ``cache_features`` runs (:func:`training.features.encode_chips` under the
device's autocast, :mod:`training.device` choosing CUDA/bf16 where present) on random uint8
chips, after warm-up batches, and prints the median chips per second over repeats. From it: the
hours to cache ``--release-chips`` chips (the CVPR release is of the order of 10^5 chips of
256^2) and their cost at ``--usd-per-hour`` (the instance's on-demand or spot price: give yours).
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from collections.abc import Sequence

import numpy as np
import torch

log = logging.getLogger(__name__)

#: Chips of 256^2 in the CVPR 2019 release (order of magnitude; see issue 17).
RELEASE_CHIPS = 100_000


def measure(
    preset: str, chips: int, batch_size: int, chip_size: int, repeats: int, device: str, precision: str
) -> dict:
    """Median chips/s of ``encode_chips`` for ``chips`` random chips, ``repeats`` times."""
    from training.device import select_device
    from training.features import encode_chips
    from training.models.head import build_segmenter

    choice = select_device(precision, device)
    torch.manual_seed(0)
    model = build_segmenter(preset, 7, 16).eval().to(choice.device)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(chips, 4, chip_size, chip_size), dtype=np.uint8)

    def once() -> float:
        if choice.device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        with choice.autocast():
            encode_chips(model, images, batch_size)
        if choice.device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    with choice.autocast():  # warm-up: kernels, autotuning, allocator
        encode_chips(model, images[: min(len(images), 2 * batch_size)], batch_size)
    seconds = []
    for i in range(repeats):
        seconds.append(once())
        log.info("repeat %d/%d: %.1f chips/s", i + 1, repeats, chips / seconds[-1])
    median = statistics.median(seconds)
    return {
        "preset": preset,
        "chip_size": chip_size,
        "batch_size": batch_size,
        "chips": chips,
        "repeats": repeats,
        "median_seconds": round(median, 4),
        "chips_per_second": round(chips / median, 2),
        "device": choice.to_dict(),
        "gpu_memory_peak_gib": (
            round(torch.cuda.max_memory_allocated() / 2**30, 2) if choice.device == "cuda" else None
        ),
    }


def estimate(chips_per_second: float, release_chips: int, usd_per_hour: float | None) -> dict:
    """Hours (and dollars, given a price) to cache ``release_chips`` chips at that rate."""
    hours = release_chips / chips_per_second / 3600
    return {
        "release_chips": release_chips,
        "hours": round(hours, 2),
        "usd": None if usd_per_hour is None else round(hours * usd_per_hour, 2),
        "usd_per_hour": usd_per_hour,
    }


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="large", help="encoder preset: tiny | small | base | large")
    parser.add_argument("--chips", type=int, default=256, help="chips per timed repeat")
    parser.add_argument("--batch-size", type=int, default=32, help="chips per forward pass")
    parser.add_argument("--chip-size", type=int, default=256, help="side of a chip in pixels")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats (the median is reported)")
    parser.add_argument("--device", default="auto", help="auto | cuda | cpu")
    parser.add_argument("--precision", default="bf16-mixed", help="bf16-mixed | 32-true")
    parser.add_argument("--release-chips", type=int, default=RELEASE_CHIPS, help="chips of the whole release")
    parser.add_argument(
        "--usd-per-hour", type=float, default=None, help="instance price for the cost estimate"
    )
    parser.add_argument("--out", default=None, help="also write the figures as JSON to this path")
    args = parser.parse_args(argv)
    result = measure(
        args.preset, args.chips, args.batch_size, args.chip_size, args.repeats, args.device, args.precision
    )
    result["release"] = estimate(result["chips_per_second"], args.release_chips, args.usd_per_hour)
    text = json.dumps(result, indent=2)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    log.info("%s", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Peak memory of the synchronous API under hostile payloads. Prints figures; not a test.

Each payload (at most 6 MB of base64, Lambda's request limit) is served in a fresh child process
by :func:`inference.sync_api.predict_request`; the figure is the child's peak RSS above its idle
RSS (imports done, model loaded). The model is a constant-probability stand-in, so the figures are
the API's own cost (decoding, checks, the sliding window, the response); the model's activations
are bounded by the batch size and measured by ``make bench``.

    python -m setup.tools.bench.sync_memory
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import logging
import subprocess
import sys

import numpy as np

from core.logs import configure_console

log = logging.getLogger(__name__)

LIMIT_MB = 300.0
PAYLOAD_LIMIT = 6 * 1024 * 1024

_CHILD = r"""
import base64, json, resource, sys
import numpy as np
from inference.predict import InvalidImageError
from inference.sync_api import predict_request

class Uniform:
    backend, num_classes, metadata = "stand-in", 7, {}
    def predict_proba(self, chips):
        return np.full((chips.shape[0], 7, *chips.shape[-2:]), 1 / 7, np.float32)

body = json.loads(sys.stdin.read())
idle = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    out = predict_request(Uniform(), body)
    outcome = f"200 {out['shape'][1]}x{out['shape'][0]}"
    size = len(json.dumps(out))
except InvalidImageError as exc:
    outcome, size = "400 " + str(exc)[:70], 0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"outcome": outcome, "above_idle_mb": (peak - idle) / 1024, "response_bytes": size}))
"""


def _geotiff(side: int, block: int, sparse: bool) -> bytes:
    from rasterio.io import MemoryFile
    from rasterio.transform import from_origin

    profile = dict(driver="GTiff", width=side, height=side, count=4, dtype="uint8", crs="EPSG:32618",
                   transform=from_origin(400000, 4300000, 1, 1), tiled=True, blockxsize=block,
                   blockysize=block, compress="deflate")  # fmt: skip
    with MemoryFile() as mem:
        with mem.open(**profile, SPARSE_OK=sparse) as dst:
            if not sparse:  # smooth fields compress like real imagery's large uniform areas
                ramp = (np.add.outer(np.arange(side), np.arange(side)) // 96 % 200 + 20).astype(np.uint8)
                dst.write(np.stack([ramp, ramp // 2 + 10, 255 - ramp, ramp // 3 + 40]))
        return mem.read()


def _npy(shape: tuple[int, ...]) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.random.default_rng(0).integers(1, 255, size=shape, dtype=np.uint8))
    return buffer.getvalue()


def payloads() -> dict[str, dict]:
    b64 = lambda raw: base64.b64encode(raw).decode()  # noqa: E731
    return {
        "valid GeoTIFF 1536² (the largest accepted)": {"image": b64(_geotiff(1536, 512, sparse=False))},
        "sparse GeoTIFF declaring 20,000²": {"image": b64(_geotiff(20_000, 256, sparse=True))},
        "sparse GeoTIFF declaring 200,000²": {"image": b64(_geotiff(200_000, 4096, sparse=True))},
        ".npy filling the 6 MB payload (4x1050x1050)": {"image": b64(_npy((4, 1050, 1050)))},
        "raw bytes declaring 4x100,000²": {"image": b64(b"\0" * 4096), "shape": [4, 100_000, 100_000]},
    }


def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args(argv)
    configure_console()
    worst = 0.0
    for name, body in payloads().items():
        text = json.dumps(body)
        if len(text) > PAYLOAD_LIMIT:
            log.info("%-46s skipped: %d bytes is over the 6 MB request limit", name, len(text))
            continue
        child = subprocess.run(
            [sys.executable, "-c", _CHILD], input=text, capture_output=True, text=True, check=True
        )
        row = json.loads(child.stdout.strip().splitlines()[-1])
        worst = max(worst, row["above_idle_mb"])
        log.info(
            "%-46s payload %5.2f MB  peak %6.1f MB above idle  -> %s",
            name,
            len(text) / 2**20,
            row["above_idle_mb"],
            row["outcome"],
        )
    verdict = "MET" if worst <= LIMIT_MB else "MISSED"
    log.info("worst %.1f MB above idle (target <= %.0f MB): %s", worst, LIMIT_MB, verdict)
    return 0


if __name__ == "__main__":
    sys.exit(main())

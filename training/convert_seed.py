"""Import the seed's Chesapeake checkpoint into our compact export.

The deployment this platform replaces served ``chesapeake-7class-segment_*.ckpt``: a Lightning checkpoint
of Clay's ``Segmentor`` with ``model.encoder.*`` and ``model.{conv1,bn1,conv2,bn2,conv_ps,
conv_out}.*`` (BatchNorm running statistics included). This reads it memory-mapped, loads it
strictly into a :class:`~training.models.head.ClaySegmenter`, folds the patch embedding for
the NAIP wavelengths and writes the fp16 safetensors export (~0.6 GB for ``large``).

Usage::

    python -m training.convert_seed seed.ckpt s3://models/seed/model.safetensors --preset large
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from core.logs import configure_console
from training.models.checkpoint import load_seed_segmenter
from training.models.export import save_export

log = logging.getLogger(__name__)

__all__ = ["convert_seed_checkpoint", "main"]


def convert_seed_checkpoint(
    src: str | os.PathLike[str],
    dst_uri: str,
    preset: str = "large",
    reference_stats: dict | None = None,
    extra: dict | None = None,
) -> str:
    """Convert a seed-layout checkpoint at ``src`` into an export at ``dst_uri``; returns the URI.

    Raises :class:`~training.models.checkpoint.CheckpointMismatchError` naming every key that
    does not fit the ``preset``.
    """
    model = load_seed_segmenter(src, preset=preset)
    provenance = {
        "source_checkpoint": Path(str(src)).name,
        "converted_from": "Chesapeake segmentor checkpoint of the replaced deployment",
    }
    return save_export(model, dst_uri, reference_stats=reference_stats, extra={**provenance, **(extra or {})})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("src", help="seed checkpoint (.ckpt), local path or URI")
    parser.add_argument("dst", help="destination export URI (.safetensors)")
    parser.add_argument("--preset", default="large", help="Clay preset of the checkpoint (default: large)")
    args = parser.parse_args(argv)
    configure_console()
    uri = convert_seed_checkpoint(args.src, args.dst, preset=args.preset)
    log.info("wrote %s", uri)
    return 0


if __name__ == "__main__":
    sys.exit(main())

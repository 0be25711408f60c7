"""Writes ``clay_v15_state_dict.json``: the key names and shapes of the official Clay v1.5 checkpoints.

The source is the listing of the official checkpoints' state dicts (``clay_v15_state_dict.tsv``:
key, shape, dtype per line), which lists the large encoder's transformer layers 0 and 23 in full
and states that layers 0..23 repeat the same keys; the JSON spells every layer out. Run from the
repository root::

    .venv/bin/python -m tests.data.clay_v15_keys ../shared/clay_v15_state_dict.tsv
"""

from __future__ import annotations

import json
import logging
import re
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parent / "clay_v15_state_dict.json"
#: The transformer depth of Clay v1.5's large preset (layers 0..23).
LARGE_DEPTH = 24
HEAD_SECTION = "Chesapeake segmentation checkpoint"
LAYER_PREFIX = "transformer.layers."

log = logging.getLogger(__name__)


def _shape(text: str) -> list[int]:
    return [int(s) for s in text.strip("[]").split(",") if s.strip()]


def parse_listing(text: str) -> dict[str, dict[str, list[int]]]:
    """The encoder keys (every layer spelled out) and the seed head's keys of a state-dict listing."""
    sections: dict[str, dict[str, list[int]]] = {"encoder": {}, "seed_head": {}}
    current = sections["encoder"]
    for line in text.splitlines():
        if line.startswith("#"):
            if HEAD_SECTION in line:
                current = sections["seed_head"]
            continue
        if line.strip():
            key, shape, _dtype = line.split("\t")
            current[key] = _shape(shape)
    listed = sections["encoder"]
    encoder = {k: v for k, v in listed.items() if not k.startswith(LAYER_PREFIX)}
    block = {k.split(".", 3)[3]: v for k, v in listed.items() if k.startswith(LAYER_PREFIX + "0.")}
    for i in range(LARGE_DEPTH):
        layer = {f"{LAYER_PREFIX}{i}.{k}": v for k, v in block.items()}
        # The layers the listing spells out must be the repeated block, not something else.
        for key, shape in layer.items():
            if key in listed and listed[key] != shape:
                raise ValueError(f"{key}: listed {listed[key]}, layer 0 has {shape}")
        encoder.update(layer)
    unexpected = {k for k in listed if k.startswith(LAYER_PREFIX)} - set(encoder)
    if unexpected:
        raise ValueError(f"listed layer keys outside layers 0..{LARGE_DEPTH - 1}: {sorted(unexpected)}")
    sections["encoder"] = dict(sorted(encoder.items()))
    return sections


def main(argv: list[str]) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    listing = Path(argv[0])
    sections = parse_listing(listing.read_text())
    document = {
        "source": f"{listing.name}: the official Clay v1.5 checkpoint (large encoder, keys prefixed "
        "'model.encoder.') and the Chesapeake seed 000 segmentation checkpoint (head, keys prefixed 'model.')",
        "generated_by": "python -m tests.data.clay_v15_keys <listing.tsv>",
        **sections,
    }
    # One key per line: shapes stay on their key's line so diffs read key by key.
    text = re.sub(
        r"\[[\d,\s]*\]", lambda m: json.dumps(json.loads(m.group(0))), json.dumps(document, indent=1)
    )
    OUT.write_text(text + "\n")
    log.info(
        "wrote %s: %d encoder keys, %d head keys", OUT, len(sections["encoder"]), len(sections["seed_head"])
    )


if __name__ == "__main__":
    main(sys.argv[1:])

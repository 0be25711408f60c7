"""One manifest block predicted with the settings' tiling: the champion's infer step and the
challenger's shadow blocks predict the same way."""

from __future__ import annotations

from typing import Any

from inference.payloads import BlockItem
from inference.settings import ChainSettings


def predict_item(settings: ChainSettings, predictor: Any, path: str, item: BlockItem) -> Any:
    """The block ``item`` names of the scene at local ``path``, predicted with the settings' tiling."""
    from inference.predict import predict_block

    return predict_block(
        predictor,
        path,
        item.block,
        block_chips=item.block_chips,
        chip_size=settings.chip_size,
        overlap=settings.overlap,
        batch_size=settings.batch_size,
        max_pixels=settings.max_pixels,
        low_confidence_threshold=settings.low_confidence_threshold,
        expected_window=item.window,
    )

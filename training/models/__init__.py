"""Clay v1.5 encoder, Chesapeake head, checkpoint filters and the compact export.

Nothing here imports Lightning, Hydra, MLflow or Airflow: the inference image loads exports
with torch, numpy and safetensors only. The LightningModule lives in ``training.module``.
"""

from training.models.checkpoint import (
    CheckpointMismatchError,
    checkpoint_filter_fn,
    load_encoder,
    load_encoder_state_dict,
    load_seed_segmenter,
)
from training.models.clay import PRESETS, ClayConfig, ClayEncoder, FoldedPatchEmbed, build_encoder
from training.models.export import load_export, read_export_metadata, save_export
from training.models.head import ChesapeakeHead, ClaySegmenter, build_segmenter

__all__ = [
    "PRESETS",
    "CheckpointMismatchError",
    "ChesapeakeHead",
    "ClayConfig",
    "ClayEncoder",
    "ClaySegmenter",
    "FoldedPatchEmbed",
    "build_encoder",
    "build_segmenter",
    "checkpoint_filter_fn",
    "load_encoder",
    "load_encoder_state_dict",
    "load_export",
    "load_seed_segmenter",
    "read_export_metadata",
    "save_export",
]

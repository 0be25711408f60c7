"""The compact export run eagerly with PyTorch on the CPU: the fp32 reference and fallback backend.

Registered with :func:`inference.runtime.load_predictor` as backend ``"torch"`` through the
``landcover.backends`` entry point (pyproject), so inference never imports the model code.
"""

from __future__ import annotations

import logging

import numpy as np

from inference.runtime import check_chips, default_num_threads

log = logging.getLogger(__name__)


class TorchPredictor:
    """The compact export run with PyTorch on the CPU.

    Args:
        export_path: local path, ``file://`` or ``s3://`` URI of the ``.safetensors`` export.
        dtype: ``"float32"`` (default) or ``"bfloat16"`` (half the weight memory; fast only on
            CPUs with native bf16). Probabilities are always returned as float32.
        num_threads: intra-op threads; None uses :func:`default_num_threads`.
    """

    backend = "torch"

    def __init__(self, export_path: str, dtype: str = "float32", num_threads: int | None = None) -> None:
        import torch

        from training.models.export import load_export

        dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16}
        if dtype not in dtypes:
            raise ValueError(f"dtype must be one of {sorted(dtypes)}, got {dtype!r}")
        threads = num_threads or default_num_threads()
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
        self._torch = torch
        self.export_path = str(export_path)
        self.dtype = dtype
        self.num_threads = threads
        self.model, self.metadata = load_export(self.export_path, dtype=dtypes[dtype])
        self.num_classes = int(self.model.num_classes)
        self.patch_size = int(self.model.encoder.patch_size)
        log.info(
            "loaded %s (%s, %d classes, %s, %d threads)",
            self.export_path,
            self.metadata.get("preset"),
            self.num_classes,
            dtype,
            threads,
        )

    def predict_proba(self, chips: np.ndarray) -> np.ndarray:
        """Softmax probabilities float32 ``[B, K, S, S]`` for normalised float32 ``[B, 4, S, S]``."""
        arr = check_chips(chips)
        torch = self._torch
        with torch.inference_mode():
            logits = self.model.predict_logits(torch.from_numpy(np.ascontiguousarray(arr)))
            return logits.float().softmax(dim=1).numpy()  # (B, K, S, S)

    def __repr__(self) -> str:
        return f"TorchPredictor({self.export_path!r}, dtype={self.dtype!r}, threads={self.num_threads})"

"""The errors of reading a checkpoint: one family, :class:`CheckpointError` (a ``ValueError``).

Every reading failure, whatever the layer that found it (zip archive, pickle, storage), is one
of these and names the file (and, when reading tensors, the tensor).
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = [
    "CheckpointError",
    "InsufficientDiskError",
    "NotACheckpointError",
    "OversizedCheckpointError",
    "TruncatedCheckpointError",
    "UnsafeCheckpointError",
]


class CheckpointError(ValueError):
    """Base class of every checkpoint reading or matching failure."""


class NotACheckpointError(CheckpointError):
    """The file is not a torch checkpoint (zip or legacy) or a safetensors file, or holds no state dict."""


class TruncatedCheckpointError(CheckpointError):
    """The file ends before its data does (an interrupted download or copy)."""

    def __init__(self, message: str, missing: Iterable[str] = ()) -> None:
        self.missing = list(missing)
        super().__init__(message)


class UnsafeCheckpointError(CheckpointError):
    """The pickle names code to run at load time. Nothing of it was run."""

    def __init__(self, source: str, global_name: str, reason: str) -> None:
        self.source, self.global_name = source, global_name
        super().__init__(
            f"{source}: refused to load: its pickle {reason} ({global_name}). Nothing from the "
            "file was imported or run. If you trust the file, re-save just its weights on a "
            "machine where running it is acceptable, e.g. torch.save(torch.load(path, "
            "weights_only=False)['state_dict'], 'weights.pt'); if the name is a plain data "
            "class, add it to model.checkpoint_allow_classes (it still becomes an inert stand-in)"
        )


class InsufficientDiskError(CheckpointError):
    """A remote file must be copied to local disk first and there is not enough room."""


class OversizedCheckpointError(CheckpointError):
    """Reading the file would take more memory than it declares or than the configured limits
    allow (a decompression, memo or nesting bomb, or a pickle over ``max_pickle_bytes``)."""

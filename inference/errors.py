"""The domain errors of the inference chain's steps."""

from __future__ import annotations


class ChainError(RuntimeError):
    """Base class of the chain's domain errors."""


class NoChampionError(ChainError):
    """The registry has no champion model to predict with."""


class ContentChangedError(ChainError):
    """The bytes at a scene's URI no longer match its sha256 (the key was overwritten)."""

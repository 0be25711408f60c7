"""The object storage the chain's steps read and write: the settings' S3 endpoint."""

from __future__ import annotations

from core import storage
from inference.settings import ChainSettings


def configure_storage(settings: ChainSettings) -> None:
    """Point the storage layer at the settings' S3 endpoint when one is set and differs."""
    if settings.aws_endpoint_url and settings.aws_endpoint_url != storage.endpoint_url():
        storage.configure(endpoint_url=settings.aws_endpoint_url, region=settings.aws_region)

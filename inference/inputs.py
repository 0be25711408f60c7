"""The chain's inputs: the images under the input prefix, and a scene's bytes checked
against the sha256 it was registered by."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path

from core import storage
from inference.errors import ContentChangedError
from inference.payloads import SceneItem
from inference.settings import ChainSettings

IMAGE_SUFFIXES = (".tif", ".tiff")


@dataclass(frozen=True)
class ListedObject:
    uri: str
    etag: str
    size: int


def list_objects(prefix: str) -> list[ListedObject]:
    """Image objects under ``prefix`` with an ETag-like tag, from one (paginated) listing.

    The same listing :func:`core.storage.list_uris` does, with details kept: S3's ETag, or
    size + mtime for local files, so unchanged keys are recognised without reading them.
    """
    fs, path = storage.filesystem(prefix)
    s3 = prefix.startswith("s3://")
    try:
        found = fs.find(path, detail=True)
    except FileNotFoundError:
        return []
    out = []
    for name, info in sorted(found.items()):
        if not name.lower().endswith(IMAGE_SUFFIXES) or info.get("type") == "directory":
            continue
        uri = "s3://" + name.lstrip("/") if s3 else "file://" + name
        # Locally size + mtime is not enough: `cp -p` keeps both. ctime and inode change on any rewrite.
        tag = (
            str(info.get("ETag", "")).strip('"')
            if s3
            else f"{info.get('size')}-{info.get('mtime')}-{info.get('created')}-{info.get('ino')}"
        )
        out.append(ListedObject(uri, tag or f"size-{info.get('size')}", int(info.get("size") or 0)))
    return out


def local_copy(settings: ChainSettings, item: SceneItem) -> tuple[str, bool]:
    """A local path of the scene's bytes, checked against its sha256; (path, is_temporary)."""
    local = storage.local_path(item.uri)
    if local is not None:
        path, temporary = local, False
    else:
        # A name of its own: two attempts on one scene in one process (the local runner with
        # --concurrency, a lease takeover) must not delete each other's copy.
        path = Path(settings.scene_cache_dir) / f"{item.sha256}-{uuid.uuid4().hex[:8]}.tif"
        storage.download(item.uri, path)
        temporary = True
    sha, _ = storage.sha256_of(storage.to_uri(path))
    if sha != item.sha256:
        if temporary:
            path.unlink(missing_ok=True)
        raise ContentChangedError(
            f"{item.uri} now holds sha256 {sha[:12]}…, not scene {item.scene_id}'s {item.sha256[:12]}…; "
            "the key was overwritten (the next process run registers the new content)"
        )
    return str(path), temporary

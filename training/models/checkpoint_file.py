"""Open a torch checkpoint without running its pickle, and read only the tensors asked for.

:func:`open_checkpoint` reads the archive (:mod:`training.models.checkpoint_archive`) and its
pickle (:mod:`training.models.unpickler`), then reads only the storages the caller asks for:
from a local file, read-only shared maps of just their byte ranges (or copies, ``copy=True``);
from an ``s3://`` object, ranged reads (the zip's central directory, ``data.pkl`` and the
wanted members). Bounds: ``data.pkl`` inflates to at most ``max_pickle_bytes``
(:data:`~training.models.unpickler.MAX_PICKLE_BYTES`), each storage to exactly the size its
pickle declares; every failure is a :class:`~training.models.checkpoint_errors.CheckpointError`
naming the file (and the tensor).

Why not ``torch.load(weights_only=True)`` with ``safe_globals``: it refuses Lightning's
``AttributeDict`` even when allow-listed (SETITEMS only on exact dict types), has no
placeholders for unknown classes, reads every storage (no subset, no ranged ``s3://``),
inflates a 1 GiB ``data.pkl`` and an oversized storage before refusing, and ``mmap=True`` maps
the whole file private-writable (fails under a memory limit). Legacy files still use it.
"""

from __future__ import annotations

import errno
import logging
import mmap
import os
import shutil
import struct
import sys
import tempfile
import warnings
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import torch

from core import storage
from training.models.checkpoint_archive import (
    _CHUNK,
    _LOCAL_HEADER,
    _check_member,
    _decompress,
    _describe,
    _Member,
    _open_zip,
    _parse_local_header,
    _sniff,
)
from training.models.checkpoint_errors import (
    CheckpointError,
    InsufficientDiskError,
    NotACheckpointError,
    OversizedCheckpointError,
    TruncatedCheckpointError,
)
from training.models.unpickler import MAX_PICKLE_BYTES, LazyTensor, OpaqueTensor, _itemsize, _StorageRef

__all__ = ["CheckpointFile", "local_copy", "open_checkpoint", "sniff"]

log = logging.getLogger(__name__)


_REMOTE_BATCH_BYTES = 16 << 20
_REMOTE_BLOCK_BYTES = 1 << 20
_SPANS_IN_FLIGHT = 2


class _CountingReader:
    """A file wrapper that counts the bytes read through it (for logs and tests)."""

    def __init__(self, raw: IO[bytes]) -> None:
        self.raw, self.bytes_read = raw, 0

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n)
        self.bytes_read += len(data)
        return data

    def seek(self, *args: int) -> int:
        return self.raw.seek(*args)

    def tell(self) -> int:
        return self.raw.tell()

    def seekable(self) -> bool:
        return True

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        self.raw.close()


@dataclass
class CheckpointFile:
    """An opened checkpoint: its unpickled object (tensors still lazy) and a way to read tensors.

    Use :func:`open_checkpoint`. ``materialize`` reads one :class:`LazyTensor`;
    ``bytes_read`` counts what came off the file or the wire so far.
    """

    source: str
    size: int
    obj: object
    members: dict[str, _Member]
    root: str
    _reader: Callable[[list[_StorageRef]], dict[str, torch.Tensor]]
    byteorder: str = "little"
    globals_seen: set[str] = field(default_factory=set)
    _counter: _CountingReader | None = None
    _range_bytes: int = 0
    #: ``(copy, storage key) -> storage``: a mapped storage is never handed out as a copy.
    _cache: dict[tuple[bool, str], torch.UntypedStorage] = field(default_factory=dict)
    #: False for a remote archive whose storages are compressed (no ranged reads): copy it first.
    in_place: bool = True
    remote: bool = False

    @property
    def bytes_read(self) -> int:
        return (self._counter.bytes_read if self._counter else 0) + self._range_bytes

    def materialize_all(
        self, tensors: Mapping[str, LazyTensor], copy: bool = False
    ) -> dict[str, torch.Tensor]:
        """Real tensors for ``{name: LazyTensor}``; only their storages are read (each once).

        Local stored members come back as views of read-only shared maps (pages read when
        touched; **never write to them**, ``clone()`` first) unless ``copy``, which reads them
        into fresh writable memory. Remote and compressed members are always copies.
        Every failure is a :class:`CheckpointError` naming the file and the tensor.
        """
        try:
            return self._materialize_all(tensors, copy)
        except CheckpointError:
            raise
        except (*_LOW_LEVEL_ERRORS, OSError) as exc:
            if isinstance(exc, OSError) and not _is_enomem(exc):
                raise
            raise _wrap(self.source, exc) from exc

    def _materialize_all(self, tensors: Mapping[str, LazyTensor], copy: bool) -> dict[str, torch.Tensor]:
        if self.byteorder != sys.byteorder:
            raise NotACheckpointError(
                f"{self.source} was saved {self.byteorder}-endian; this reader is {sys.byteorder}-endian"
            )
        need = {}
        for name, lazy in tensors.items():
            if isinstance(lazy, OpaqueTensor):
                raise NotACheckpointError(
                    f"{self.source}: {name} is a {lazy.rebuild} tensor, which this reader does not load"
                )
            if not isinstance(lazy, LazyTensor):
                raise NotACheckpointError(f"{self.source}: {name} is {type(lazy).__name__}, not a tensor")
            if (copy, lazy.storage.key) not in self._cache:
                need[lazy.storage.key] = lazy.storage
        missing = [k for k in need if f"{self.root}/data/{k}" not in self.members]
        if missing:
            names = [n for n, t in tensors.items() if t.storage.key in missing]
            raise TruncatedCheckpointError(
                f"{self.source}: the data of {len(names)} tensors is not in the file "
                f"({', '.join(_describe(n, tensors[n]) for n in names[:8])}{', ...' if len(names) > 8 else ''})",
                names,
            )
        total = sum(s.nbytes for s in need.values())
        log.info(
            "%s: reading %d tensors, %.1f MB of %.1f MB",
            self.source,
            len(tensors),
            total / 1e6,
            self.size / 1e6,
        )
        owner = {}
        for name, lazy in tensors.items():
            owner.setdefault(lazy.storage.key, name)
        # One storage at a time, so a failure names its tensor (remote spans are batched inside).
        batch = [list(need.values())] if self.remote else [[ref] for ref in need.values()]
        for refs in batch:
            try:
                self._cache.update({(copy, k): v for k, v in self._reader(refs, copy).items()})
            except (CheckpointError, *_LOW_LEVEL_ERRORS, OSError) as exc:
                if isinstance(exc, OSError) and not _is_enomem(exc):
                    raise
                what = f"tensor {owner[refs[0].key]}" if len(refs) == 1 else f"one of {len(refs)} tensors"
                err = exc if isinstance(exc, CheckpointError) else _wrap(self.source, exc)
                err.args = (f"{err.args[0] if err.args else err} ({what})",)
                raise err from exc
        out = {}
        for name, lazy in tensors.items():
            flat = self._cache[(copy, lazy.storage.key)]
            span = (
                sum((s - 1) * st for s, st in zip(lazy.size, lazy.stride, strict=True)) + 1
                if all(lazy.size)
                else 0
            )
            if (lazy.offset + span) * _itemsize(lazy.dtype) > lazy.storage.nbytes:
                raise NotACheckpointError(f"{self.source}: {name} {list(lazy.size)} reaches past its storage")
            try:
                out[name] = torch.empty((0,), dtype=lazy.dtype).set_(
                    flat, lazy.offset, lazy.size, lazy.stride
                )
            except _LOW_LEVEL_ERRORS as exc:
                raise NotACheckpointError(f"{self.source}: tensor {name} cannot be rebuilt: {exc}") from exc
        return out


#: What the standard library and torch raise on hostile input; wrapped as CheckpointError at the
#: boundaries (open_checkpoint, materialize_all) so callers see one family naming the file.
_LOW_LEVEL_ERRORS = (
    RuntimeError,
    ValueError,
    TypeError,
    RecursionError,
    MemoryError,
    OverflowError,
    struct.error,
    zipfile.BadZipFile,
    zlib.error,
    EOFError,
    KeyError,
    IndexError,
)


def _is_enomem(exc: BaseException) -> bool:
    # mmap and read fail with ENOMEM under a memory limit; other OSErrors (network, missing
    # file) are not about the file's content and pass through unchanged.
    return isinstance(exc, OSError) and exc.errno == errno.ENOMEM


def _wrap(source: str, exc: BaseException) -> CheckpointError:
    if isinstance(exc, RecursionError | MemoryError) or _is_enomem(exc):
        return OversizedCheckpointError(f"{source}: reading it needs more memory than is available: {exc!r}")
    if isinstance(exc, EOFError):
        return TruncatedCheckpointError(f"{source}: ends early: {exc}")
    return NotACheckpointError(f"{source}: cannot be read as a torch checkpoint: {type(exc).__name__}: {exc}")


def _local_reader(path: Path, members: dict[str, _Member], root: str, size: int, source: str) -> Callable:
    def read(refs: list[_StorageRef], copy: bool) -> dict[str, torch.UntypedStorage]:
        out = {}
        with open(path, "rb") as f:
            zf: zipfile.ZipFile | None = None
            try:
                for ref in refs:
                    member = members[f"{root}/data/{ref.key}"]
                    f.seek(member.header_offset)
                    header = f.read(_LOCAL_HEADER.size + 1024)
                    data_offset, method, _, _ = _parse_local_header(header, member.header_offset)
                    _check_member(member, ref, data_offset, size, source)
                    if method != zipfile.ZIP_STORED:
                        zf = zf or zipfile.ZipFile(f)
                        out[ref.key] = _decompress(zf, member, ref, source)
                    elif copy:
                        out[ref.key] = _read_range(f, data_offset, ref.nbytes)
                    else:
                        out[ref.key] = _map_range(f, data_offset, ref.nbytes)
            finally:
                if zf is not None:
                    zf.close()
        return out

    return read


def _read_range(f: IO[bytes], offset: int, nbytes: int) -> torch.UntypedStorage:
    """``nbytes`` from ``offset`` into fresh (writable, anonymous) memory: what is kept, once."""
    buf = torch.empty(nbytes, dtype=torch.uint8)
    view, done = memoryview(buf.numpy()), 0
    f.seek(offset)
    while done < nbytes:
        n = f.readinto(view[done : done + _CHUNK])
        if not n:
            raise TruncatedCheckpointError(f"file ends {nbytes - done} bytes before the storage does")
        done += n
    return buf.untyped_storage()


def _map_range(f: IO[bytes], offset: int, nbytes: int) -> torch.UntypedStorage:
    """A read-only, shared map of just ``[offset, offset + nbytes)`` (page-aligned).

    Shared read-only pages are page cache: the kernel neither charges them as commit (a private
    writable map of a 5 GB file fails on a host with less RAM+swap) nor counts untouched ones.
    The storage must not be written (the pages are PROT_READ); copy it to modify it.
    """
    if nbytes == 0:
        return torch.UntypedStorage(0)
    start = offset - offset % mmap.ALLOCATIONGRANULARITY
    mapped = mmap.mmap(f.fileno(), offset + nbytes - start, access=mmap.ACCESS_READ, offset=start)
    with warnings.catch_warnings():
        # torch warns that the buffer is not writable: that is the point, and it is documented.
        warnings.filterwarnings("ignore", message="The given buffer is not writable")
        flat = torch.frombuffer(mapped, dtype=torch.uint8, count=nbytes, offset=offset - start)
    return flat.untyped_storage()


_HEADER_SLACK = 1024  # local header extra field (torch pads members to 64-byte alignment)
_MERGE_GAP = 1 << 20  # members closer than this are fetched in one ranged GET


def _spans(wanted: list[tuple[_Member, _StorageRef]], size: int) -> list[tuple[int, int, list]]:
    """Coalesced byte spans ``(start, end, members)`` covering each member's header and data.

    Members written one after another (an encoder's tensors are) come in a few large GETs
    instead of one or two per tensor; a span grows up to ``_REMOTE_BATCH_BYTES`` unless a
    single member is larger.
    """
    spans: list[tuple[int, int, list]] = []
    for member, ref in sorted(wanted, key=lambda item: item[0].header_offset):
        start = member.header_offset
        end = min(size, start + _LOCAL_HEADER.size + len(member.name.encode()) + _HEADER_SLACK + ref.nbytes)
        if spans and start - spans[-1][1] <= _MERGE_GAP and end - spans[-1][0] <= _REMOTE_BATCH_BYTES:
            s0, e0, items = spans[-1]
            spans[-1] = (s0, max(e0, end), [*items, (member, ref)])
        else:
            spans.append((start, end, [(member, ref)]))
    return spans


def _remote_reader(
    uri: str, members: dict[str, _Member], root: str, size: int, source: str, file: CheckpointFile
) -> Callable:
    def read(refs: list[_StorageRef], copy: bool) -> dict[str, torch.UntypedStorage]:
        wanted = [(members[f"{root}/data/{r.key}"], r) for r in refs]
        if any(m.compress_type != zipfile.ZIP_STORED for m, _ in wanted):
            raise NotACheckpointError(f"{source}: compressed zip members cannot be read in place")
        out: dict[str, torch.UntypedStorage] = {}
        spans = _spans(wanted, size)
        total, done = sum(e - s for s, e, _ in spans), 0
        for i in range(0, len(spans), _SPANS_IN_FLIGHT):  # a few 16 MB GETs in flight at a time
            group = spans[i : i + _SPANS_IN_FLIGHT]
            blobs = storage.read_ranges(uri, [(s, e) for s, e, _ in group])
            for (start, _end, items), blob in zip(group, blobs, strict=True):
                file._range_bytes += len(blob)
                done += len(blob)
                for member, ref in items:
                    at = member.header_offset - start
                    head = blob[at : at + _LOCAL_HEADER.size + _HEADER_SLACK]
                    data_offset = _parse_local_header(head, member.header_offset)[0]
                    _check_member(member, ref, data_offset, size, source)
                    lo = data_offset - start
                    if lo + ref.nbytes > len(blob):
                        raise TruncatedCheckpointError(
                            f"{source}: storage {ref.key} ends past the data received: truncated"
                        )
                    buf = torch.empty(ref.nbytes, dtype=torch.uint8)
                    buf.numpy()[:] = memoryview(blob)[lo : lo + ref.nbytes]
                    out[ref.key] = buf.untyped_storage()
            del blobs
            log.info("%s: %.0f / %.0f MB", source, done / 1e6, total / 1e6)
        return out

    return read


@contextmanager
def open_checkpoint(
    source: str | os.PathLike[str],
    allow_classes: Iterable[str] = (),
    *,
    max_pickle_bytes: int = MAX_PICKLE_BYTES,
) -> Iterator[CheckpointFile]:
    """Open a torch zip checkpoint (local path, ``file://`` or ``s3://``) without running it.

    Local storages are mapped read-only and shared, each on its own byte range, when read;
    ``s3://`` objects are read in place with ranged GETs. ``data.pkl`` may inflate to at most
    ``max_pickle_bytes``; each storage to exactly the size the pickle declares for it.
    Raises :class:`NotACheckpointError`, :class:`TruncatedCheckpointError`,
    :class:`UnsafeCheckpointError` or :class:`OversizedCheckpointError` (all
    :class:`CheckpointError`, naming the file). Legacy (pre-1.6, non-zip) torch files and
    safetensors files are not handled here (see :mod:`training.models.checkpoint`).
    """
    uri = str(source)
    try:
        ckpt = _open(uri, allow_classes, max_pickle_bytes)
    except CheckpointError:
        raise
    except (*_LOW_LEVEL_ERRORS, OSError) as exc:
        if isinstance(exc, OSError) and not _is_enomem(exc):
            raise
        raise _wrap(uri, exc) from exc
    yield ckpt  # outside the try: the caller's own errors in the with-block pass through


def _open(uri: str, allow_classes: Iterable[str], max_pickle_bytes: int) -> CheckpointFile:
    local = storage.local_path(uri)
    if local is not None:
        if not local.exists():
            raise FileNotFoundError(f"no checkpoint at {uri}")
        size = local.stat().st_size
        with open(local, "rb") as raw:
            kind = _sniff(raw.read(64))
            if kind != "zip":
                raise NotACheckpointError(_not_zip_message(uri, kind, size))
            raw.seek(0)
            counter = _CountingReader(raw)
            obj, members, root, order, seen = _open_zip(counter, size, uri, allow_classes, max_pickle_bytes)
        reader = _local_reader(local, members, root, size, uri)
        return CheckpointFile(uri, size, obj, members, root, reader, order, seen, counter)
    fs, path = storage.filesystem(uri)
    try:
        size = int(fs.size(path))
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"no checkpoint at {uri}") from exc
    kind = _sniff(storage.read_ranges(uri, [(0, min(size, 64))])[0])
    if kind != "zip":
        raise NotACheckpointError(_not_zip_message(uri, kind, size))
    # Small blocks: the zip directory and data.pkl are fetched without reading ahead 50 MB.
    with fs.open(path, "rb", block_size=_REMOTE_BLOCK_BYTES, cache_type="readahead") as handle:
        counter = _CountingReader(handle)
        obj, members, root, order, seen = _open_zip(counter, size, uri, allow_classes, max_pickle_bytes)
    ckpt = CheckpointFile(uri, size, obj, members, root, lambda refs, copy: {}, order, seen, counter)
    ckpt._reader = _remote_reader(uri, members, root, size, uri, ckpt)
    ckpt.remote = True
    ckpt.in_place = all(
        m.compress_type == zipfile.ZIP_STORED
        for name, m in members.items()
        if name.startswith(f"{root}/data/")
    )
    return ckpt


def _not_zip_message(uri: str, kind: str, size: int) -> str:
    what = {
        "legacy": "a legacy (pre-1.6) torch file",
        "safetensors": "a safetensors file",
        "pickle": "a plain pickle",
    }.get(kind, "not a torch checkpoint or safetensors file")
    return f"{uri} ({size} bytes) is {what}, not a torch zip checkpoint"


def sniff(uri: str) -> str:
    """``zip``, ``legacy``, ``safetensors``, ``pickle`` or ``unknown`` from the first bytes of ``uri``."""
    local = storage.local_path(uri)
    if local is not None:
        if not local.exists():
            raise FileNotFoundError(f"no checkpoint at {uri}")
        with open(local, "rb") as f:
            return _sniff(f.read(64))
    fs, path = storage.filesystem(uri)
    try:
        size = int(fs.size(path))
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"no checkpoint at {uri}") from exc
    return _sniff(storage.read_ranges(uri, [(0, min(size, 64))])[0])


@contextmanager
def local_copy(uri: str) -> Iterator[Path]:
    """A local path for ``uri``: the file itself, or a streamed temporary copy of a remote one.

    Before copying, checks the temp folder has room; :class:`InsufficientDiskError` says how
    much it needs (point ``TMPDIR`` elsewhere to use another disk).
    """
    local = storage.local_path(uri)
    if local is not None:
        if not local.exists():
            raise FileNotFoundError(f"no checkpoint at {uri}")
        yield local
        return
    fs, path = storage.filesystem(uri)
    try:
        size = int(fs.size(path))
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"no checkpoint at {uri}") from exc
    folder = tempfile.gettempdir()
    free = shutil.disk_usage(folder).free
    if free < size:
        raise InsufficientDiskError(
            f"{uri} cannot be read in place, and copying it needs {size / 1e9:.2f} GB free in "
            f"{folder}, which has {free / 1e9:.2f} GB: set TMPDIR to a larger disk"
        )
    fd, tmp = tempfile.mkstemp(suffix=Path(path).suffix, prefix="ckpt-")
    os.close(fd)
    log.info("copying %s (%.2f GB) to %s", uri, size / 1e9, tmp)
    try:
        try:
            storage.download(uri, tmp)
        except OSError as exc:
            raise InsufficientDiskError(
                f"copying {uri} ({size / 1e9:.2f} GB) to {folder} failed: {exc}"
            ) from exc
        yield Path(tmp)
    finally:
        Path(tmp).unlink(missing_ok=True)

"""The torch zip archive: its members, their local headers, and bounded decompression.

Finds ``<root>/data.pkl`` and the storage members (from the central directory, or by walking
local headers when a truncated file has lost it, to say which tensors are gone), refuses
overlapping members, inflates ``data.pkl`` to at most the caller's limit and each storage to
exactly the size its pickle declares, and hands the pickle to
:mod:`training.models.unpickler`.
"""

from __future__ import annotations

import itertools
import pickle
import struct
import zipfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import IO

import torch

from training.models.checkpoint_errors import (
    NotACheckpointError,
    OversizedCheckpointError,
    TruncatedCheckpointError,
)
from training.models.unpickler import LazyTensor, _StorageRef, _unpickle

_LOCAL_HEADER = struct.Struct("<4sHHHHHIIIHH")  # zip local file header, 30 bytes
_LOCAL_MAGIC = b"PK\x03\x04"
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # torch's pre-1.6 (non-zip) format


@dataclass
class _Member:
    name: str
    header_offset: int
    compress_type: int
    size: int
    data_offset: int | None = None


def _parse_local_header(raw: bytes, at: int) -> tuple[int, int, int, int]:
    """``(data_offset, compress_type, compressed_size, header_len)`` from a local header."""
    sig, _v, _flag, method, _t, _d, _crc, csize, _usize, nlen, elen = _LOCAL_HEADER.unpack_from(raw, 0)
    if sig != _LOCAL_MAGIC:
        raise zipfile.BadZipFile(f"no local header at byte {at}")
    header_len = _LOCAL_HEADER.size + nlen + elen
    if csize == 0xFFFFFFFF and len(raw) >= header_len:  # zip64: sizes in the extra field
        extra = raw[_LOCAL_HEADER.size + nlen : header_len]
        i = 0
        while i + 4 <= len(extra):
            hid, hlen = struct.unpack_from("<HH", extra, i)
            if hid == 1 and hlen >= 16:
                csize = struct.unpack_from("<Q", extra, i + 12)[0]
            i += 4 + hlen
    return at + header_len, method, csize, header_len


_DESCRIPTOR_MAGIC = b"PK\x07\x08"
_SEARCH_LIMIT = 256 << 20


def _find_descriptor(f: IO[bytes], data_offset: int, file_size: int) -> int | None:
    """Size of a member written with a trailing data descriptor (sizes unknown up front), found
    by looking for the descriptor whose size field matches its position."""
    at, tail = data_offset, b""
    while at < min(file_size, data_offset + _SEARCH_LIMIT):
        f.seek(at)
        chunk = tail + f.read(1 << 20)
        if len(chunk) <= len(tail):
            return None
        base = at - len(tail)
        i = chunk.find(_DESCRIPTOR_MAGIC)
        while i >= 0:
            length = base + i - data_offset
            fields = chunk[i + 8 : i + 24]
            if (len(fields) >= 4 and struct.unpack_from("<I", fields)[0] == length) or (
                len(fields) >= 8 and struct.unpack_from("<Q", fields)[0] == length
            ):
                return length
            i = chunk.find(_DESCRIPTOR_MAGIC, i + 1)
        tail = chunk[-24:]
        at = base + len(chunk)
    return None


def _scan_local_headers(
    f: IO[bytes],
    file_size: int,
    size_of: Callable[[str], int | None] = lambda name: None,
    stop_after: str | None = None,
) -> dict[str, tuple[int, int]]:
    """Members whose data lies wholly inside the file, found by walking local headers (for a
    file whose central directory is gone). ``name -> (data_offset, size)``.

    torch writes each member with a data descriptor (sizes after the data); ``size_of(name)``
    gives the size when the caller knows it (tensor storages, from the pickle), otherwise the
    descriptor is searched for.
    """
    found: dict[str, tuple[int, int]] = {}
    at = 0
    while at + _LOCAL_HEADER.size <= file_size:
        f.seek(at)
        raw = f.read(_LOCAL_HEADER.size)
        if raw[:4] != _LOCAL_MAGIC:
            break
        flag = struct.unpack_from("<H", raw, 6)[0]
        nlen, elen = struct.unpack_from("<HH", raw, 26)
        raw += f.read(nlen + elen)
        name = raw[_LOCAL_HEADER.size : _LOCAL_HEADER.size + nlen].decode("utf-8", "replace")
        data_offset, _method, csize, _ = _parse_local_header(raw, at)
        if flag & 8:
            known = size_of(name)
            csize = known if known is not None else _find_descriptor(f, data_offset, file_size)
            if csize is None:
                break
        if data_offset + csize > file_size:
            break
        found[name] = (data_offset, csize)
        at = data_offset + csize
        if flag & 8:
            f.seek(at)
            tail = f.read(28)
            if not tail.startswith(_DESCRIPTOR_MAGIC):
                break
            at += 24 if tail[24:28] in (_LOCAL_MAGIC, b"PK\x01\x02") else 16
        if name == stop_after:
            break
    return found


def _describe(name: str, lazy: object) -> str:
    return f"{name} {list(lazy.size)}" if isinstance(lazy, LazyTensor) else name


def _sniff(head: bytes) -> str:
    if head[:4] == _LOCAL_MAGIC:
        return "zip"
    if head.startswith(pickle.dumps(_LEGACY_MAGIC, protocol=2)):  # compared, never unpickled
        return "legacy"
    if head[:1] == b"\x80":
        return "pickle"
    if len(head) >= 9 and head[8:9] == b"{":
        return "safetensors"
    return "unknown"


def _read_member(zf: zipfile.ZipFile, name: str, limit: int, source: str) -> bytes:
    """A small member (``data.pkl``, ``byteorder``), refused past ``limit`` bytes inflated.

    zipfile inflates incrementally (``decompress(data, max_length)``) and stops at the size the
    zip declares (checked against ``limit`` first), whatever the member really expands to.
    """
    info = zf.getinfo(name)
    if info.file_size > limit:
        raise OversizedCheckpointError(
            f"{source}: {name} declares {info.file_size} bytes, over the limit of {limit} "
            "(open_checkpoint(max_pickle_bytes=...))"
        )
    with zf.open(info) as fh:
        # Asking for the declared size (+1) bounds each inflate step by it, not by ``limit``.
        data = fh.read(info.file_size + 1)
    if len(data) > limit:
        raise OversizedCheckpointError(f"{source}: {name} inflates past the limit of {limit} bytes")
    return data


def _root_and_pickle(names: Iterable[str], source: str) -> tuple[str, str]:
    for name in names:
        if name.endswith("/data.pkl") and name.count("/") == 1:
            return name.split("/", 1)[0], name
    raise NotACheckpointError(f"{source} is a zip archive but not a torch checkpoint (no <root>/data.pkl)")


def _open_zip(
    raw: IO[bytes], size: int, source: str, allow_classes: Iterable[str], max_pickle_bytes: int
) -> tuple[object, dict[str, _Member], str, str, set[str]]:
    """Unpickle a torch zip archive read through ``raw``: (obj, members, root, byteorder, globals)."""
    try:
        zf = zipfile.ZipFile(raw)
    except zipfile.BadZipFile:
        return _open_truncated_zip(raw, size, source, allow_classes, max_pickle_bytes)
    with zf:
        root, pkl = _root_and_pickle(zf.namelist(), source)
        members = {
            i.filename: _Member(i.filename, i.header_offset, i.compress_type, i.compress_size)
            for i in zf.infolist()
        }
        ends = [m.header_offset + m.size for m in members.values()]
        if ends and max(ends) > size:
            raise TruncatedCheckpointError(
                f"{source}: the zip directory points past the end of the file ({size} bytes)"
            )
        _check_no_overlap(members, source)
        byteorder = (
            _read_member(zf, f"{root}/byteorder", 16, source).decode(errors="replace").strip()
            if f"{root}/byteorder" in members
            else "little"
        )
        try:
            # One read of the whole (small) pickle: on S3 that is one ranged GET, not many.
            data = _read_member(zf, pkl, max_pickle_bytes, source)
            obj, seen = _unpickle(data, source, allow_classes)
        except zipfile.BadZipFile as exc:
            raise NotACheckpointError(f"{source}: {pkl} is corrupt: {exc}") from exc
    return obj, members, root, byteorder, seen


def _check_no_overlap(members: dict[str, _Member], source: str) -> None:
    # Overlapping members are how zip bombs reuse one compressed run many times.
    ordered = sorted(members.values(), key=lambda m: m.header_offset)
    for a, b in itertools.pairwise(ordered):
        if a.header_offset + _LOCAL_HEADER.size + a.size > b.header_offset:
            raise NotACheckpointError(f"{source}: zip members {a.name} and {b.name} overlap")


def _open_truncated_zip(
    raw: IO[bytes], size: int, source: str, allow_classes: Iterable[str], max_pickle_bytes: int
) -> tuple:
    """No central directory. If it starts like a torch archive, it was cut short: say what is lost."""
    raw.seek(0)
    head = raw.read(_LOCAL_HEADER.size + 1024)
    nlen = struct.unpack_from("<H", head, 26)[0] if len(head) >= _LOCAL_HEADER.size else 0
    first = head[_LOCAL_HEADER.size : _LOCAL_HEADER.size + nlen].decode("utf-8", "replace")
    if not first.endswith("/data.pkl"):
        raise NotACheckpointError(
            f"{source} is a zip archive without a readable directory, not a torch checkpoint"
        )
    present = _scan_local_headers(raw, size, stop_after=first)
    if first not in present:
        raise TruncatedCheckpointError(
            f"{source} is truncated: it is {size} bytes and ends inside its pickle (data.pkl)"
        )
    root = first.split("/", 1)[0]
    offset, length = present[first]
    if length > max_pickle_bytes:
        raise OversizedCheckpointError(
            f"{source}: its data.pkl is {length} bytes, over the limit of {max_pickle_bytes}"
        )
    raw.seek(offset)
    obj, _seen = _unpickle(raw.read(length), source, allow_classes)
    storages = {f"{root}/data/{ref.key}": ref.nbytes for ref in _storage_refs(obj)}
    present = _scan_local_headers(raw, size, storages.get)
    state = _state_mapping(obj)
    lazy = {k: v for k, v in (state or {}).items() if isinstance(v, LazyTensor)}
    missing = [k for k, v in lazy.items() if f"{root}/data/{v.storage.key}" not in present]
    raise TruncatedCheckpointError(
        f"{source} is truncated: it is {size} bytes and ends before the zip directory. "
        f"{len(missing)} of {len(lazy)} state-dict tensors have no data in it"
        + (f", e.g. {', '.join(_describe(k, lazy[k]) for k in missing[:6])}" if missing else "")
        + ". Copy or download it again (the official clay-v1.5.ckpt is 5.16 GB)",
        missing,
    )


def _storage_refs(obj: object) -> list[_StorageRef]:
    refs: dict[str, _StorageRef] = {}
    seen: set[int] = set()
    stack = [obj]
    while stack:
        item = stack.pop()
        if isinstance(item, LazyTensor):
            refs[item.storage.key] = item.storage
            continue
        if id(item) in seen or isinstance(item, str | bytes | int | float):
            continue
        seen.add(id(item))
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list | tuple | set):
            stack.extend(item)
        if hasattr(item, "__dict__") and not isinstance(item, type):
            stack.extend(vars(item).values())
    return list(refs.values())


def _state_mapping(obj: object) -> Mapping | None:
    if isinstance(obj, Mapping):
        inner = obj.get("state_dict")
        return inner if isinstance(inner, Mapping) else obj
    return None


_CHUNK = 1 << 20
#: Deflate's best ratio is ~1032:1; a member claiming more is forged or truncated.
_MAX_DEFLATE_RATIO = 1032


def _decompress(zf: zipfile.ZipFile, member: _Member, ref: _StorageRef, source: str) -> torch.UntypedStorage:
    """Inflate one storage into a buffer of its declared size; never past it.

    zipfile inflates with ``max_length``: each ``read`` produces at most what was asked for,
    so a member that inflates to gigabytes costs ``ref.nbytes`` + one chunk before refusal.
    """
    if ref.nbytes > member.size * _MAX_DEFLATE_RATIO + _CHUNK:
        raise OversizedCheckpointError(
            f"{source}: storage {ref.key} declares {ref.nbytes} bytes from {member.size} compressed ones"
        )
    if member.size > ref.nbytes + ref.nbytes // 100 + (64 << 10):  # deflate never grows data this much
        raise OversizedCheckpointError(
            f"{source}: storage {ref.key} is {member.size} bytes compressed for {ref.nbytes} declared"
        )
    buf = torch.empty(ref.nbytes, dtype=torch.uint8)
    view, done = memoryview(buf.numpy()), 0
    with zf.open(member.name) as fh:
        while done < ref.nbytes:
            chunk = fh.read(min(_CHUNK, ref.nbytes - done))
            if not chunk:
                raise TruncatedCheckpointError(
                    f"{source}: storage {ref.key} inflates to {done} bytes, needs {ref.nbytes}"
                )
            view[done : done + len(chunk)] = chunk
            done += len(chunk)
        if fh.read(1):
            raise OversizedCheckpointError(
                f"{source}: storage {ref.key} inflates past its declared {ref.nbytes} bytes (refused)"
            )
    return buf.untyped_storage()


def _check_member(member: _Member, ref: _StorageRef, data_offset: int, size: int, source: str) -> None:
    if member.compress_type == zipfile.ZIP_STORED and member.size < ref.nbytes:
        raise TruncatedCheckpointError(
            f"{source}: storage {ref.key} holds {member.size} bytes, needs {ref.nbytes}"
        )
    if data_offset + member.size > size:
        raise TruncatedCheckpointError(
            f"{source}: storage {ref.key} ends past the end of the file ({size} bytes)"
        )

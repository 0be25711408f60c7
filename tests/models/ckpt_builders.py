"""Hand-built torch zip checkpoints: pickles of storage records, and sparse multi-GB archives.

The pickles use torch's own persistent ids and ``torch._utils._rebuild_tensor_v2``; the zip is
written here byte by byte (zip64, stored members, data 64-byte aligned as torch does), with
each member's data left as a hole, so a 5 GB checkpoint costs no disk and no time.
:func:`run_child` runs a measuring script against them in a fresh interpreter.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import struct
import subprocess
import sys
import textwrap
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

ROOT = "archive"


class Storage:
    """Pickles as torch's persistent id for a storage ``key`` of ``numel`` elements."""

    def __init__(self, key: str, numel: int, dtype: type = torch.FloatStorage) -> None:
        self.key, self.numel, self.dtype = key, numel, dtype


class Tensor:
    """Pickles as a ``_rebuild_tensor_v2`` call on a :class:`Storage`."""

    def __init__(self, storage: Storage, offset: int, size: tuple, stride: tuple) -> None:
        self.args = (storage, offset, size, stride, False, OrderedDict())

    def __reduce__(self) -> tuple:
        return torch._utils._rebuild_tensor_v2, self.args


class _Pickler(pickle.Pickler):
    def persistent_id(self, obj: object) -> object:
        if isinstance(obj, Storage):
            return ("storage", obj.dtype, obj.key, "cpu", obj.numel)
        return None


def torch_pickle(obj: object) -> bytes:
    buf = io.BytesIO()
    _Pickler(buf, protocol=2).dump(obj)
    return buf.getvalue()


def contiguous(key: str, shape: Sequence[int]) -> Tensor:
    numel, strides = 1, []
    for s in reversed(shape):
        strides.append(numel)
        numel *= s
    return Tensor(Storage(key, numel), 0, tuple(shape), tuple(reversed(strides)))


_FF = 0xFFFFFFFF


def write_sparse_zip(
    path: Path, pkl: bytes, sizes: Mapping[str, int], fill: Mapping[str, bytes] = {}
) -> None:
    """A zip64 torch archive: ``data.pkl``, ``byteorder`` and a stored member ``data/<key>`` of
    ``sizes[key]`` bytes per storage. Member data are holes except ``fill[key]`` at their start.
    CRCs of the holes are not computed (readers of stored tensor data do not check them)."""
    central: list[bytes] = []
    with open(path, "wb") as f:

        def member(name: str, nbytes: int, head: bytes) -> None:
            offset = f.tell()
            raw = name.encode()
            zip64 = struct.pack("<HHQQ", 1, 16, nbytes, nbytes)
            pad = -(offset + 30 + len(raw) + len(zip64) + 4) % 64  # data 64-byte aligned
            extra = zip64 + struct.pack("<HH", 0x4246, pad) + b"Z" * pad
            crc = 0 if len(head) < nbytes else _crc(head)
            f.write(
                struct.pack(
                    "<4sHHHHHIIIHH", b"PK\x03\x04", 45, 0, 0, 0, 0, crc, _FF, _FF, len(raw), len(extra)
                )
            )
            f.write(raw + extra)
            start = f.tell()
            f.write(head)
            f.seek(start + nbytes)  # the rest is a hole
            extra64 = struct.pack("<HHQQQ", 1, 24, nbytes, nbytes, offset)
            central.append(
                struct.pack(
                    "<4sHHHHHHIIIHHHHHII",
                    b"PK\x01\x02",
                    45,
                    45,
                    0,
                    0,
                    0,
                    0,
                    crc,
                    _FF,
                    _FF,
                    len(raw),
                    len(extra64),
                    0,
                    0,
                    0,
                    0,
                    _FF,
                )
                + raw
                + extra64
            )

        member(f"{ROOT}/data.pkl", len(pkl), pkl)
        member(f"{ROOT}/byteorder", 6, b"little")
        member(f"{ROOT}/version", 2, b"3\n")  # torch.load requires it; our reader ignores it
        for key, nbytes in sizes.items():
            member(f"{ROOT}/data/{key}", nbytes, bytes(fill.get(key, b""))[:nbytes])
        cd_start = f.tell()
        for entry in central:
            f.write(entry)
        cd_size = f.tell() - cd_start
        eocd64 = f.tell()
        n = len(central)
        f.write(struct.pack("<4sQHHIIQQQQ", b"PK\x06\x06", 44, 45, 45, 0, 0, n, n, cd_size, cd_start))
        f.write(struct.pack("<4sIQI", b"PK\x06\x07", 0, eocd64, 1))
        f.write(struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, 0xFFFF, 0xFFFF, _FF, _FF, 0))
        f.truncate()


def _crc(data: bytes) -> int:
    import zlib

    return zlib.crc32(data)


REPO = Path(__file__).resolve().parents[2]


def run_child(
    code: str,
    *args: str,
    wrap: Callable[[list[str]], list[str]] = list,
    timeout: float = 300,
) -> subprocess.CompletedProcess[str]:
    """``code`` (dedented) in a fresh interpreter at the repo root, its argv ``args``; ``wrap``
    puts something around the command (``prlimit``, a cgroup's shell)."""
    return subprocess.run(
        wrap([sys.executable, "-c", textwrap.dedent(code), *args]),
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=timeout,
    )


def child_result(out: subprocess.CompletedProcess[str]) -> Any:
    """The JSON a successful child printed last (its stderr tail when it failed)."""
    assert out.returncode == 0, out.stderr[-4000:]
    return json.loads(out.stdout.strip().splitlines()[-1])

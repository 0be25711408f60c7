"""Hostile checkpoints: each is refused with its CheckpointError subclass, at bounded memory.

The files are built here by hand (zip members and pickle opcodes), then opened in one child
interpreter that resets its peak-RSS mark (``/proc/self/clear_refs``) before each case, so
every case's growth over its own baseline is measured after torch is imported.
"""

from __future__ import annotations

import json
import os
import struct
import zipfile
import zlib
from collections import OrderedDict
from pathlib import Path

import pytest

from tests.models.ckpt_builders import ROOT, Storage, Tensor, child_result, run_child, torch_pickle

GROWTH_LIMIT = 300 << 20  # what one refused bomb may cost, over the child's baseline


def _state(*tensors: tuple[str, Tensor]) -> bytes:
    return torch_pickle({"state_dict": OrderedDict(tensors)})


def _write(
    path: Path, pkl: bytes, members: dict[str, bytes] | None = None, deflate: set[str] = frozenset()
) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(
            f"{ROOT}/data.pkl", pkl, zipfile.ZIP_DEFLATED if "data.pkl" in deflate else zipfile.ZIP_STORED
        )
        zf.writestr(f"{ROOT}/byteorder", "little")
        zf.writestr(f"{ROOT}/version", "3\n")
        for key, data in (members or {}).items():
            zf.writestr(
                f"{ROOT}/data/{key}", data, zipfile.ZIP_DEFLATED if key in deflate else zipfile.ZIP_STORED
            )
    return path


def _write_inflating(path: Path, pkl: bytes, member: str, inflated: int, declared: int | None = None) -> Path:
    """A zip whose ``member`` inflates to ``inflated`` zero bytes (a few hundred KB on disk);
    its zip headers declare ``declared`` bytes (default: the truth)."""
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = comp.compress(bytes(16 << 20)) + comp.flush(zlib.Z_FULL_FLUSH)
    body = block * (inflated // (16 << 20)) + comp.flush()
    info = zipfile.ZipInfo(f"{ROOT}/{member}")
    info.compress_type = zipfile.ZIP_DEFLATED
    with zipfile.ZipFile(path, "w") as zf:
        if member != "data.pkl":
            zf.writestr(f"{ROOT}/data.pkl", pkl)
        zf.writestr(f"{ROOT}/byteorder", "little")
        zf.writestr(f"{ROOT}/version", "3\n")
        # The raw deflate stream goes in as is: zipfile computes sizes and CRC from what we
        # declare, so write it through a stored member, then patch the method and sizes.
        zf.writestr(info.filename, body, zipfile.ZIP_STORED)
    raw = bytearray(path.read_bytes())
    name = info.filename.encode()
    crc = zlib.crc32(bytes(inflated))
    for sig, method_at, crc_at, usize_at in ((b"PK\x03\x04", 8, 14, 22), (b"PK\x01\x02", 10, 16, 24)):
        at = raw.find(sig)
        while at >= 0:
            head = 30 if sig == b"PK\x03\x04" else 46
            nlen = struct.unpack_from("<H", raw, at + (26 if head == 30 else 28))[0]
            if bytes(raw[at + head : at + head + nlen]) == name:
                struct.pack_into("<H", raw, at + method_at, zipfile.ZIP_DEFLATED)
                struct.pack_into("<I", raw, at + crc_at, crc)
                struct.pack_into("<I", raw, at + usize_at, inflated if declared is None else declared)
            at = raw.find(sig, at + 4)
    path.write_bytes(bytes(raw))
    return path


def _overlapping(path: Path) -> Path:
    """Two storages whose central-directory entries point at the same local header."""
    s0, s1 = Storage("0", 4), Storage("1", 4)
    pkl = _state(("a", Tensor(s0, 0, (4,), (1,))), ("b", Tensor(s1, 0, (4,), (1,))))
    _write(path, pkl, {"0": bytes(16), "1": bytes(16)})
    with zipfile.ZipFile(path) as zf:
        first = zf.getinfo(f"{ROOT}/data/0").header_offset
    raw = bytearray(path.read_bytes())
    name = f"{ROOT}/data/1".encode()
    at = raw.find(b"PK\x01\x02")
    while at >= 0:
        nlen = struct.unpack_from("<H", raw, at + 28)[0]
        if bytes(raw[at + 46 : at + 46 + nlen]) == name:
            struct.pack_into("<I", raw, at + 42, first)
        at = raw.find(b"PK\x01\x02", at + 4)
    path.write_bytes(bytes(raw))
    return path


def _torch_submodules(path: Path) -> Path:
    names = [
        ("torch.distributed", "foo"),
        ("torch.nn.modules.conv", "Conv2d"),
        ("torch", "onnx"),
        ("torch", "_dynamo"),
        ("torch._inductor.config", "Config"),
        ("torch.utils.tensorboard", "SummaryWriter"),
        ("torch.fx", "GraphModule"),
    ]
    body = b"".join(f"c{m}\n{n}\n".encode() for m, n in names)
    pkl = b"\x80\x02](" + body + b"e."  # a list of the named globals: nothing is called
    return _write(path, pkl)


def _cases(tmp: Path) -> dict[str, dict]:
    """name -> {path, call, expect, [env]}: what the child does with each file."""
    small = Storage("0", 1024)
    small_pkl = _state(("w", Tensor(small, 0, (1024,), (1,))))
    n = 200_000  # {"state_dict": {}, "x": [[[...]]]} nested n deep
    deep = b"\x80\x02}U\x0astate_dict}sU\x01x" + b"]" * n + b"a" * (n - 1) + b"s."
    objects = b"\x80\x02]" + b"}a" * 300_000 + b"."
    huge = Storage("0", 1 << 40)
    return {
        # 512 MiB inflated from ~500 KB; the pickle says 4 KB.
        "storage_bomb": {
            "path": _write_inflating(tmp / "storage.ckpt", small_pkl, "data/0", 512 << 20),
            "call": "materialize",
            "expect": "OversizedCheckpointError",
        },
        # The pickle declares 2 GiB for a 64 KB compressed member: more than deflate can give.
        "declared_past_deflate": {
            "path": _write(
                tmp / "ratio.ckpt",
                _state(("w", Tensor(Storage("0", 1 << 29), 0, (1 << 29,), (1,)))),
                {"0": os.urandom(64 << 10)},
                deflate={"0"},
            ),
            "call": "materialize",
            "expect": "OversizedCheckpointError",
        },
        "pickle_bomb": {
            "path": _write_inflating(tmp / "pickle.ckpt", b"", "data.pkl", 1 << 30),
            "call": "open",
            "expect": "OversizedCheckpointError",
        },
        # The headers understate it (1000 bytes): inflation still stops there.
        "pickle_bomb_understated": {
            "path": _write_inflating(tmp / "pickle2.ckpt", b"", "data.pkl", 1 << 30, declared=1000),
            "call": "open",
            "expect": "NotACheckpointError",
        },
        "memo_bomb": {
            "path": _write(tmp / "memo.ckpt", b"\x80\x02N" + b"r" + struct.pack("<I", 0xFFFFFFF0) + b"."),
            "call": "open",
            "expect": "OversizedCheckpointError",
        },
        "object_bomb": {
            "path": _write(tmp / "objects.ckpt", objects),
            "call": "open_small_object_limit",
            "expect": "OversizedCheckpointError",
        },
        "deep_nesting": {
            "path": _write(tmp / "deep.ckpt", deep),
            "call": "load_state_dict_file",
            "expect": "OversizedCheckpointError",
        },
        "huge_numel": {
            "path": _write(
                tmp / "numel.ckpt", _state(("w", Tensor(huge, 0, (1 << 40,), (1,)))), {"0": bytes(64)}
            ),
            "call": "materialize",
            "expect": "TruncatedCheckpointError",
        },
        "absurd_numel": {
            "path": _write(
                tmp / "absurd.ckpt",
                _state(("w", Tensor(Storage("0", 1 << 62), 0, (4,), (1,)))),
                {"0": bytes(16)},
            ),
            "call": "open",
            "expect": "NotACheckpointError",
        },
        "negative_offset": {
            "path": _write(
                tmp / "neg.ckpt", _state(("w", Tensor(Storage("0", 4), -2, (4,), (1,)))), {"0": bytes(16)}
            ),
            "call": "open",
            "expect": "NotACheckpointError",
        },
        "past_storage": {
            "path": _write(
                tmp / "past.ckpt", _state(("w", Tensor(Storage("0", 4), 2, (4,), (1,)))), {"0": bytes(16)}
            ),
            "call": "materialize",
            "expect": "NotACheckpointError",
        },
        "overlapping_members": {
            "path": _overlapping(tmp / "overlap.ckpt"),
            "call": "open",
            "expect": "NotACheckpointError",
        },
        "corrupt_deflate": {
            "path": _corrupt_deflate(tmp / "corrupt.ckpt", small_pkl),
            "call": "materialize",
            "expect": "NotACheckpointError",
        },
    }


def _corrupt_deflate(path: Path, pkl: bytes) -> Path:
    _write(path, pkl, {"0": os.urandom(4096)}, deflate={"0"})
    raw = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo(f"{ROOT}/data/0")
    start = info.header_offset + 30 + len(info.filename) + 10
    raw[start : start + 64] = b"\xff" * 64  # invalid deflate blocks
    path.write_bytes(bytes(raw))
    return path


_CHILD = """
import json, sys
import torch
from training.models import checkpoint_errors, checkpoint_file, unpickler
from training.models.checkpoint import load_state_dict_file

def status(key):
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith(key)) * 1024

results = {}
for name, case in json.loads(sys.argv[1]).items():
    open("/proc/self/clear_refs", "w").write("5")  # reset VmHWM to the current RSS
    base = status("VmRSS")
    outcome, message = "loaded", ""
    try:
        if case["call"] == "load_state_dict_file":
            load_state_dict_file(case["path"])
        else:
            limit = unpickler.MAX_PICKLE_OBJECTS
            if case["call"] == "open_small_object_limit":
                unpickler.MAX_PICKLE_OBJECTS = 100_000
            try:
                with checkpoint_file.open_checkpoint(case["path"]) as ckpt:
                    if case["call"] == "materialize":
                        ckpt.materialize_all(dict(ckpt.obj["state_dict"]))
            finally:
                unpickler.MAX_PICKLE_OBJECTS = limit
    except Exception as exc:
        outcome, message = type(exc).__name__, str(exc)
        assert isinstance(exc, checkpoint_errors.CheckpointError), repr(exc)
    results[name] = {"outcome": outcome, "message": message[:500], "growth": status("VmHWM") - base}
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    cases = _cases(tmp_path_factory.mktemp("bombs"))
    arg = json.dumps({k: {**v, "path": str(v["path"])} for k, v in cases.items()})
    results = child_result(run_child(_CHILD, arg))
    return {k: {**results[k], **cases[k]} for k in cases}


CASES = [
    "storage_bomb",
    "declared_past_deflate",
    "pickle_bomb",
    "pickle_bomb_understated",
    "memo_bomb",
    "object_bomb",
    "deep_nesting",
    "huge_numel",
    "absurd_numel",
    "negative_offset",
    "past_storage",
    "overlapping_members",
    "corrupt_deflate",
]


@pytest.mark.parametrize("case", CASES)
def test_bomb_is_refused_with_bounded_memory(outcomes: dict[str, dict], case: str) -> None:
    row = outcomes[case]
    assert row["outcome"] == row["expect"], row["message"]
    assert str(row["path"]) in row["message"]  # names the file
    print(f"{case}: {row['outcome']}, peak RSS growth {row['growth'] / 1e6:.1f} MB")
    assert row["growth"] <= GROWTH_LIMIT, f"{case}: peak RSS grew {row['growth'] / 1e6:.0f} MB"


def test_failures_of_one_tensor_name_it(outcomes: dict[str, dict]) -> None:
    for case in ("storage_bomb", "huge_numel", "past_storage", "corrupt_deflate"):
        assert "w" in outcomes[case]["message"].split("tensor ")[-1], outcomes[case]["message"]


_NO_IMPORTS = """
import json, sys
import torch
from training.models import checkpoint_file
before = set(sys.modules)
with checkpoint_file.open_checkpoint(sys.argv[1]) as ckpt:
    names = sorted(ckpt.globals_seen)
print(json.dumps({"new": sorted(set(sys.modules) - before), "names": names}))
"""


def test_naming_torch_submodules_imports_nothing(tmp_path: Path) -> None:
    path = _torch_submodules(tmp_path / "submodules.ckpt")
    row = child_result(run_child(_NO_IMPORTS, str(path), timeout=120))
    assert "torch.onnx" in row["names"] and "torch.fx.GraphModule" in row["names"]
    assert [m for m in row["new"] if m.startswith("torch")] == []

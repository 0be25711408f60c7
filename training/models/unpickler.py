"""Read torch checkpoints without running their pickles.

A Lightning ``.ckpt`` is a torch zip archive: ``<root>/data.pkl`` (a pickle of the whole
checkpoint dict) plus one member ``<root>/data/<key>`` per tensor storage. Besides tensors,
the pickle often holds Lightning's ``AttributeDict``, ``box.Box``, omegaconf ``DictConfig``,
jsonargparse ``Namespace``, ``pathlib`` paths and callback state. ``torch.load(weights_only=
True)`` refuses those; ``weights_only=False`` would import their modules and run whatever the
pickle asks for.

:class:`RestrictedUnpickler` resolves every global the pickle names itself and imports
nothing from the checkpoint:

- torch's tensor-rebuild functions and storage types become :class:`LazyTensor` records
  (storage key, dtype, offset, shape, stride): no tensor byte is read while unpickling;
- known containers (:data:`KNOWN_CLASSES`, plus any class named in ``allow_classes``) become
  inert stand-ins (:class:`AttributeDict`, :class:`ConfigDict`, :class:`Namespace`, pure
  paths, ...) that keep their data readable;
- any other class becomes an opaque placeholder (:class:`OpaqueObject`) recording its
  arguments and state;
- a pickle that names a code-running primitive (``os.system``, ``builtins.eval``,
  ``subprocess.Popen``, ...) or asks to *call* an unknown function at load time is refused
  with :class:`UnsafeCheckpointError`. Nothing it names is ever called, refused or not.

:func:`open_checkpoint` then reads only the storages the caller asks for: from a local file,
read-only shared maps of just their byte ranges (or copies, ``copy=True``); from an ``s3://``
object, ranged reads (the zip's central directory, ``data.pkl`` and the wanted members).

Bounds: ``data.pkl`` inflates to at most ``max_pickle_bytes`` (:data:`MAX_PICKLE_BYTES`), each
storage to exactly the size its pickle declares; the opcodes are pre-scanned (memo indices,
object count) before the C unpickler runs; every failure is a :class:`CheckpointError` naming
the file (and the tensor). Nothing the pickle names is imported, not even a torch submodule.

Why not ``torch.load(weights_only=True)`` with ``safe_globals``: it refuses Lightning's
``AttributeDict`` even when allow-listed (SETITEMS only on exact dict types), has no
placeholders for unknown classes, reads every storage (no subset, no ranged ``s3://``),
inflates a 1 GiB ``data.pkl`` and an oversized storage before refusing, and ``mmap=True`` maps
the whole file private-writable (fails under a memory limit). Legacy files still use it.
"""

from __future__ import annotations

import argparse
import builtins
import collections
import datetime
import errno
import io
import itertools
import logging
import mmap
import os
import pathlib
import pickle
import pickletools
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
from typing import IO, Any

import torch

from core import storage

__all__ = [
    "KNOWN_CLASSES",
    "MAX_PICKLE_BYTES",
    "MAX_PICKLE_OBJECTS",
    "AttributeDict",
    "CheckpointError",
    "CheckpointFile",
    "ConfigDict",
    "ConfigList",
    "InsufficientDiskError",
    "LazyTensor",
    "Namespace",
    "NotACheckpointError",
    "OpaqueObject",
    "OversizedCheckpointError",
    "RestrictedUnpickler",
    "TruncatedCheckpointError",
    "UnsafeCheckpointError",
    "open_checkpoint",
]

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# Lazy tensors
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _StorageRef:
    key: str
    dtype: torch.dtype
    numel: int  # in elements of dtype

    @property
    def nbytes(self) -> int:
        return self.numel * _itemsize(self.dtype)


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


@dataclass
class LazyTensor:
    """A tensor of the checkpoint that has not been read: where it lives and what it is."""

    storage: _StorageRef
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]
    dtype: torch.dtype
    requires_grad: bool = False

    @property
    def shape(self) -> torch.Size:
        return torch.Size(self.size)

    @property
    def nbytes(self) -> int:
        numel = 1
        for s in self.size:
            numel *= s
        return numel * _itemsize(self.dtype)

    def __repr__(self) -> str:
        return f"LazyTensor({list(self.size)}, {self.dtype}, storage {self.storage.key!r})"


@dataclass
class OpaqueTensor:
    """A tensor kind this reader does not rebuild (quantized, sparse, nested, subclass wrapper)."""

    rebuild: str
    args: tuple = ()

    @property
    def shape(self) -> torch.Size:
        return torch.Size([])

    def __repr__(self) -> str:
        return f"<opaque tensor from {self.rebuild}>"


class _StorageType:
    """What ``torch.FloatStorage`` & co. resolve to: only their dtype is needed."""

    def __init__(self, name: str, dtype: torch.dtype) -> None:
        self.name, self.dtype = name, dtype

    def __repr__(self) -> str:
        return f"<storage type torch.{self.name}>"


_STORAGE_DTYPES = {
    "UntypedStorage": torch.uint8,
    "ByteStorage": torch.uint8,
    "CharStorage": torch.int8,
    "ShortStorage": torch.int16,
    "IntStorage": torch.int32,
    "LongStorage": torch.int64,
    "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16,
    "FloatStorage": torch.float32,
    "DoubleStorage": torch.float64,
    "ComplexFloatStorage": torch.complex64,
    "ComplexDoubleStorage": torch.complex128,
    "BoolStorage": torch.bool,
}


def _storage_types() -> dict[str, _StorageType]:
    return {name: _StorageType(name, dtype) for name, dtype in _STORAGE_DTYPES.items()}


def _lazy(
    storage: object, offset: int, size: Any, stride: Any, dtype: torch.dtype | None = None
) -> LazyTensor:
    if not isinstance(storage, _StorageRef):
        raise pickle.UnpicklingError(f"tensor rebuilt from {type(storage).__name__}, not a storage")
    size, stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)
    # Checked here so that no later shape or byte arithmetic sees a negative or int64-overflowing value.
    if not (0 <= int(offset) <= _MAX_DIM and all(0 <= v <= _MAX_DIM for v in size + stride)):
        raise pickle.UnpicklingError(f"tensor with offset {offset}, size {list(size)}, stride {list(stride)}")
    if len(size) != len(stride):
        raise pickle.UnpicklingError(f"tensor with {len(size)} sizes but {len(stride)} strides")
    return LazyTensor(storage, int(offset), size, stride, dtype or storage.dtype)


_MAX_DIM = 1 << 48  # no real tensor dimension, stride or offset comes near this


def _rebuild_tensor(storage: object, offset: int, size: Any, stride: Any) -> LazyTensor:
    return _lazy(storage, offset, size, stride)


def _rebuild_tensor_v2(storage, offset, size, stride, requires_grad=False, hooks=None, metadata=None):
    tensor = _lazy(storage, offset, size, stride)
    tensor.requires_grad = bool(requires_grad)
    return tensor


def _rebuild_tensor_v3(storage, offset, size, stride, requires_grad, hooks, dtype, metadata=None):
    if not isinstance(dtype, torch.dtype):
        raise pickle.UnpicklingError("_rebuild_tensor_v3 without a dtype")
    tensor = _lazy(storage, offset, size, stride, dtype)
    tensor.requires_grad = bool(requires_grad)
    return tensor


def _rebuild_parameter(data, requires_grad, hooks, state=None):
    if isinstance(data, LazyTensor):
        data.requires_grad = bool(requires_grad)
    return data


def _rebuild_from_type_v2(func, new_type, args, state):
    # A tensor subclass: rebuild the plain tensor with our own function; the subclass is not built.
    if func not in _REBUILDERS.values():
        raise pickle.UnpicklingError(f"tensor subclass rebuilt by {func!r}")
    return func(*args)


def _opaque_tensor(name: str) -> Callable[..., OpaqueTensor]:
    return lambda *args: OpaqueTensor(name, args)


_REBUILDERS: dict[str, Callable[..., Any]] = {
    "_rebuild_tensor": _rebuild_tensor,
    "_rebuild_tensor_v2": _rebuild_tensor_v2,
    "_rebuild_tensor_v3": _rebuild_tensor_v3,
    "_rebuild_parameter": _rebuild_parameter,
    "_rebuild_parameter_with_state": _rebuild_parameter,
}
_OPAQUE_REBUILDERS = (
    "_rebuild_qtensor",
    "_rebuild_sparse_tensor",
    "_rebuild_meta_tensor_no_storage",
    "_rebuild_nested_tensor",
    "_rebuild_wrapper_subclass",
    "_rebuild_device_tensor_from_numpy",
    "_rebuild_device_tensor_from_cpu_tensor",
)


# --------------------------------------------------------------------------------------------
# Inert stand-ins
# --------------------------------------------------------------------------------------------


class _StandIn:
    """Mixin: records the original class name; ``__setstate__`` keeps state as plain data."""

    original = "?"

    def __setstate__(self, state: object) -> None:
        slots = None
        if isinstance(state, tuple) and len(state) == 2 and (state[1] is None or isinstance(state[1], dict)):
            state, slots = state
        if isinstance(state, dict):
            self.__dict__.update({str(k): v for k, v in state.items()})
        elif state is not None:
            self.__dict__["_state"] = state
        if slots:
            self.__dict__.update({str(k): v for k, v in slots.items()})


class AttributeDict(_StandIn, dict):
    """Stand-in for Lightning's ``AttributeDict`` (a dict with attribute access)."""

    original = "lightning AttributeDict"

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError as exc:
            raise AttributeError(name) from exc


class BoxDict(AttributeDict):
    """Stand-in for ``box.Box`` / ``box.ConfigBox``."""

    original = "box.Box"

    def __setstate__(self, state: object) -> None:
        if isinstance(state, dict):
            state = {k: v for k, v in state.items() if k != "_box_config"}
        super().__setstate__(state)


class BoxList(_StandIn, list):
    """Stand-in for ``box.BoxList``."""

    original = "box.BoxList"


class ConfigDict(AttributeDict):
    """Stand-in for omegaconf ``DictConfig``: the node values as a plain mapping."""

    original = "omegaconf.DictConfig"

    def __setstate__(self, state: object) -> None:
        content = state.get("_content") if isinstance(state, dict) else None
        if isinstance(content, dict):
            self.update({k: _config_value(v) for k, v in content.items()})
        elif content is not None:  # "???" (missing) or an interpolation string
            self.__dict__["_content"] = content


class ConfigList(_StandIn, list):
    """Stand-in for omegaconf ``ListConfig``."""

    original = "omegaconf.ListConfig"

    def __setstate__(self, state: object) -> None:
        content = state.get("_content") if isinstance(state, dict) else None
        if isinstance(content, list):
            self.extend(_config_value(v) for v in content)
        elif content is not None:
            self.__dict__["_content"] = content


class ConfigNode(_StandIn):
    """Stand-in for an omegaconf value node (``AnyNode``, ``StringNode``, ...)."""

    original = "omegaconf.nodes.ValueNode"

    def __repr__(self) -> str:
        return f"ConfigNode({self.__dict__.get('_val')!r})"


def _config_value(value: object) -> object:
    return value.__dict__.get("_val") if isinstance(value, ConfigNode) else value


class Namespace(_StandIn, argparse.Namespace):
    """Stand-in for jsonargparse's ``Namespace`` (an ``argparse.Namespace`` with nesting)."""

    original = "jsonargparse.Namespace"


class InertDefaultDict(_StandIn, dict):
    """Stand-in for ``collections.defaultdict``: the items, and the factory's name (never called)."""

    original = "collections.defaultdict"
    factory: object = None


def _defaultdict(factory: object = None, *_: object) -> InertDefaultDict:
    out = InertDefaultDict()
    out.__dict__["factory"] = factory
    return out


def _pure_path(cls: type) -> Callable[..., pathlib.PurePath]:
    return lambda *parts: cls(*(str(p) for p in parts))


def _codecs_encode(text: object, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    if not isinstance(text, str) or not isinstance(encoding, str):
        raise pickle.UnpicklingError("_codecs.encode on something other than text")
    return text.encode(encoding, errors)


class _OpaqueType(type):
    """Metaclass of placeholder classes. Calling one (a pickle REDUCE) builds an inert instance,
    unless its name marks it as a function, which would run code at load time: refused."""

    def __call__(cls, *args: object, **kwargs: object) -> Any:
        if cls._refuse_call:
            raise UnsafeCheckpointError(cls._source, cls.qualname, "calls a function while unpickling")
        obj = cls.__new__(cls)
        obj.__dict__["args"] = args
        if kwargs:
            obj.__dict__["kwargs"] = kwargs
        return obj

    def __repr__(cls) -> str:
        return f"<opaque class {cls.qualname}>"


class OpaqueObject(dict, metaclass=_OpaqueType):
    """Inert placeholder for an instance of a class this reader does not know.

    Items the pickle sets land in the mapping, appended values in ``listitems``, arguments in
    ``args`` and the object state in ``state``. No code of the original class exists here.
    """

    qualname = "?"
    _refuse_call = False
    _source = "?"

    def __new__(cls, *args: object, **kwargs: object) -> OpaqueObject:
        obj = dict.__new__(cls)
        if args:
            obj.__dict__["args"] = args
        return obj

    def __init__(self, *args: object, **kwargs: object) -> None:  # never runs the original
        pass

    # Hashable by identity: placeholders of enum members and the like serve as dict keys.
    def __hash__(self) -> int:
        return id(self)

    def __eq__(self, other: object) -> bool:
        return self is other

    def __setstate__(self, state: object) -> None:
        self.__dict__["state"] = state

    def append(self, value: object) -> None:
        self.__dict__.setdefault("listitems", []).append(value)

    def extend(self, values: Iterable[object]) -> None:
        self.__dict__.setdefault("listitems", []).extend(values)

    def __repr__(self) -> str:
        return f"<opaque {self.qualname}>"


def _safe_getattr(obj: object, name: str) -> object:
    # Python 3.12+ pickles enum members as getattr(EnumClass, "NAME"): fine on our own classes.
    if isinstance(obj, _OpaqueType):
        member = dict.__new__(obj)
        member.__dict__["member"] = name
        return member
    raise pickle.UnpicklingError(f"getattr on {type(obj).__name__}")


def _reconstructor(cls: object, base: object, state: object = None) -> object:
    # copyreg._reconstructor (pickle protocols 0 and 1): only for our own inert classes.
    if not (isinstance(cls, type) and issubclass(cls, (_StandIn, OpaqueObject))):
        raise pickle.UnpicklingError(f"copyreg._reconstructor of {cls!r}")
    obj = cls.__new__(cls)
    if isinstance(obj, dict) and isinstance(state, dict):
        obj.update(state)
    elif isinstance(obj, list) and isinstance(state, list):
        obj.extend(state)
    return obj


def _opaque_function(source: str, qualname: str) -> Callable[..., OpaqueObject]:
    """A known data-building function (numpy's reconstructors): its call yields a placeholder."""
    cls = _OpaqueType(qualname.rsplit(".", 1)[-1], (OpaqueObject,), {"qualname": qualname, "_source": source})
    return lambda *args: cls.__new__(cls, *args)


_LIGHTNING_ATTRIBUTE_DICT = (
    "pytorch_lightning.utilities.parsing",
    "lightning.pytorch.utilities.parsing",
    "lightning_fabric.utilities.data",
    "lightning.fabric.utilities.data",
)
_PATH_MODULES = ("pathlib", "pathlib._local")

#: ``module.name`` -> inert stand-in, for the classes real checkpoints pickle.
KNOWN_CLASSES: dict[str, object] = {
    **{f"{m}.AttributeDict": AttributeDict for m in _LIGHTNING_ATTRIBUTE_DICT},
    **{f"box.{m}Box": BoxDict for m in ("", "box.", "config_box.Config", "Config")},
    "box.box_list.BoxList": BoxList,
    "box.BoxList": BoxList,
    "omegaconf.dictconfig.DictConfig": ConfigDict,
    "omegaconf.DictConfig": ConfigDict,
    "omegaconf.listconfig.ListConfig": ConfigList,
    "omegaconf.ListConfig": ConfigList,
    **{
        f"omegaconf.nodes.{n}": ConfigNode
        for n in (
            "AnyNode",
            "StringNode",
            "IntegerNode",
            "FloatNode",
            "BooleanNode",
            "EnumNode",
            "BytesNode",
            "PathNode",
            "ValueNode",
            "InterpolationResultNode",
        )
    },
    "jsonargparse.Namespace": Namespace,
    "jsonargparse._namespace.Namespace": Namespace,
    "jsonargparse.namespace.Namespace": Namespace,
    "argparse.Namespace": argparse.Namespace,
    **{
        f"{m}.{n}": _pure_path(pathlib.PurePosixPath)
        for m in _PATH_MODULES
        for n in ("Path", "PosixPath", "PurePath", "PurePosixPath")
    },
    **{
        f"{m}.{n}": _pure_path(pathlib.PureWindowsPath)
        for m in _PATH_MODULES
        for n in ("WindowsPath", "PureWindowsPath")
    },
    "collections.OrderedDict": collections.OrderedDict,
    "collections.defaultdict": _defaultdict,
    "collections.Counter": collections.Counter,
    "collections.deque": collections.deque,
    **{f"datetime.{n}": getattr(datetime, n) for n in ("datetime", "date", "time", "timedelta", "timezone")},
    "_codecs.encode": _codecs_encode,
    "codecs.encode": _codecs_encode,
    "copyreg._reconstructor": _reconstructor,
    "builtins.getattr": _safe_getattr,
    **{
        f"builtins.{n}": getattr(builtins, n)
        for n in (
            "set",
            "frozenset",
            "complex",
            "slice",
            "range",
            "bytearray",
            "bytes",
            "int",
            "float",
            "str",
            "bool",
            "list",
            "dict",
            "tuple",
            "object",
        )
    },
}

#: Functions that only build data (numpy arrays and scalars): their calls become placeholders.
_DATA_FUNCTIONS = {
    f"{m}.{n}"
    for m in ("numpy.core.multiarray", "numpy._core.multiarray")
    for n in ("_reconstruct", "scalar")
} | {"numpy.dtype", "numpy.ndarray", "functools.partial"}

#: Modules whose globals run code (or reach code that does); any of them refuses the file.
_DANGEROUS_MODULES = frozenset(
    [
        "os",
        "posix",
        "nt",
        "subprocess",
        "sys",
        "shutil",
        "importlib",
        "runpy",
        "code",
        "codeop",
        "pty",
        "socket",
        "pickle",
        "_pickle",
        "marshal",
        "ctypes",
        "types",
        "operator",
        "io",
        "_io",
        "webbrowser",
        "multiprocessing",
        "threading",
        "_thread",
        "signal",
        "tempfile",
        "asyncio",
        "pdb",
        "bdb",
        "timeit",
        "trace",
        "inspect",
        "gc",
        "platform",
        "glob",
        "fileinput",
        "zipimport",
        "pkgutil",
        "site",
        "sysconfig",
        "setuptools",
        "pip",
        "ensurepip",
        "venv",
        "http",
        "urllib",
        "ftplib",
        "smtplib",
        "telnetlib",
        "ssl",
        "select",
        "selectors",
        "mmap",
        "resource",
        "fcntl",
        "pwd",
        "grp",
        "commands",
        "popen2",
        "dill",
        "cloudpickle",
        "joblib",
    ]
)
#: The only torch attributes a pickle may name besides storages and rebuilders. Built once from
#: ``vars(torch)``: ``getattr(torch, name)`` would run torch's lazy ``__getattr__``, which
#: imports submodules (``torch.onnx``, ``torch._dynamo``, ...) on the file's say-so.
_TORCH_VALUES: dict[str, object] = {
    name: value
    for name, value in vars(torch).items()
    if isinstance(value, torch.dtype | torch.layout | torch.memory_format)
} | {"device": torch.device, "Size": torch.Size}
_COMPAT_MODULES = {"__builtin__": "builtins", "copy_reg": "copyreg", "UserDict": "collections"}
_COMPAT_NAMES = {("builtins", "long"): ("builtins", "int"), ("builtins", "unicode"): ("builtins", "str")}


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickles a checkpoint's ``data.pkl`` without importing or calling anything it names.

    Tensors come back as :class:`LazyTensor`; see the module docstring for the rules.
    """

    def __init__(self, file: IO[bytes], source: str, allow_classes: Iterable[str] = ()) -> None:
        super().__init__(file)
        self.source = source
        self.allow_classes = frozenset(allow_classes)
        self._placeholders: dict[str, type] = {}
        self._storage_types = _storage_types()
        self.globals_seen: set[str] = set()

    def find_class(self, module: str, name: str) -> Any:
        module = _COMPAT_MODULES.get(module, module)
        module, name = _COMPAT_NAMES.get((module, name), (module, name))
        qualname = f"{module}.{name}"
        self.globals_seen.add(qualname)
        top = module.split(".", 1)[0]
        if module == "torch._utils" and name in _REBUILDERS:
            return _REBUILDERS[name]
        if module == "torch._utils" and name in _OPAQUE_REBUILDERS:
            return _opaque_tensor(qualname)
        if qualname == "torch._tensor._rebuild_from_type_v2":
            return _rebuild_from_type_v2
        if module == "torch" and name in self._storage_types:
            return self._storage_types[name]
        if module == "torch" and name in _TORCH_VALUES:
            return _TORCH_VALUES[name]
        if qualname in KNOWN_CLASSES:
            return KNOWN_CLASSES[qualname]
        if qualname in _DATA_FUNCTIONS:
            return _opaque_function(self.source, qualname)
        if qualname in self.allow_classes:
            return self._placeholder(qualname, refuse_call=False)
        if (
            top in _DANGEROUS_MODULES
            or top == "builtins"
            or (top == "torch" and _is_torch_loader(module, name))
        ):
            raise UnsafeCheckpointError(self.source, qualname, "names a code-running global")
        # Unknown: a placeholder class. Calling it is refused when the name reads as a function.
        return self._placeholder(qualname, refuse_call=not name[:1].isupper())

    def _placeholder(self, qualname: str, refuse_call: bool) -> type:
        if qualname not in self._placeholders:
            short = qualname.rsplit(".", 1)[-1]
            self._placeholders[qualname] = _OpaqueType(
                short,
                (OpaqueObject,),
                {"qualname": qualname, "_refuse_call": refuse_call, "_source": self.source},
            )
        return self._placeholders[qualname]

    def persistent_load(self, pid: Any) -> _StorageRef:
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unsupported persistent id {str(pid)[:80]}")
        storage_type, key, _location, numel = pid[1:5]
        if not isinstance(storage_type, _StorageType):
            raise pickle.UnpicklingError(f"persistent id with storage type {storage_type!r}")
        if not isinstance(numel, int) or not 0 <= numel <= _MAX_DIM:
            raise pickle.UnpicklingError(f"storage {str(key)[:40]} declares {str(numel)[:40]} elements")
        return _StorageRef(str(key), storage_type.dtype, numel)


def _is_torch_loader(module: str, name: str) -> bool:
    return name in {"load", "_load_from_bytes", "load_state_dict_from_url"} or module.startswith(
        ("torch.hub", "torch.jit", "torch.package", "torch._C", "torch.serialization", "torch.ops")
    )


# --------------------------------------------------------------------------------------------
# Zip archives
# --------------------------------------------------------------------------------------------

_LOCAL_HEADER = struct.Struct("<4sHHHHHIIIHH")  # zip local file header, 30 bytes
_LOCAL_MAGIC = b"PK\x03\x04"
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # torch's pre-1.6 (non-zip) format
_REMOTE_BATCH_BYTES = 16 << 20
_REMOTE_BLOCK_BYTES = 1 << 20
_SPANS_IN_FLIGHT = 2


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


#: Default bound on a checkpoint's ``data.pkl`` (inflated). Lightning checkpoints pickle their
#: tensors as small records: even the 5.16 GB official Clay file's pickle is a few MB.
MAX_PICKLE_BYTES = 64 << 20
#: Bound on the objects a pickle may push (each costs ~50-100 bytes of Python memory however
#: short its opcode): ~10x what a checkpoint of MAX_PICKLE_BYTES honestly holds.
MAX_PICKLE_OBJECTS = 4_000_000
_MEMO_OPS = frozenset(["PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"])


def _scan_pickle(data: bytes, source: str) -> None:
    """Refuse resource bombs before the C unpickler runs: memo indices past the number of memo
    entries the pickle makes (CPython grows its memo array to the index: a 5-byte
    LONG_BINPUT costs gigabytes) and more objects than :data:`MAX_PICKLE_OBJECTS`."""
    memo_ops = pushes = 0
    top_index = -1
    try:
        for op, arg, _pos in pickletools.genops(data):
            if op.name in _MEMO_OPS:
                memo_ops += 1
                if op.name != "MEMOIZE":
                    top_index = max(top_index, int(arg))
            elif op.stack_after:
                pushes += 1
    except ValueError as exc:  # genops reads lengths and arguments; malformed data ends here
        cls = (
            TruncatedCheckpointError
            if "exhausted" in str(exc) or "but only" in str(exc)
            else NotACheckpointError
        )
        raise cls(f"{source}: its pickle (data.pkl, {len(data)} bytes) is malformed: {exc}") from exc
    if top_index >= memo_ops:
        raise OversizedCheckpointError(
            f"{source}: its pickle stores memo entry {top_index} but makes only {memo_ops}: a memo bomb "
            "(refused before unpickling)"
        )
    if pushes > MAX_PICKLE_OBJECTS:
        raise OversizedCheckpointError(
            f"{source}: its pickle builds {pushes} objects, over the limit of {MAX_PICKLE_OBJECTS}"
        )


def _unpickle(data: bytes, source: str, allow_classes: Iterable[str]) -> tuple[object, set[str]]:
    _scan_pickle(data, source)
    unpickler = RestrictedUnpickler(io.BytesIO(data), source, allow_classes)
    try:
        return unpickler.load(), unpickler.globals_seen
    except CheckpointError:
        raise
    except (RecursionError, MemoryError) as exc:
        raise OversizedCheckpointError(
            f"{source}: its pickle is too deep or too large to read: {exc!r}"
        ) from exc
    except EOFError as exc:
        raise TruncatedCheckpointError(
            f"{source}: its pickle (data.pkl) ends early: the file is truncated"
        ) from exc
    except (
        pickle.UnpicklingError,
        ValueError,
        TypeError,
        AttributeError,
        IndexError,
        KeyError,
        OverflowError,
        RuntimeError,
        struct.error,
    ) as exc:
        raise NotACheckpointError(f"{source}: cannot read its pickle as a checkpoint: {exc}") from exc


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

"""Unpickle a checkpoint's ``data.pkl`` without importing or running anything it names.

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

Before the C unpickler runs, the opcodes are pre-scanned (memo indices, object count,
:data:`MAX_PICKLE_OBJECTS`). Nothing the pickle names is imported, not even a torch submodule.
Reading the archive and the storages is :mod:`training.models.checkpoint_file`'s.
"""

from __future__ import annotations

import argparse
import builtins
import collections
import datetime
import io
import pathlib
import pickle
import pickletools
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import IO, Any

import torch

from training.models.checkpoint_errors import (
    CheckpointError,
    NotACheckpointError,
    OversizedCheckpointError,
    TruncatedCheckpointError,
    UnsafeCheckpointError,
)

__all__ = [
    "KNOWN_CLASSES",
    "MAX_PICKLE_BYTES",
    "MAX_PICKLE_OBJECTS",
    "AttributeDict",
    "ConfigDict",
    "ConfigList",
    "LazyTensor",
    "Namespace",
    "OpaqueObject",
    "OpaqueTensor",
    "RestrictedUnpickler",
]


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
# Bounds, the opcode pre-scan and the load
# --------------------------------------------------------------------------------------------

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

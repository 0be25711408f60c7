"""Model runtimes behind one small interface: normalised float32 chips in, class probabilities out.

:class:`Predictor` is what :mod:`inference.predict` calls. The ONNX Runtime backend lives in
``inference.runtime_onnx`` and the OpenVINO one in ``inference.runtime_openvino``, each imported
only when asked for, so each Lambda image carries just the runtime it uses. Other backends are
plugins found by entry point (group ``landcover.backends``): the eager PyTorch one,
``training.models.predictor.TorchPredictor``, comes with the training package, which the Lambda
image does not ship. Which backend and
artifact suit this CPU is decided by :mod:`inference.runtime_cpu`. Nothing here imports torch
at module scope; :func:`read_safetensors_metadata` reads an export's header without it.

Inputs are already Clay-normalised (``core.naip.normalize``); the caller does that once
per batch, so every backend sees exactly the same numbers.
"""

from __future__ import annotations

import io
import json
import logging
import os
import struct
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any, Protocol, runtime_checkable

import numpy as np

__all__ = [
    "BACKENDS",
    "OperatorTime",
    "Predictor",
    "default_num_threads",
    "load_predictor",
    "read_onnx_metadata_props",
    "read_safetensors_metadata",
]

log = logging.getLogger(__name__)

BACKENDS: tuple[str, ...] = ("torch", "onnx", "openvino")
#: Where backends other than the built-in ONNX Runtime and OpenVINO ones register (pyproject).
BACKEND_ENTRY_POINTS = "landcover.backends"
#: A safetensors header is an 8-byte little-endian length and that many bytes of JSON.
_MAX_HEADER_BYTES = 100 * 2**20


@runtime_checkable
class Predictor(Protocol):
    """A loaded segmentation model.

    Attributes:
        backend: ``"torch"``, ``"onnx"`` or ``"openvino"``.
        num_classes: K, the number of output classes.
        metadata: the export's metadata (class table, normalisation, reference stats, ...).
    """

    backend: str
    num_classes: int
    metadata: dict[str, Any]

    def predict_proba(self, chips: np.ndarray) -> np.ndarray:
        """Softmax probabilities float32 ``[B, K, S, S]`` for normalised float32 ``[B, 4, S, S]``."""
        ...


@dataclass(frozen=True)
class OperatorTime:
    """One runtime operator of a profiled run: its type as the runtime names it, the ONNX nodes
    it runs (a fused operator runs several), and its time."""

    op_type: str
    nodes: tuple[str, ...]
    seconds: float


#: ``ModelProto.metadata_props`` (onnx.proto).
_ONNX_METADATA_FIELD = 14


def default_num_threads() -> int:
    """Intra-op threads: ``OMP_NUM_THREADS`` if set, else the CPUs this process may use.

    Lambda gives vCPUs in proportion to memory (up to 6); ``os.cpu_count()`` reports the host,
    so the affinity mask is the honest number.
    """
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - macOS/Windows
        return max(1, os.cpu_count() or 1)


def check_chips(chips: np.ndarray, in_channels: int = 4, chip_size: int | None = None) -> np.ndarray:
    """Validate a chip batch: float ``[B, C, S, S]`` with finite values (and ``S == chip_size``
    for a model exported for one chip size); returns float32."""
    arr = np.asarray(chips)
    if arr.ndim != 4 or arr.shape[1] != in_channels:
        raise ValueError(f"expected chips shaped [B, {in_channels}, S, S], got {arr.shape}")
    if chip_size is not None and arr.shape[-2:] != (chip_size, chip_size):
        raise ValueError(
            f"this model was exported for {chip_size}x{chip_size} chips, "
            f"got {arr.shape[-2]}x{arr.shape[-1]}; use chip_size={chip_size}"
        )
    if arr.dtype.kind != "f":
        raise ValueError(
            f"predict_proba takes normalised float chips, got {arr.dtype}; "
            "apply core.naip.normalize to uint8 NAIP first"
        )
    arr = arr.astype(np.float32, copy=False)
    if not np.isfinite(arr).all():
        raise ValueError("chips contain NaN or infinite values")
    return arr


def read_safetensors_metadata(uri_or_path: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``__metadata__`` of a safetensors file, values JSON-decoded where they parse; no torch.

    Reads only the header (two small range reads for ``s3://``), so the torch-free Lambda image
    can read an export's reference statistics.
    """
    from core import storage

    uri = str(uri_or_path)
    fs, path = storage.filesystem(uri)
    with fs.open(path, "rb") as fh:
        (length,) = struct.unpack("<Q", fh.read(8))
        if not 0 < length <= _MAX_HEADER_BYTES:
            raise ValueError(f"{uri}: not a safetensors file (header length {length})")
        header = json.loads(fh.read(length))
    out: dict[str, Any] = {}
    for key, value in (header.get("__metadata__") or {}).items():
        try:
            out[key] = json.loads(value)
        except (TypeError, json.JSONDecodeError):
            out[key] = value
    return out


def _varint(fh: Any) -> int:
    value, shift = 0, 0
    while True:
        byte = fh.read(1)
        if not byte:
            raise ValueError("truncated varint")
        value |= (byte[0] & 0x7F) << shift
        if byte[0] < 0x80:
            return value
        shift += 7


def read_onnx_metadata_props(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``metadata_props`` of a local ONNX file, JSON-decoded where they parse; no onnx package.

    Walks the top-level fields of the ``ModelProto`` and seeks past the graph, so a 300 MB model
    costs a few reads instead of a parse (the OpenVINO path compiles straight from its cache).
    """
    out: dict[str, Any] = {}
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        while fh.tell() < size:
            key = _varint(fh)
            field_number, wire_type = key >> 3, key & 7
            if wire_type == 0:
                _varint(fh)
                continue
            if wire_type != 2:
                raise ValueError(f"{path}: not an ONNX model (field {field_number}, wire type {wire_type})")
            length = _varint(fh)
            if field_number != _ONNX_METADATA_FIELD:
                fh.seek(length, os.SEEK_CUR)
                continue
            entry, strings = io.BytesIO(fh.read(length)), {}
            while entry.tell() < length:  # StringStringEntryProto: key = 1, value = 2
                tag = _varint(entry)
                strings[tag >> 3] = entry.read(_varint(entry)).decode()
            try:
                out[strings.get(1, "")] = json.loads(strings.get(2, ""))
            except json.JSONDecodeError:
                out[strings.get(1, "")] = strings.get(2, "")
    return out


def load_predictor(export_path: str, backend: str = "torch", **kwargs: Any) -> Predictor:
    """Load the model at ``export_path`` with ``backend`` (``"torch"``, ``"onnx"`` or ``"openvino"``).

    Extra keyword arguments go to the backend's constructor (e.g. ``dtype``, ``num_threads``,
    ``precision``).
    """
    if backend in ("onnx", "openvino"):
        module, cls, package = {
            "onnx": ("inference.runtime_onnx", "OnnxPredictor", "onnxruntime"),
            "openvino": ("inference.runtime_openvino", "OpenVinoPredictor", "openvino"),
        }[backend]
        try:
            predictor_cls = getattr(__import__(module, fromlist=[cls]), cls)
        except ImportError as exc:
            raise ValueError(
                f"backend {backend!r} needs {module} and {package}, which are not "
                f"available here ({exc}); install {package}"
            ) from exc
        return predictor_cls(export_path, **kwargs)
    plugins = entry_points(group=BACKEND_ENTRY_POINTS, name=backend)
    if plugins:
        return next(iter(plugins)).load()(export_path, **kwargs)
    if backend in BACKENDS:
        raise ValueError(
            f"backend {backend!r} is a plugin of the training package (entry point group "
            f"{BACKEND_ENTRY_POINTS!r}), which is not installed here: pip install 'landcover-platform[training]'"
        )
    raise ValueError(f"unknown backend {backend!r}; choose one of {list(BACKENDS)}")

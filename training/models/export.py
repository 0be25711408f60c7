"""Compact inference export: one safetensors file, loadable with torch + safetensors only.

Layout of the file:

- tensors ``encoder.*`` and ``head.*`` of a :class:`~training.models.head.ClaySegmenter` whose
  patch embedding is already folded into a plain ``Conv2d(4, dim, 8, stride=8)`` for the NAIP
  wavelengths (``encoder.patch_embedding.proj.*`` plus the ``wavelengths`` buffer); the
  wavelength-to-kernel generator is dropped;
- float tensors stored as fp16, except BatchNorm running statistics (tiny, and variances of
  conv activations can be large) and any tensor that would overflow fp16, which stay fp32;
- header metadata (JSON strings): ``format``, ``format_version``, ``encoder_config``,
  ``head_config``, ``preset``, ``class_table``, ``normalization``, ``wavelengths_um``,
  ``gsd_m``, ``reference_stats``, ``extra``, ``encoder_weights``, ``storage_dtype``, ``fp32_keys``,
  ``created_utc``. ``encoder_weights`` names where the encoder came from (``source``: random-init,
  a catalog name, a file, or ``encoder-registry`` with ``encoder_name``, ``version``, ``sha256``,
  lineage ``input_uri``); it rides into the ONNX artifacts' metadata, so the Lambda and the
  ledger know which encoder served (null in exports written before it existed).

Why fp16 rather than bf16: both halve the file (large: ~0.6 GB), but fp16 keeps 10 mantissa
bits to bf16's 7, so the round trip error of the weights is 8x smaller, and trained ViT/conv
weights sit far inside fp16's range (|x| < 65504; checked per tensor at save time). The
loader upcasts to fp32 by default (CPU fp16 matmuls are slow); ``dtype=torch.bfloat16`` keeps
a half-size model in memory for CPUs with fast bf16.

This module must stay importable in the Lambda image: no Lightning, Hydra, MLflow or Airflow.
"""

from __future__ import annotations

import json
import os
import tempfile
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from core import artifacts, storage
from training.models.checkpoint import load_strict
from training.models.clay import ClayConfig, ClayEncoder
from training.models.head import ClaySegmenter, build_head

__all__ = [
    "EXPORT_FORMAT",
    "EXPORT_VERSION",
    "export_state_dict",
    "load_export",
    "read_export_metadata",
    "save_export",
]

EXPORT_FORMAT = "landcover-clay-segmenter"
EXPORT_VERSION = 1
_KEEP_FP32_SUFFIXES = ("running_mean", "running_var")
_FP16_MAX = torch.finfo(torch.float16).max


def export_state_dict(
    model: ClaySegmenter, dtype: torch.dtype = torch.float16
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The export's tensors: folded encoder + head, cast to ``dtype`` where safe.

    Does not modify ``model``. Returns the tensors and the keys kept in fp32.
    """
    folded = None
    if not model.encoder.is_folded:
        folded = model.encoder.fold_patch_embedding(model.wavelengths).state_dict()
    out: dict[str, torch.Tensor] = {}
    fp32_keys: list[str] = []
    for key, value in model.state_dict().items():
        if folded is not None and key.startswith("encoder.patch_embedding."):
            continue
        out[key] = value
    if folded is not None:
        out.update({f"encoder.patch_embedding.{k}": v for k, v in folded.items()})
    for key, value in list(out.items()):
        value = value.detach().cpu()
        if value.is_floating_point():
            if (
                key.endswith(_KEEP_FP32_SUFFIXES)
                or key.endswith("patch_embedding.wavelengths")
                or (dtype == torch.float16 and bool((value.abs() > _FP16_MAX).any()))
            ):
                value = value.float()
                fp32_keys.append(key)
            else:
                value = value.to(dtype)
        out[key] = value.contiguous()
    return out, fp32_keys


def _default_normalization() -> dict:
    from core.naip import NAIP_MEANS, NAIP_STDS

    return {
        "mean": list(NAIP_MEANS),
        "std": list(NAIP_STDS),
        "input": "uint8 NAIP digital numbers, bands red, green, blue, nir",
        "formula": "(x - mean) / std per band",
    }


def _default_class_table() -> list[dict]:
    from core.classes import class_table

    return class_table()


def save_export(
    model: ClaySegmenter,
    uri: str,
    reference_stats: dict | None = None,
    extra: dict | None = None,
    *,
    dtype: torch.dtype = torch.float16,
    class_table: list[dict] | None = None,
    normalization: dict | None = None,
    encoder_weights: dict | None = None,
) -> str:
    """Write the compact export of ``model`` to ``uri`` (local path, ``file://`` or ``s3://``).

    Args:
        model: a trained segmenter (dynamic or folded patch embedding; it is not modified).
        uri: destination of the ``.safetensors`` file.
        reference_stats: training-data reference statistics for drift monitoring (any
            JSON-serialisable dict), stored verbatim.
        extra: any other JSON-serialisable provenance (run id, metrics, source checkpoint).
        dtype: storage dtype of the weights, ``torch.float16`` (default) or ``torch.bfloat16``.
        class_table: the class table; defaults to ``core.classes.class_table()``.
        normalization: input normalisation; defaults to Clay's NAIP means/stds.
        encoder_weights: where the encoder's weights came from
            (:func:`training.models.weights.encoder_weights_record`); None: not recorded.

    Returns:
        The URI written.
    """
    from safetensors.torch import save_file

    if dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise ValueError(f"export dtype must be float16, bfloat16 or float32, got {dtype}")
    if not isinstance(model, ClaySegmenter):
        raise ValueError(f"save_export takes a ClaySegmenter, got {type(model).__name__}")
    if model.encoder is None:
        raise ValueError(
            "the segmenter has no encoder; attach the encoder its head was trained on before exporting"
        )
    tensors, fp32_keys = export_state_dict(model, dtype)
    config = model.encoder.config
    metadata = {
        "format": EXPORT_FORMAT,
        "format_version": str(EXPORT_VERSION),
        "encoder_config": json.dumps(config.to_dict()),
        "head_config": json.dumps(model.head.config()),
        "preset": json.dumps(config.preset),
        "class_table": json.dumps(class_table if class_table is not None else _default_class_table()),
        "normalization": json.dumps(normalization if normalization is not None else _default_normalization()),
        "wavelengths_um": json.dumps(model.wavelengths.tolist()),
        "gsd_m": json.dumps(float(model.gsd)),
        "reference_stats": json.dumps(reference_stats),
        "extra": json.dumps(extra),
        "encoder_weights": json.dumps(encoder_weights),
        "storage_dtype": json.dumps(str(dtype).removeprefix("torch.")),
        "fp32_keys": json.dumps(fp32_keys),
        "created_utc": json.dumps(datetime.now(UTC).isoformat(timespec="seconds")),
    }
    local = storage.local_path(uri)
    if local is not None:
        # Write next to the destination and rename: atomic, and no second in-memory copy.
        local.parent.mkdir(parents=True, exist_ok=True)
        tmp = local.with_name(f".{local.name}.{uuid.uuid4().hex}.tmp")
        try:
            save_file(tensors, str(tmp), metadata=metadata)
            os.replace(tmp, local)
        finally:
            tmp.unlink(missing_ok=True)
        return uri
    with tempfile.TemporaryDirectory(prefix="export-") as tmpdir:
        tmp = Path(tmpdir) / artifacts.EXPORT_NAME
        save_file(tensors, str(tmp), metadata=metadata)
        storage.upload(tmp, uri)
    return uri


def _parse_metadata(raw: dict[str, str] | None, source: str) -> dict[str, Any]:
    if not raw or raw.get("format") != EXPORT_FORMAT:
        raise ValueError(
            f"{source} is not a {EXPORT_FORMAT} export (header format={raw and raw.get('format')!r})"
        )
    version = int(raw.get("format_version", "0"))
    if version > EXPORT_VERSION:
        raise ValueError(
            f"{source} has export format version {version}; this code reads up to {EXPORT_VERSION}"
        )
    out: dict[str, Any] = {"format": raw["format"], "format_version": version}
    for key, value in raw.items():
        if key not in out:
            out[key] = json.loads(value)
    return out


def _local_export(uri_or_path: str | os.PathLike[str]) -> tuple[Path, bool]:
    local = storage.local_path(str(uri_or_path))
    if local is not None:
        if not local.exists():
            raise FileNotFoundError(f"no model export at {uri_or_path}")
        return local, False
    fd, tmp = tempfile.mkstemp(suffix=".safetensors", prefix="export-")
    os.close(fd)
    storage.download(str(uri_or_path), tmp)
    return Path(tmp), True


def read_export_metadata(uri_or_path: str | os.PathLike[str]) -> dict[str, Any]:
    """The parsed header metadata of an export, without loading any tensor."""
    from safetensors import safe_open

    local, is_temp = _local_export(uri_or_path)
    try:
        with safe_open(str(local), framework="pt") as f:
            return _parse_metadata(f.metadata(), str(uri_or_path))
    finally:
        if is_temp:
            local.unlink(missing_ok=True)


def load_export(
    uri_or_path: str | os.PathLike[str],
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> tuple[ClaySegmenter, dict[str, Any]]:
    """Load an export as an eval-mode :class:`ClaySegmenter` with a folded patch embedding.

    The model is built on the meta device and takes the tensors as read, so peak memory is
    the model at ``dtype`` plus one tensor. Call ``model.predict_logits(normalised_chips)``.

    Args:
        uri_or_path: local path, ``file://`` or ``s3://`` URI (remote files are downloaded
            to a temp file, then removed).
        dtype: compute dtype; ``torch.float32`` (default) or ``torch.bfloat16``/``float16``.
        device: where the model lives.

    Returns:
        ``(model, metadata)`` with metadata values parsed from JSON.
    """
    from safetensors import safe_open

    local, is_temp = _local_export(uri_or_path)
    try:
        with safe_open(str(local), framework="pt", device="cpu") as f:
            meta = _parse_metadata(f.metadata(), str(uri_or_path))
            config = ClayConfig.from_dict(meta["encoder_config"])
            waves = meta["wavelengths_um"]
            with torch.device("meta"):
                encoder = ClayEncoder(config, folded_wavelengths=waves)
                head = build_head(meta["head_config"])  # by its kind; none = the seed head
            model = ClaySegmenter(encoder, head, waves, meta["gsd_m"])
            state = {}
            for key in f.keys():  # noqa: SIM118 - safe_open is not a Mapping
                tensor = f.get_tensor(key)
                cast = tensor.is_floating_point() and not key.endswith("wavelengths")
                state[key] = tensor.to(device=device, dtype=dtype) if cast else tensor.to(device)
    finally:
        if is_temp:
            local.unlink(missing_ok=True)
    load_strict(model, state, f"{EXPORT_FORMAT} model")
    return model.to(device).eval(), meta

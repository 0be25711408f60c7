"""Convert a compact export (``model.safetensors``) into an int8 ONNX model for the Lambda.

The result, ``model.int8.onnx``, is self-contained: the graph maps normalised float32 chips
``chips`` (B, 4, S, S) to softmax probabilities ``probabilities`` (B, K, S, S), and the export's
metadata (class table, normalisation, reference statistics, configs, ...) rides in the ONNX
``metadata_props`` as JSON strings, so the infer Lambda needs only ``onnxruntime`` + ``numpy``
(see :mod:`inference.runtime_onnx`).

Pipeline (:func:`convert_export`):

1. ``load_export`` in fp32 (the patch embedding is already folded into a plain conv);
2. ``torch.onnx.export`` (TorchScript exporter, opset 17) of ``softmax(model(chips))`` with a
   dynamic batch axis and a fixed chip side (the position encoding is a constant of the
   grid size, recorded as ``chip_size`` in the metadata);
3. ``onnxruntime.quantization.quantize_dynamic`` of the MatMul weights only (every
   transformer projection and MLP: ~80 % of the large preset's FLOPs); the head's convs,
   LayerNorms and the attention score products stay fp32. Weights are signed int8, per output
   channel, in a reduced (7-bit) range; activations are quantised to uint8 at run time: ONNX
   Runtime's fused ``DynamicQuantizeMatMul``, i.e. MLAS's u8s8 GEMM, the fast int8 path on AVX2
   CPUs without VNNI (the reduced range avoids the 16-bit saturation of ``vpmaddubsw``);
4. ONNX Runtime's offline graph optimisation (``ORT_ENABLE_EXTENDED``, portable across x86
   CPUs) is applied once here, so the Lambda's session start does less work.

Needs torch, onnx and onnxruntime (training image); the inference side never imports this.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from training import storage
from training.artifacts import EXPORT_NAME, ONNX_INT8_NAME
from training.models.export import load_export

__all__ = [
    "ONNX_FORMAT",
    "ProbabilityModel",
    "convert_export",
    "export_fp32_onnx",
    "quantize_onnx",
    "read_onnx_metadata",
    "register_onnx",
]

ONNX_FORMAT = "landcover-clay-segmenter-onnx"
ONNX_FORMAT_VERSION = 1
#: The operators whose constant weights are quantised.
QUANTIZED_OPS = ["MatMul"]
INPUT_NAME = "chips"
OUTPUT_NAME = "probabilities"
OPSET = 17


class ProbabilityModel(nn.Module):
    """``softmax(model.predict_logits(chips), dim=1)``: the exported graph's computation.

    Args:
        model: an eval-mode segmenter with a folded patch embedding.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, chips: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.model(chips), dim=1)  # (B, K, S, S)


def export_fp32_onnx(model: nn.Module, path: str | os.PathLike[str], chip_size: int = 256) -> Path:
    """Export ``softmax(model(chips))`` as fp32 ONNX with a dynamic batch axis.

    Args:
        model: an eval-mode :class:`~training.models.head.ClaySegmenter` (fp32, folded).
        path: destination ``.onnx`` file (weights inline; fine below 2 GB, i.e. up to large).
        chip_size: fixed chip side in pixels (a multiple of the patch size).

    Returns:
        The path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    dummy = torch.zeros(1, 4, chip_size, chip_size, dtype=torch.float32)
    wrapper = ProbabilityModel(model).eval()
    with torch.inference_mode(False), torch.no_grad():
        torch.onnx.export(
            wrapper,
            (dummy,),
            str(path),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )
    return path


def quantize_onnx(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    *,
    weight_type: str = "qint8",
    per_channel: bool = True,
    reduce_range: bool = True,
) -> Path:
    """Dynamic int8 quantisation of the MatMul weights of an fp32 ONNX model.

    ``onnxruntime.quantization.quantize_dynamic`` on MatMuls with a constant weight. At session
    start ONNX Runtime fuses each ``DynamicQuantizeLinear -> MatMulInteger -> Mul`` group into
    one ``DynamicQuantizeMatMul`` (MLAS's u8s8 or u8u8 GEMM).

    Args:
        src: fp32 model.
        dst: int8 model to write.
        weight_type: ``qint8`` (signed weights: u8s8 kernels) or ``quint8`` (u8u8).
        per_channel: one scale per output channel instead of per tensor.
        reduce_range: 7-bit weights (avoids u8s8 saturation on AVX2 without VNNI).

    Returns:
        ``dst`` as a Path.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    types = {"qint8": QuantType.QInt8, "quint8": QuantType.QUInt8}
    if weight_type not in types:
        raise ValueError(f"weight_type must be one of {list(types)}, got {weight_type!r}")
    quantize_dynamic(
        str(src),
        str(dst),
        weight_type=types[weight_type],
        per_channel=per_channel,
        reduce_range=reduce_range,
        op_types_to_quantize=QUANTIZED_OPS,
        extra_options={"MatMulConstBOnly": True},
    )
    return Path(dst)


def _optimize_offline(src: Path, dst: Path) -> Path:
    """Apply ORT's portable (``EXTENDED``) graph optimisations once and save the result."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(dst)
    options.intra_op_num_threads = 1
    ort.InferenceSession(str(src), options, providers=["CPUExecutionProvider"])
    return dst


def _set_metadata(path: Path, metadata: dict[str, Any]) -> None:
    """Store ``metadata`` as JSON strings in the model's ``metadata_props``."""
    import onnx

    proto = onnx.load(str(path))
    del proto.metadata_props[:]
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, json.dumps(value)
    proto.producer_name = "landcover-platform"
    onnx.save(proto, str(path))


def read_onnx_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The JSON-decoded ``metadata_props`` of an ONNX model written by :func:`convert_export`."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    return {p.key: json.loads(p.value) for p in proto.metadata_props}


def convert_export(
    export_uri: str | os.PathLike[str],
    out_uri: str | os.PathLike[str],
    *,
    chip_size: int = 256,
    weight_type: str = "qint8",
    per_channel: bool = True,
    reduce_range: bool = True,
    quantize: bool = True,
    optimize: bool = True,
    model: nn.Module | None = None,
    metadata: dict[str, Any] | None = None,
) -> str:
    """Compact export -> ``model.int8.onnx`` (or fp32 ONNX with ``quantize=False``).

    Args:
        export_uri: the compact export (local path, ``file://`` or ``s3://``).
        out_uri: destination of the ONNX file (local path, ``file://`` or ``s3://``).
        chip_size: fixed chip side the graph is built for.
        weight_type, per_channel, reduce_range: see :func:`quantize_onnx`.
        quantize: False writes the fp32 graph (for comparisons).
        optimize: apply ORT's portable offline graph optimisations.
        model, metadata: an already loaded ``load_export`` result, to skip loading again.

    Returns:
        ``out_uri`` as a string.
    """
    if model is None or metadata is None:
        model, metadata = load_export(export_uri, dtype=torch.float32)
    patch = model.encoder.patch_size
    if chip_size % patch:
        raise ValueError(f"chip_size {chip_size} is not a multiple of the patch size {patch}")
    meta = {k: v for k, v in metadata.items() if k not in ("format", "format_version", "fp32_keys")}
    meta.update(
        {
            "format": ONNX_FORMAT,
            "format_version": ONNX_FORMAT_VERSION,
            "source_format": metadata.get("format"),
            "source_format_version": metadata.get("format_version"),
            "chip_size": chip_size,
            "num_classes": int(model.num_classes),
            "input_name": INPUT_NAME,
            "output_name": OUTPUT_NAME,
            "output": "softmax probabilities (B, K, S, S)",
            "quantization": (
                {
                    "method": "onnxruntime.quantization.quantize_dynamic",
                    "ops": QUANTIZED_OPS,
                    "weight_type": weight_type,
                    "per_channel": per_channel,
                    "reduce_range": reduce_range,
                }
                if quantize
                else None
            ),
            "opset": OPSET,
        }
    )
    with tempfile.TemporaryDirectory(prefix="onnx-export-") as tmp:
        tmpdir = Path(tmp)
        current = export_fp32_onnx(model, tmpdir / "fp32.onnx", chip_size)
        del model  # the graph holds its own copy of the weights; free the torch one
        if quantize:
            fp32 = current
            current = quantize_onnx(
                fp32,
                tmpdir / "int8.onnx",
                weight_type=weight_type,
                per_channel=per_channel,
                reduce_range=reduce_range,
            )
            fp32.unlink()
        _set_metadata(current, meta)
        if optimize:  # ORT keeps metadata_props in the optimised model
            current = _optimize_offline(current, tmpdir / "opt.onnx")
        local = storage.local_path(str(out_uri))
        if local is not None:
            local.parent.mkdir(parents=True, exist_ok=True)
            if _same_fs(current, local):
                os.replace(current, local)
            else:
                _copy(current, local)
        else:
            storage.upload(current, str(out_uri))
    return str(out_uri)


def _same_fs(a: Path, b: Path) -> bool:
    try:
        return os.stat(a).st_dev == os.stat(b.parent).st_dev
    except OSError:
        return False


def _copy(src: Path, dst: Path) -> None:
    import shutil

    tmp = dst.with_name(f".{dst.name}.tmp")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def register_onnx(version_uri: str, export_name: str = EXPORT_NAME) -> str:
    """Write ``model.int8.onnx`` next to the export in a registry version folder.

    This is what the register step calls after ``register_version``:
    ``register_onnx(registry.version_uri(root, model_name, version))``.

    Returns:
        The URI of the ONNX model.
    """
    export_uri = storage.join(version_uri, export_name)
    out_uri = storage.join(version_uri, ONNX_INT8_NAME)
    return convert_export(export_uri, out_uri)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("export", help="compact export (model.safetensors): path or URI")
    parser.add_argument("out", help="destination .onnx: path or URI")
    parser.add_argument("--chip-size", type=int, default=256)
    parser.add_argument("--weight-type", choices=["qint8", "quint8"], default="qint8")
    parser.add_argument("--fp32", action="store_true", help="write the fp32 graph, no quantisation")
    args = parser.parse_args(argv)
    print(
        convert_export(
            args.export,
            args.out,
            chip_size=args.chip_size,
            weight_type=args.weight_type,
            quantize=not args.fp32,
        )
    )


if __name__ == "__main__":
    main()

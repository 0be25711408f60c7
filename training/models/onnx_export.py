"""Convert a compact export (``model.safetensors``) into the ONNX models the Lambda runtimes run.

Registration (:func:`register_onnx` -> :func:`write_runtime_artifacts`) writes one file per
runtime path of :mod:`inference.runtime_cpu`, beside the export in the version folder:

- ``model.int8.onnx``: ONNX Runtime int8, 7-bit weights (AVX2 CPUs without VNNI);
- ``model.int8-vnni.onnx``: ONNX Runtime int8, full 8-bit weights (VNNI / AMX-INT8 / Arm dotprod);
- ``model.int8-qdq.onnx``: static (calibrated) int8 QDQ graph for OpenVINO on x86 CPUs with
  AMX-INT8 or VNNI: the weight MatMuls and the attention products run on oneDNN's int8 kernels
  (the attention as one fused int8 subgraph), LayerNorms, softmax and the head in fp32; its
  activation ranges are calibrated on chips of the training run's own training scenes;
- ``model.fp32.onnx``: the plain fp32 graph (OpenVINO, bf16 on AMX / AVX512-BF16).

Each is self-contained: the graph maps normalised float32 chips
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

The bench also builds experimental variants (:data:`VARIANTS`): the attention score MatMuls
quantised too, the head convs quantised (``ConvInteger``), and static calibrated int8 (QDQ,
calibration chips from the synthetic training split).

Needs torch, onnx and onnxruntime (training image); the inference side never imports this.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from core import storage
from core.artifacts import (
    EXPORT_NAME,
    ONNX_FP32_NAME,
    ONNX_INT8_NAME,
    ONNX_INT8_QDQ_NAME,
    ONNX_INT8_VNNI_NAME,
    RUNTIME_ARTIFACT_NAMES,
)
from training.models.export import load_export

__all__ = [
    "ONNX_FORMAT",
    "VARIANTS",
    "ProbabilityModel",
    "QuantVariant",
    "calibration_chips",
    "convert_export",
    "export_fp32_onnx",
    "make_variant",
    "quantize_onnx",
    "read_onnx_metadata",
    "register_onnx",
    "write_runtime_artifacts",
]

log = logging.getLogger(__name__)

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
    ops: tuple[str, ...] | list[str] = tuple(QUANTIZED_OPS),
    const_b_only: bool = True,
) -> Path:
    """Dynamic int8 quantisation of an fp32 ONNX model (the MatMul weights by default).

    ``onnxruntime.quantization.quantize_dynamic``. At session start ONNX Runtime fuses each
    ``DynamicQuantizeLinear -> MatMulInteger -> Mul`` group into one ``DynamicQuantizeMatMul``
    (MLAS's u8s8 or u8u8 GEMM).

    Args:
        src: fp32 model.
        dst: int8 model to write.
        weight_type: ``qint8`` (signed weights: u8s8 kernels) or ``quint8`` (u8u8).
        per_channel: one scale per output channel instead of per tensor.
        reduce_range: 7-bit weights (avoids u8s8 saturation on AVX2 without VNNI).
        ops: operator types to quantise (``"Conv"`` adds the head convs as ``ConvInteger``).
        const_b_only: quantise only MatMuls with a constant weight; False also quantises the
            attention score products (both inputs dynamic).

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
        op_types_to_quantize=list(ops),
        extra_options={"MatMulConstBOnly": const_b_only},
    )
    return Path(dst)


def calibration_chips(
    n: int, chip_size: int = 256, seed: int = 0, scenes: Sequence[str] | None = None
) -> np.ndarray:
    """``n`` normalised chips (n, 4, S, S) for static int8 calibration.

    With ``scenes`` (the training split's NAIP image URIs, what a training run registers), the
    chips are seeded random windows of those scenes, spread over them round-robin, so the
    activation ranges are those of the user's own imagery. Without, they come from the scenes
    ``training.data.synthetic.generate_dataset`` writes for split ``train`` (same seeds): what
    the bench's random-weight models and tests calibrate on.

    Raises:
        ValueError: ``scenes`` yield no chip of ``chip_size`` with at most half nodata.
    """
    from core.naip import normalize

    if scenes:
        return normalize(_scene_windows(list(scenes), n, chip_size, seed))
    from training.data.synthetic import generate_scene, scene_seed

    out = np.empty((n, 4, chip_size, chip_size), dtype=np.float32)
    per_scene = 4
    for i in range(n):
        scene, k = divmod(i, per_scene)
        if k == 0:
            image, _ = generate_scene(scene_seed(seed, "train", scene), 2 * chip_size)
        y, x = divmod(k, 2)
        out[i] = normalize(image[:, y * chip_size : (y + 1) * chip_size, x * chip_size : (x + 1) * chip_size])
    return out


def _scene_windows(scenes: list[str], n: int, chip_size: int, seed: int) -> np.ndarray:
    """Up to ``n`` uint8 chips (k, 4, S, S): ``ceil(n / len(scenes))`` random windows per scene."""
    from training.data.chips import read_chips

    per_scene = -(-n // len(scenes))
    batches = [
        read_chips(uri, random_count=per_scene, size=chip_size, seed=seed + i).images
        for i, uri in enumerate(scenes[:n])
    ]
    # Round-robin: the first chip of every scene, then the second, ...
    chips = [b[j] for j in range(per_scene) for b in batches if j < len(b)][:n]
    if not chips:
        raise ValueError(
            f"no {chip_size}x{chip_size} calibration chip with at most half nodata in {len(scenes)} "
            f"training scene(s) ({scenes[0]}, ...): scenes must be at least one chip in size"
        )
    if len(chips) < n:
        log.warning("calibrating on %d chips (asked for %d): the training scenes hold no more", len(chips), n)
    return np.stack(chips)


def quantize_static_onnx(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    chips: np.ndarray,
    *,
    ops: tuple[str, ...] = ("MatMul", "Conv"),
    reduce_range: bool = True,
    const_b_only: bool = False,
    symmetric: bool = False,
) -> Path:
    """Static (calibrated) int8: QDQ graph, activation ranges from MinMax over ``chips``.

    ``const_b_only`` leaves the MatMuls of two activations (the attention score products) in
    float; quantised, OpenVINO still fuses the attention, into an int8 subgraph. ``symmetric``:
    signed int8 activations with zero point 0 (no zero-point subtraction in OpenVINO's int8
    kernels).
    """
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter([{INPUT_NAME: c[None]} for c in np.asarray(chips, dtype=np.float32)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._it, None)

    exclude: list[str] = []
    if const_b_only:  # by name: the QDQ MatMul quantiser does not read MatMulConstBOnly
        graph = onnx.load(str(src), load_external_data=False).graph
        constants = {i.name for i in graph.initializer}
        exclude = [n.name for n in graph.node if n.op_type == "MatMul" and n.input[1] not in constants]
    quantize_static(
        str(src),
        str(dst),
        _Reader(),
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=list(ops),
        nodes_to_exclude=exclude,
        per_channel=True,
        reduce_range=reduce_range,
        activation_type=QuantType.QInt8 if symmetric else QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        extra_options={"ActivationSymmetric": symmetric, "WeightSymmetric": True},
    )
    return Path(dst)


@dataclass(frozen=True)
class QuantVariant:
    """How one ONNX artifact is made from the fp32 graph."""

    name: str
    method: str  # "none" | "dynamic" | "static"
    reduce_range: bool = True
    ops: tuple[str, ...] = tuple(QUANTIZED_OPS)
    const_b_only: bool = True
    optimize: bool = True  # ORT's portable offline optimisation (ORT-only graphs)
    calibration: int = 0  # static: calibration chips
    symmetric: bool = False  # static: signed int8 activations, zero point 0
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> dict[str, Any] | None:
        if self.method == "none":
            return None
        return {
            "method": f"onnxruntime.quantization.quantize_{self.method}",
            "variant": self.name,
            "ops": list(self.ops),
            "attention_matmuls": not self.const_b_only,
            "weight_type": "qint8",
            "per_channel": True,
            "reduce_range": self.reduce_range,
            **(
                {
                    "calibration_chips": self.calibration,
                    "activation_type": "qint8 symmetric" if self.symmetric else "quint8",
                }
                if self.method == "static"
                else {}
            ),
        }


#: Every way the platform turns the fp32 graph into a runtime artifact (served + experiments).
VARIANTS: dict[str, QuantVariant] = {
    "fp32": QuantVariant("fp32", "none", optimize=False, note="plain fp32 graph (OpenVINO reads it)"),
    "int8-avx2": QuantVariant("int8-avx2", "dynamic", True, note="served on AVX2: 7-bit weights"),
    "int8-vnni": QuantVariant(
        "int8-vnni", "dynamic", False, note="served by ONNX Runtime on int8-dot-product CPUs: 8-bit weights"
    ),
    "int8-attn": QuantVariant(
        "int8-attn", "dynamic", True, const_b_only=False, note="experiment: attention score MatMuls too"
    ),
    "int8-vnni-attn": QuantVariant(
        "int8-vnni-attn",
        "dynamic",
        False,
        const_b_only=False,
        note="experiment: 8-bit weights (VNNI recipe) + attention score MatMuls",
    ),
    "int8-conv": QuantVariant(
        "int8-conv", "dynamic", True, ops=("MatMul", "Conv"), note="experiment: head convs too (ConvInteger)"
    ),
    "int8-static": QuantVariant(
        "int8-static",
        "static",
        True,
        ops=("MatMul", "Conv"),
        optimize=False,
        calibration=8,
        note="experiment: static QDQ int8, calibrated on training-split chips",
    ),
    # The attention products too: OpenVINO's fused int8 attention is faster on VNNI CPUs at
    # 99.999 % agreement on the trained champion, and no slower on AMX (``make bench`` times it).
    "int8-qdq": QuantVariant(
        "int8-qdq",
        "static",
        False,
        ops=("MatMul",),
        const_b_only=False,
        optimize=False,
        calibration=8,
        symmetric=True,
        note="served by OpenVINO on VNNI/AMX: static int8 weight and attention MatMuls, the rest fp32",
    ),
}
#: The registered artifact of each served variant.
ARTIFACT_VARIANTS: dict[str, str] = {
    ONNX_INT8_NAME: "int8-avx2",
    ONNX_INT8_VNNI_NAME: "int8-vnni",
    ONNX_INT8_QDQ_NAME: "int8-qdq",
    ONNX_FP32_NAME: "fp32",
}


def make_variant(
    fp32_path: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    variant: str | QuantVariant,
    metadata: dict[str, Any],
    *,
    chip_size: int = 256,
    calibration_scenes: Sequence[str] | None = None,
) -> Path:
    """Build ``variant`` of an fp32 ONNX graph at local ``dst``, with ``metadata`` stored in it.

    ``metadata`` is the ONNX metadata of :func:`onnx_metadata` (its ``quantization`` entry is
    replaced by this variant's description). A static variant calibrates on chips of
    ``calibration_scenes`` (see :func:`calibration_chips`); the description names them.
    """
    spec = VARIANTS[variant] if isinstance(variant, str) else variant
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    description = spec.describe()
    with tempfile.TemporaryDirectory(prefix="onnx-variant-", dir=dst.parent) as tmp:
        current = Path(tmp) / "q.onnx"
        if spec.method == "none":
            _copy(Path(fp32_path), current)
        elif spec.method == "dynamic":
            quantize_onnx(
                fp32_path,
                current,
                reduce_range=spec.reduce_range,
                ops=spec.ops,
                const_b_only=spec.const_b_only,
            )
        elif spec.method == "static":
            chips = calibration_chips(spec.calibration, chip_size, scenes=calibration_scenes)
            description.update(
                calibration_chips=len(chips),
                calibration_source=(
                    {"training_scenes": list(calibration_scenes)}
                    if calibration_scenes
                    else "synthetic training split (generator seeds)"
                ),
            )
            quantize_static_onnx(
                fp32_path,
                current,
                chips,
                ops=spec.ops,
                reduce_range=spec.reduce_range,
                const_b_only=spec.const_b_only,
                symmetric=spec.symmetric,
            )
        else:
            raise ValueError(f"unknown quantisation method {spec.method!r}")
        _set_metadata(current, {**metadata, "quantization": description, "variant": spec.name})
        if spec.optimize:
            current = _optimize_offline(current, Path(tmp) / "opt.onnx")
        os.replace(current, dst)
    return dst


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


def onnx_metadata(model: nn.Module, metadata: dict[str, Any], chip_size: int) -> dict[str, Any]:
    """The ``metadata_props`` of an ONNX artifact: the export's metadata plus the graph's facts."""
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
            "quantization": None,
            "opset": OPSET,
        }
    )
    return meta


def _load_fp32(
    export_uri: str | os.PathLike[str],
    chip_size: int,
    model: nn.Module | None,
    metadata: dict[str, Any] | None,
) -> tuple[nn.Module, dict[str, Any]]:
    if model is None or metadata is None:
        model, metadata = load_export(export_uri, dtype=torch.float32)
    patch = model.encoder.patch_size
    if chip_size % patch:
        raise ValueError(f"chip_size {chip_size} is not a multiple of the patch size {patch}")
    return model, onnx_metadata(model, metadata, chip_size)


def _put(local: Path, out_uri: str) -> None:
    """Move a finished local file to ``out_uri`` (local path, ``file://`` or ``s3://``)."""
    dest = storage.local_path(str(out_uri))
    if dest is not None:
        dest.parent.mkdir(parents=True, exist_ok=True)
        if _same_fs(local, dest):
            os.replace(local, dest)
        else:
            _copy(local, dest)
    else:
        storage.upload(local, str(out_uri))


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
    model, meta = _load_fp32(export_uri, chip_size, model, metadata)
    if quantize:
        meta["quantization"] = {
            "method": "onnxruntime.quantization.quantize_dynamic",
            "ops": QUANTIZED_OPS,
            "weight_type": weight_type,
            "per_channel": per_channel,
            "reduce_range": reduce_range,
        }
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
        _put(current, str(out_uri))
    return str(out_uri)


def write_runtime_artifacts(
    export_uri: str,
    folder_uri: str,
    names: tuple[str, ...] = RUNTIME_ARTIFACT_NAMES,
    *,
    chip_size: int = 256,
    overwrite: bool = False,
    model: nn.Module | None = None,
    metadata: dict[str, Any] | None = None,
    calibration_scenes: Sequence[str] | None = None,
) -> dict[str, str]:
    """Write the runtime artifacts ``names`` (default: every runtime path's) into ``folder_uri``.

    The export is loaded and traced to fp32 ONNX once; each artifact is then made from that
    graph (:data:`ARTIFACT_VARIANTS`). Artifacts already there are kept unless ``overwrite``,
    so a retried registration only adds what is missing. ``calibration_scenes``: the training
    split's image URIs the static int8 graph calibrates on (None: the synthetic training split).

    Returns:
        ``{name: uri}`` of every artifact in ``names``.
    """
    unknown = [n for n in names if n not in ARTIFACT_VARIANTS]
    if unknown:
        raise ValueError(f"no recipe for {unknown}; known: {sorted(ARTIFACT_VARIANTS)}")
    uris = {name: storage.join(folder_uri, name) for name in names}
    todo = [n for n in names if overwrite or not storage.exists(uris[n])]
    if not todo:
        return uris
    model, meta = _load_fp32(export_uri, chip_size, model, metadata)
    with tempfile.TemporaryDirectory(prefix="onnx-artifacts-") as tmp:
        tmpdir = Path(tmp)
        fp32 = export_fp32_onnx(model, tmpdir / "fp32.onnx", chip_size)
        del model
        for name in todo:
            log.info("writing %s (%s) to %s", name, ARTIFACT_VARIANTS[name], uris[name])
            local = make_variant(
                fp32,
                tmpdir / name,
                ARTIFACT_VARIANTS[name],
                meta,
                chip_size=chip_size,
                calibration_scenes=calibration_scenes,
            )
            _put(local, uris[name])
    return uris


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


def register_onnx(
    version_uri: str, export_name: str = EXPORT_NAME, calibration_scenes: Sequence[str] | None = None
) -> dict[str, str]:
    """Write every runtime artifact (:data:`~core.artifacts.RUNTIME_ARTIFACT_NAMES`) that is
    missing next to the export in a registry version folder; the static int8 graph calibrates on
    ``calibration_scenes`` (the run's training images; None: the synthetic training split).

    This is what the register step calls after ``register_version``:
    ``register_onnx(registry.version_uri(root, model_name, version))``.

    Returns:
        ``{artifact name: URI}``.
    """
    return write_runtime_artifacts(
        storage.join(version_uri, export_name), version_uri, calibration_scenes=calibration_scenes
    )


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

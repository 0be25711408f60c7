"""ONNX export of a tiny model and the torch-free OnnxPredictor (issue 8)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from inference.runtime import load_predictor
from inference.runtime_onnx import OnnxPredictor
from training.models.export import read_export_metadata, save_export
from training.models.head import build_segmenter
from training.models.onnx_export import ONNX_FORMAT, convert_export, read_onnx_metadata
from training.models.predictor import TorchPredictor

REPO = Path(__file__).resolve().parents[2]
CHIP = 64  # small chips keep the test fast; the graph is built for this side


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("onnx")
    torch.manual_seed(0)
    model = build_segmenter("tiny", head_width=32).eval()
    export = folder / "model.safetensors"
    stats = {"bands": {"red": {"mean": 0.1}}, "class_counts": [1, 2, 3]}
    save_export(model, str(export), reference_stats=stats, extra={"run": "test"})
    onnx_path = folder / "model.int8.onnx"
    convert_export(str(export), str(onnx_path), chip_size=CHIP)
    return export, onnx_path


def _chips(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(n, 4, CHIP // 8, CHIP // 8)).astype(np.float32)
    # Smooth, image-like inputs: blocky structure plus a little noise.
    chips = np.repeat(np.repeat(base, 8, axis=2), 8, axis=3)
    return (chips + 0.1 * rng.normal(size=chips.shape)).astype(np.float32)


def test_agreement_with_torch(tiny_models: tuple[Path, Path]) -> None:
    export, onnx_path = tiny_models
    chips = _chips(4)
    ref = TorchPredictor(str(export)).predict_proba(chips)
    out = OnnxPredictor(onnx_path).predict_proba(chips)
    assert out.shape == ref.shape == (4, 7, CHIP, CHIP)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out.sum(axis=1), 1.0, atol=1e-4)
    agreement = (out.argmax(1) == ref.argmax(1)).mean()
    assert agreement >= 0.99, agreement


def test_micro_batches_equal_single_chips(tiny_models: tuple[Path, Path]) -> None:
    """With max_batch=1 a chip's result does not depend on its batch neighbours (the dynamic
    activation scale is per tensor, so a joint run differs slightly)."""
    _, onnx_path = tiny_models
    chips = _chips(3, seed=1)
    predictor = OnnxPredictor(onnx_path, max_batch=1)
    split = predictor.predict_proba(chips)
    singles = np.concatenate([predictor.predict_proba(c[None]) for c in chips])
    np.testing.assert_array_equal(split, singles)
    whole = OnnxPredictor(onnx_path, max_batch=8).predict_proba(chips)
    np.testing.assert_allclose(split, whole, atol=2e-3)
    assert (split.argmax(1) == whole.argmax(1)).mean() >= 0.99
    assert OnnxPredictor(onnx_path).predict_proba(chips[:0]).shape == (0, 7, CHIP, CHIP)


def test_metadata_round_trip(tiny_models: tuple[Path, Path]) -> None:
    export, onnx_path = tiny_models
    source = read_export_metadata(str(export))
    predictor = load_predictor(str(onnx_path), backend="onnx")
    meta = predictor.metadata
    assert predictor.backend == "onnx" and predictor.num_classes == 7
    for key in (
        "class_table",
        "normalization",
        "reference_stats",
        "extra",
        "preset",
        "encoder_config",
        "head_config",
    ):
        assert meta[key] == source[key], key
    assert meta["format"] == ONNX_FORMAT
    assert meta["chip_size"] == CHIP
    assert meta["quantization"]["weight_type"] == "qint8"
    assert read_onnx_metadata(onnx_path) == meta
    assert meta["quantization"]["method"] == "onnxruntime.quantization.quantize_dynamic"


def test_rejects_bad_input(tiny_models: tuple[Path, Path]) -> None:
    _, onnx_path = tiny_models
    predictor = OnnxPredictor(onnx_path)
    with pytest.raises(ValueError, match="exported for"):
        predictor.predict_proba(np.zeros((1, 4, CHIP * 2, CHIP * 2), np.float32))
    with pytest.raises(ValueError, match="normalised float"):
        predictor.predict_proba(np.zeros((1, 4, CHIP, CHIP), np.uint8))
    with pytest.raises(ValueError, match="expected chips shaped"):
        predictor.predict_proba(np.zeros((4, CHIP, CHIP), np.float32))
    with pytest.raises(FileNotFoundError):
        OnnxPredictor(onnx_path.with_name("missing.onnx"))


def test_runtime_onnx_never_imports_torch(tiny_models: tuple[Path, Path]) -> None:
    _, onnx_path = tiny_models
    code = (
        "import sys, json, numpy as np\n"
        "from inference.runtime import load_predictor\n"
        f"p = load_predictor({str(onnx_path)!r}, backend='onnx')\n"
        f"out = p.predict_proba(np.zeros((1, 4, {CHIP}, {CHIP}), np.float32))\n"
        "print(json.dumps({'torch': 'torch' in sys.modules, 'shape': list(out.shape)}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result == {"torch": False, "shape": [1, 7, CHIP, CHIP]}

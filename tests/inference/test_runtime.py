"""TorchPredictor / load_predictor: softmax outputs, input checks, backend selection, lean imports."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import numpy as np
import pytest

from core.naip import normalize
from inference.runtime import Predictor, check_chips, default_num_threads, load_predictor
from tests.inference.helpers_core import tiny_export, tiny_predictor
from training.models.predictor import TorchPredictor


@pytest.fixture(scope="module")
def predictor() -> TorchPredictor:
    return tiny_predictor()


def _chips(n: int = 2, size: int = 64) -> np.ndarray:
    rng = np.random.default_rng(0)
    return normalize(rng.integers(0, 256, size=(n, 4, size, size), dtype=np.uint8))


def test_predict_proba_is_softmax_of_the_model(predictor: TorchPredictor) -> None:
    import torch

    chips = _chips()
    probs = predictor.predict_proba(chips)
    assert isinstance(predictor, Predictor)
    assert predictor.backend == "torch" and predictor.num_classes == 7
    assert probs.dtype == np.float32 and probs.shape == (2, 7, 64, 64)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    with torch.inference_mode():
        expected = predictor.model.predict_logits(torch.from_numpy(chips)).softmax(1).numpy()
    np.testing.assert_allclose(probs, expected, atol=1e-6)
    assert predictor.metadata["class_table"][6]["name"] == "No Data"


def test_bfloat16_close_to_float32(predictor: TorchPredictor) -> None:
    bf16 = load_predictor(tiny_export(), dtype="bfloat16", num_threads=1)
    chips = _chips(1)
    a, b = predictor.predict_proba(chips), bf16.predict_proba(chips)
    assert b.dtype == np.float32
    assert (a.argmax(1) == b.argmax(1)).mean() > 0.9


@pytest.mark.parametrize(
    ("chips", "match"),
    [
        (np.zeros((1, 4, 16, 16), dtype=np.uint8), "normalised float"),
        (np.zeros((1, 3, 16, 16), dtype=np.float32), r"\[B, 4, S, S\]"),
        (np.full((1, 4, 16, 16), np.nan, dtype=np.float32), "NaN"),
    ],
)
def test_bad_chips_are_refused(chips: np.ndarray, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        check_chips(chips)


def test_backend_selection() -> None:
    with pytest.raises(ValueError, match="unknown backend"):
        load_predictor(tiny_export(), backend="tensorrt")
    with pytest.raises(ValueError, match="dtype"):
        TorchPredictor(tiny_export(), dtype="int8")
    if importlib.util.find_spec("inference.runtime_onnx") is None:
        with pytest.raises(ValueError, match="runtime_onnx"):
            load_predictor(tiny_export(), backend="onnx")


def test_default_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert default_num_threads() == 3
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert default_num_threads() >= 1


def test_inference_modules_import_without_heavy_dependencies() -> None:
    code = (
        "import sys\n"
        "import inference.runtime, inference.predict, inference.outputs, inference.monitor\n"
        "heavy = ('torch', 'pytorch_lightning', 'lightning', 'hydra', 'mlflow', 'airflow')\n"
        "print(','.join(m for m in heavy if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""

"""The served model as an MLflow pyfunc model: the registry version's int8 ONNX model
(:data:`core.artifacts.ONNX_INT8_NAME`) behind the inference scene predictor, with a
signature and an input example.

The S3 registry stays the source of truth for serving; this is what the MLflow model registry's
versions point to, so ``mlflow.pyfunc.load_model("models:/chesapeake-landcover@champion")``
predicts in any process that has this package (and onnxruntime), e.g. a notebook.

Input: uint8 NAIP images ``(B, 4, H, W)`` (red, green, blue, nir; any H, W). Output: uint8 model
class ids ``(B, H, W)`` (the class table rides in the model's metadata), from the same sliding
window, blending and nodata handling as the infer Lambda.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import mlflow
import numpy as np

__all__ = ["LandcoverModel", "log_served_model", "model_signature"]

log = logging.getLogger(__name__)

#: Name of the ONNX artifact inside the logged MLflow model.
ONNX_ARTIFACT = "onnx_model"
#: Name the model is logged under in its MLflow run.
LOGGED_MODEL_NAME = "served-model"


class LandcoverModel(mlflow.pyfunc.PythonModel):
    """Pyfunc wrapper: ONNX Runtime predictor + :func:`inference.predict.predict_array`."""

    def load_context(self, context: Any) -> None:
        from inference.runtime import load_predictor

        self.predictor = load_predictor(context.artifacts[ONNX_ARTIFACT], "onnx")

    # No type hints on purpose: MLflow 3 would validate and convert the input by them.
    def predict(self, context, model_input, params=None):
        """Class ids uint8 (B, H, W) of uint8 NAIP images (B, 4, H, W) (or one (4, H, W))."""
        from inference.predict import predict_array

        if isinstance(model_input, dict):  # a named-tensor payload
            (model_input,) = model_input.values()
        images = np.asarray(model_input)
        if images.ndim == 3:
            images = images[None]
        if images.ndim != 4 or images.shape[1] != 4:
            raise ValueError(f"expected uint8 NAIP images (B, 4, H, W), got shape {images.shape}")
        return np.stack([predict_array(self.predictor, image).classes for image in images])  # (B, H, W)


def model_signature(chip_size: int = 256) -> tuple[Any, np.ndarray]:
    """The signature (uint8 (-1, 4, -1, -1) in, uint8 (-1, -1, -1) out) and an input example."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    signature = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, 4, -1, -1))]),
        outputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, -1, -1))]),
    )
    rng = np.random.default_rng(0)
    example = rng.integers(1, 256, (1, 4, chip_size, chip_size), dtype=np.uint8)
    return signature, example


def log_served_model(onnx_uri: str, tracking_uri: str, run_id: str) -> str:
    """Log ``onnx_uri`` (local path or storage URI) as a pyfunc model into MLflow run ``run_id``.

    Returns the logged model's URI (what a model registry version's ``source`` points to).
    """
    from core import artifacts, storage

    mlflow.set_tracking_uri(tracking_uri)
    signature, example = model_signature()
    with tempfile.TemporaryDirectory(prefix="mlflow-model-") as tmp:
        local = storage.local_path(str(onnx_uri))
        if local is None:
            local = Path(storage.download(str(onnx_uri), Path(tmp) / artifacts.ONNX_INT8_NAME))
        with mlflow.start_run(run_id=run_id):
            info = mlflow.pyfunc.log_model(
                name=LOGGED_MODEL_NAME,
                python_model=LandcoverModel(),
                artifacts={ONNX_ARTIFACT: str(local)},
                signature=signature,
                input_example=example,
                pip_requirements=["onnxruntime", "numpy", "rasterio"],
            )
    log.info("logged the served model to MLflow run %s: %s", run_id, info.model_uri)
    return info.model_uri

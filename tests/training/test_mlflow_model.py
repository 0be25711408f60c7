"""The registered MLflow version is a loadable model: ``mlflow.pyfunc.load_model(
"models:/chesapeake-landcover@champion")`` predicts a chip in a fresh process, through the
served ONNX int8 model and the inference scene predictor. Real MLflow (sqlite store, local
artifacts), real S3-registry code on a local folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import torch

from core import registry, storage
from core.config import REPO_ROOT
from training import promotion, registry_mlflow
from training.mlflow_model import log_served_model, model_signature

MODEL = "chesapeake-landcover"


def test_champion_alias_loads_as_pyfunc_in_a_fresh_process(tmp_path) -> None:
    import mlflow

    from inference.predict import predict_array
    from inference.runtime import load_predictor
    from training.models.export import save_export
    from training.models.head import build_segmenter
    from training.models.onnx_export import convert_export

    torch.manual_seed(0)
    model = build_segmenter("tiny", head="fusion").eval()
    export = tmp_path / "model.safetensors"
    save_export(model, str(export))
    onnx_path = tmp_path / "model.int8.onnx"
    convert_export(str(export), str(onnx_path))

    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    experiment = client.create_experiment("t", artifact_location=(tmp_path / "artifacts").as_uri())
    run_id = client.create_run(experiment).info.run_id
    client.set_terminated(run_id)
    model_uri = log_served_model(str(onnx_path), tracking_uri, run_id)

    root = storage.to_uri(tmp_path / "registry")
    info = registry.register_version(
        root, MODEL, export, {"miou": 0.5, "per_class_iou": {}}, "model: {}\n", version="v1"
    )
    assert promotion.promote_if_better(root, MODEL, "v1").promoted
    mirrored = registry_mlflow.register_in_mlflow(
        info, tracking_uri, run_id, promoted=True, model_source=model_uri
    )
    assert mirrored["alias_moved"]

    _signature, example = model_signature()
    assert example.dtype == np.uint8 and example.shape == (1, 4, 256, 256)
    chip = np.random.default_rng(1).integers(1, 256, (1, 4, 200, 232), dtype=np.uint8)  # any size
    expected = predict_array(load_predictor(str(onnx_path), "onnx"), chip[0]).classes
    np.save(tmp_path / "chip.npy", chip)
    code = (
        "import json, sys, mlflow, numpy as np\n"
        f"m = mlflow.pyfunc.load_model('models:/{MODEL}@champion')\n"
        f"out = m.predict(np.load({str(tmp_path / 'chip.npy')!r}))\n"
        "inputs = m.metadata.get_input_schema().to_dict()\n"
        "print(json.dumps({'shape': list(out.shape), 'dtype': str(out.dtype), 'inputs': inputs}))\n"
        f"np.save({str(tmp_path / 'out.npy')!r}, out)\n"
    )
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, "MLFLOW_REGISTRY_URI": tracking_uri}
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["shape"] == [1, 200, 232] and result["dtype"] == "uint8"
    assert result["inputs"][0]["tensor-spec"]["shape"] == [-1, 4, -1, -1]
    np.testing.assert_array_equal(np.load(tmp_path / "out.npy")[0], expected)

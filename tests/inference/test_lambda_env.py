"""The Lambda image's Python environment, built for real from inference/requirements-lambda.txt.

``pip install --target`` into a temporary folder (pip may take wheels from its local cache; the
first run downloads ~250 MB from PyPI), then in a fresh interpreter that sees only that folder
and the files the image ships: torch, Lightning and Airflow are absent, every handler imports,
the dispatcher picks an ONNX Runtime or OpenVINO path for this CPU, and the installed size is
printed and held to the 600 MB budget. Opt-in, because it installs from the network:
``LAMBDA_ENV_TEST=1`` (``make bench`` reports the same size).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from inference.bench.image import IMAGE_BUDGET_BYTES, build_lambda_env, shipped_files

REPO_ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(
    os.environ.get("LAMBDA_ENV_TEST") != "1",
    reason="installs the image's requirements with pip (network); set LAMBDA_ENV_TEST=1",
)

_CHECK = """
import importlib.util, json, sys
sys.path[:0] = [sys.argv[1], sys.argv[2]]
import importlib, inference.handlers as h
[importlib.import_module(m) for m in h.HANDLER_MODULES]
import inference.sync_api, inference.runtime_onnx, inference.runtime_openvino
from inference.runtime_cpu import choose_path
choice = choose_path()
absent = {m: importlib.util.find_spec(m) is None for m in ("torch", "pytorch_lightning", "lightning", "airflow")}
print(json.dumps({"absent": absent, "loaded_torch": "torch" in sys.modules, "path": choice.path.name,
                  "reason": choice.reason}))
"""


def test_lambda_env_is_torch_free_and_serves(tmp_path: Path) -> None:
    env_dir = tmp_path / "site"
    report = build_lambda_env(env_dir)
    print(
        f"\nLambda env: {report['installed_mb']:.0f} MB installed in {report['seconds']:.0f} s; largest: {report['largest'][:5]}"
    )
    code_dir = tmp_path / "code"
    for relative in shipped_files():
        dest = code_dir / relative
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes((REPO_ROOT / relative).read_bytes())
    # -S -I: no site-packages of this interpreter, no user site, no PYTHONPATH: only the image's.
    proc = subprocess.run(
        [sys.executable, "-S", "-I", "-c", _CHECK, str(env_dir), str(code_dir)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert all(result["absent"].values()), result
    assert result["loaded_torch"] is False
    assert result["path"] in {"ort-int8-avx2", "ort-int8-vnni", "openvino-int8", "openvino-bf16"}, result
    assert report["installed_bytes"] <= IMAGE_BUDGET_BYTES, report

"""The Lambda image's Python environment, built for real, and the whole chain run from it alone.

The environment is what ``inference/Dockerfile`` installs: ``pip install --require-hashes
--no-deps --target`` of this architecture's lock (``inference/requirements-lambda.txt``), with the
lock's platform flags so that this machine takes the wheels Amazon Linux 2023 takes, then the
strip list (:func:`setup.tools.bench.image.cached_lambda_env`). It is cached under
``.cache/lambda-env-<hash of the lock and strip list>``: the first run downloads about 250 MB
from PyPI (a minute or two), a warm run costs nothing.

Every handler then runs in an interpreter started with ``-S -I`` whose ``sys.path`` holds only the
standard library, that folder and a copy of the files the image ships
(``tests/inference/lambda_chain_driver.py``), against the moto S3 server and Postgres. A
runtime dependency missing from the lock fails here: the dev venv cannot hide it.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from core import registry, storage
from inference import transactions
from inference.ledger import RunStatus, SceneStatus, repository
from inference.ledger.models import Run, Scene
from inference.runtime_cpu import choose_path, detect_cpu
from setup.lambda_requirements import declared_requirements, for_machine
from setup.tools.bench.image import IMAGE_BUDGET_BYTES, cached_lambda_env, shipped_files
from tests.inference.chain_fixtures import chain_settings, make_champion, write_bad, write_scene
from training.models.onnx_export import write_runtime_artifacts

REPO_ROOT = Path(__file__).resolve().parents[2]
DRIVER = Path(__file__).with_name("lambda_chain_driver.py")
CACHE = Path(os.environ.get("LAMBDA_ENV_CACHE", REPO_ROOT / ".cache"))
#: Declared packages a chain run need not import, and why.
NOT_IMPORTED_BY_THE_CHAIN = {
    "awslambdaric": "the runtime interface client: the image's bootstrap imports it and calls the handlers",
}
#: Distribution name -> import name, where they differ.
IMPORT_NAMES = {"pillow": "PIL", "psycopg2-binary": "psycopg2"}

_CHECK = """
import importlib.util, json, sys
sys.path[:0] = [sys.argv[1], sys.argv[2]]
import importlib, inference.handlers as h
[importlib.import_module(m) for m in h.HANDLER_MODULES]
import inference.sync_api, inference.runtime_onnx, inference.runtime_openvino, awslambdaric
from inference.runtime_cpu import choose_path
choice = choose_path()
absent = {m: importlib.util.find_spec(m) is None for m in ("torch", "pytorch_lightning", "lightning", "airflow")}
print(json.dumps({"absent": absent, "loaded_torch": "torch" in sys.modules, "path": choice.path.name,
                  "reason": choice.reason}))
"""


@pytest.fixture(scope="module")
def lambda_env() -> Path:
    CACHE.mkdir(parents=True, exist_ok=True)
    report = cached_lambda_env(CACHE)
    print(
        f"\nLambda env {report['path']} ({'cached' if report['cached'] else 'built'}): "
        f"{report['installed_mb']:.0f} MB, largest {report['largest'][:5]}"
    )
    assert report["installed_bytes"] <= IMAGE_BUDGET_BYTES, report
    assert not report["torch_installed"] and not report["lightning_installed"], report
    return Path(report["path"])


@pytest.fixture(scope="module")
def shipped_code(tmp_path_factory: pytest.TempPathFactory) -> Path:
    code_dir = tmp_path_factory.mktemp("shipped-code")
    for relative in shipped_files():
        dest = code_dir / relative
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes((REPO_ROOT / relative).read_bytes())
    return code_dir


def run_isolated(
    args: list[str], cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """``python -S -I`` (no site-packages, no user site, no PYTHONPATH) with only ``env`` set."""
    base = {"PATH": "/usr/bin:/bin", "HOME": str(cwd)}
    return subprocess.run(
        [sys.executable, "-S", "-I", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**base, **(env or {})},
        timeout=600,
    )


def test_lambda_env_is_torch_free_and_dispatches(
    lambda_env: Path, shipped_code: Path, tmp_path: Path
) -> None:
    proc = run_isolated(["-c", _CHECK, str(lambda_env), str(shipped_code)], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert all(result["absent"].values()), result
    assert result["loaded_torch"] is False
    assert result["path"] in {"ort-int8-avx2", "ort-int8-vnni", "openvino-int8", "openvino-bf16"}, result


def _import_name(requirement: str) -> str:
    name = re.split(r"[<>=!~; \[]", requirement, maxsplit=1)[0].lower()
    return IMPORT_NAMES.get(name, name.replace("-", "_"))


def test_the_whole_chain_runs_from_the_lambda_env(
    lambda_env: Path, shipped_code: Path, s3_bucket: str, postgres_url: str, moto_server: str, tmp_path: Path
) -> None:
    # An empty ledger database: the process step migrates it, as on a fresh RDS instance.
    # The champion's served artifact for this CPU, as registration writes it (torch runs here,
    # in the test process; the handlers run in the child, without it).
    settings = chain_settings(
        s3_bucket, postgres_url, backend="auto", aws_endpoint_url=moto_server, aws_region="us-east-1"
    )
    pointer = make_champion(settings.registry_uri)
    version_uri = registry.version_uri(settings.registry_uri, settings.model_name, pointer["version"])
    choice = choose_path(detect_cpu(), has_runtime=lambda m: m in ("onnxruntime", "openvino"))
    write_runtime_artifacts(
        storage.join(version_uri, "model.safetensors"), version_uri, (choice.artifact,), chip_size=128
    )
    good = [write_scene(storage.join(settings.input_uri, f"scene-{i}.tif"), seed=300 + i) for i in range(2)]
    bad = write_bad(storage.join(settings.input_uri, "bad-bands.tif"), "band_count")

    env = {
        **settings.to_env(),
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_LAMBDA_FUNCTION_NAME": "landcover-test",  # settings are read and checked at import
    }
    proc = run_isolated([str(DRIVER), str(lambda_env), str(shipped_code), "lambda-env-1"], tmp_path, env)
    assert proc.returncode == 0, proc.stderr[-5000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])

    # Nothing but the standard library, the Lambda env and the shipped code was importable.
    for entry in result["sys_path"]:
        stdlib = Path(entry).is_relative_to(sys.base_prefix) and "site-packages" not in entry
        assert stdlib or entry in (str(lambda_env), str(shipped_code)), entry

    steps = result["steps"]
    assert steps["process"]["scenes"] == 2
    assert {b["status"] for b in steps["infer"]} == {"predicted"}, steps["infer"]
    assert [a["status"] for a in steps["assemble"]] == ["predicted", "predicted"], steps["assemble"]
    assert steps["observe"]["scenes"] == 2 and steps["notify"]["status"] == "sent", steps
    assert storage.exists(steps["notify"]["uri"])

    with transactions.session(settings) as s:
        run = s.query(Run).filter_by(execution_id="lambda-env-1").one()
        by_uri = {scene.source_uri: scene for scene in s.query(Scene)}
        assert run.status == RunStatus.succeeded and run.scenes_predicted == 2
        assert by_uri[bad].status == SceneStatus.quarantined
        assert {by_uri[uri].status for uri in good} == {SceneStatus.predicted}
        preds = [p for uri in good for p in repository.predictions_for(s, by_uri[uri])]
    assert len(preds) == 2
    for pred in preds:
        assert pred.model_version == pointer["version"]
        stac = json.loads(storage.read_text(pred.stac_uri))  # validated with pystac in the child
        assert stac["properties"]["model_version"] == pointer["version"]
        assert storage.exists(pred.class_uri) and storage.exists(pred.confidence_uri)

    # Every package the image declares is one the served code loads (or says why not).
    loaded = set(result["modules"])
    exempt = dict(NOT_IMPORTED_BY_THE_CHAIN)
    for runtime in {"onnxruntime", "openvino"} - {choice.path.module}:
        exempt[runtime] = f"one runtime per CPU class: this CPU is served by {choice.path.name}"
    machine = "aarch64" if os.uname().machine in ("aarch64", "arm64") else "x86_64"
    for requirement in for_machine(declared_requirements(), machine):
        name = _import_name(requirement)
        assert name in loaded or name in exempt, (
            f"{requirement}: in the image, but the chain never imports it"
        )
    assert "torch" not in loaded

"""Handlers and settings: environment checks, event parsing, the synchronous API, the image."""

from __future__ import annotations

import base64
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest

from inference import handlers
from inference.settings import DEFAULTS, ChainSettings, SettingsError, settings_from_config
from tests.inference.chain_fixtures import chain_settings, make_champion

REPO = Path(__file__).resolve().parents[2]
ENV = {
    "INPUT_URI": "s3://in/new",
    "OUTPUT_URI": "s3://out/predictions/",
    "REGISTRY_URI": "s3://registry",
    "LEDGER_URL": "sqlite:///ledger.db",
    "CHIP_SIZE": "512",
    "BACKEND": "torch",
}


def test_settings_from_env_are_typed_and_checked() -> None:
    s = ChainSettings.from_env(ENV)
    assert (s.chip_size, s.output_uri, s.model_name) == (512, "s3://out/predictions", "chesapeake-landcover")
    assert s.manifest_prefix == "s3://out/predictions/manifests"
    assert ChainSettings.from_env(s.to_env()) == s
    with pytest.raises(SettingsError, match="INPUT_URI"):
        ChainSettings.from_env({k: v for k, v in ENV.items() if k != "INPUT_URI"})
    with pytest.raises(SettingsError, match="LEDGER_URL"):
        ChainSettings.from_env({k: v for k, v in ENV.items() if k != "LEDGER_URL"})
    with pytest.raises(SettingsError, match="CHIP_SIZE"):
        ChainSettings.from_env({**ENV, "CHIP_SIZE": "big"})
    with pytest.raises(SettingsError, match="file:// or s3://"):
        ChainSettings.from_env({**ENV, "INPUT_URI": "/local/path"})


def test_ledger_url_from_secrets_manager(moto_server: str, monkeypatch) -> None:
    import sqlalchemy as sa

    from core import storage

    storage.configure(endpoint_url=moto_server, region="us-east-1")
    try:
        secret = {
            "username": "ledger",
            "password": "p@ss:/word",
            "host": "db.internal",
            "port": 5432,
            "dbname": "ledger",
        }
        arn = storage.boto3_client("secretsmanager").create_secret(
            Name="ledger-test", SecretString=json.dumps(secret)
        )["ARN"]
        env = {k: v for k, v in ENV.items() if k != "LEDGER_URL"} | {"LEDGER_SECRET_ARN": arn}
        url = sa.make_url(ChainSettings.from_env(env).resolved_ledger_url())
        assert (url.username, url.password, url.host, url.database) == (
            "ledger",
            "p@ss:/word",
            "db.internal",
            "ledger",
        )
        assert url.drivername == "postgresql+psycopg2"
    finally:
        storage.configure()


def test_settings_from_hydra_config() -> None:
    from core.config import compose

    cfg = compose(["inference.chip_size=128", "inference.drift_threshold=0.3"])
    s = settings_from_config(cfg)
    assert s.input_uri == cfg.inference.input_uri.rstrip("/")
    assert s.registry_uri == cfg.storage.registry_uri
    assert (s.chip_size, s.drift_threshold, s.model_name) == (128, 0.3, cfg.model_name)
    assert s.ledger_url.startswith("sqlite:///")


def test_settings_defaults_have_one_home() -> None:
    from core.config import compose

    cfg = compose()
    s = settings_from_config(cfg)
    # The Hydra group leaves the tunables null: the chain's own defaults apply, and Terraform gets
    # the infer memory from the same config.
    assert (s.chip_size, s.drift_threshold, s.max_pixels) == (
        DEFAULTS.chip_size,
        DEFAULTS.drift_threshold,
        DEFAULTS.max_pixels,
    )
    assert (s.infer_memory_mb, s.infer_timeout_s) == (cfg.infra.infer_memory_mb, cfg.infra.infer_timeout_s)


def test_cost_estimate() -> None:
    # 1024 MB for 100 s = 100 GB-s, plus one request.
    expected = 100 * DEFAULTS.lambda_usd_per_gb_s + DEFAULTS.lambda_usd_per_request
    assert DEFAULTS.lambda_cost_usd(100.0, 1024, invocations=1) == pytest.approx(expected)


def test_handlers_reject_malformed_events() -> None:
    from pydantic import ValidationError

    from inference.handlers import infer, observe, process

    handlers.configure(chain_settings("file:///nowhere", "sqlite://"))
    try:
        for handler, event in (
            (process.handler, {}),
            (observe.handler, {"id": 1}),
            (infer.handler, {"execution_id": "x"}),
        ):
            with pytest.raises(ValidationError):
                handler(event, None)
    finally:
        handlers.configure(None)


def _geotiff_b64(image: np.ndarray) -> str:
    from rasterio.io import MemoryFile

    with MemoryFile() as mem:
        with mem.open(
            driver="GTiff", width=image.shape[2], height=image.shape[1], count=4, dtype="uint8"
        ) as ds:
            ds.write(image)
        return base64.b64encode(mem.read()).decode()


def test_sync_request_returns_model_ids_and_the_class_table(tmp_uri: str) -> None:
    """The seed-000 API shape, served by the infer handler with the registry's champion."""
    from core.classes import CLASS_NAMES
    from inference.handlers import infer
    from training.data.synthetic import generate_scene

    settings = chain_settings(tmp_uri, "sqlite://")
    pointer = make_champion(settings.registry_uri)
    image = generate_scene(3, 96)[0]
    handlers.configure(settings)
    try:
        ok = infer.handler({"image": _geotiff_b64(image), "output_size": [48, 48]}, None)
        buf = io.BytesIO()
        np.save(buf, image)
        proxied = infer.handler(
            {"body": json.dumps({"image": base64.b64encode(buf.getvalue()).decode()})}, None
        )
        bad = infer.handler({"image": base64.b64encode(b"not an image").decode()}, None)
    finally:
        handlers.configure(None)
    assert ok["statusCode"] == 200
    body = ok["body"]
    assert body["shape"] == [48, 48] and len(body["prediction"]) == 48
    ids = np.asarray(body["prediction"])
    assert ids.min() >= 0 and ids.max() <= 6
    assert [c["id"] for c in body["classes"]] == list(range(7))
    assert [c["name"] for c in body["classes"]] == list(CLASS_NAMES)
    assert body["model_version"] == pointer["version"]
    assert proxied["statusCode"] == 200 and proxied["body"]["shape"] == [96, 96]
    assert bad["statusCode"] == 400 and bad["body"]["error"] == "invalid_image"


def test_dockerfile_is_the_lambda_image_without_training_stack() -> None:
    text = (REPO / "inference" / "Dockerfile").read_text()
    instructions = [line for line in text.splitlines() if line and not line.startswith("#")]
    # Amazon Linux 2023 (glibc 2.34, the lock's platform tags); AL2's python:3.11 base has no
    # wheel of onnxruntime 1.32 or openvino 2026.
    assert instructions[0] == "FROM public.ecr.aws/lambda/provided:al2023"
    # Torch-free: the image installs the hashed lock of each architecture, with no resolution,
    # into the task root, as make test's Lambda env does (setup.tools.bench.image).
    from setup.tools.bench.image import LOCK_FILES, STRIP_LIST

    for lock in LOCK_FILES.values():
        assert f"/tmp/build/{lock.name}" in text, lock.name
    assert "--require-hashes --no-deps --only-binary=:all:" in text
    assert '--target "${LAMBDA_TASK_ROOT}"' in text
    assert f"/tmp/build/{STRIP_LIST.name}" in text
    assert 'awslambdaric "$_HANDLER"' in text  # the bootstrap the provided base runs
    code = "\n".join(instructions).lower()
    for banned in ("airflow", "mlflow", "lightning", "moto", "[training]", "[dev]", "torch=", "whl/cpu"):
        assert banned not in code, banned
    (cmd,) = [line for line in instructions if line.startswith("CMD")]
    assert json.loads(cmd[len("CMD") :]) == ["inference.handlers.process.handler"]
    for name in ("process", "infer", "observe", "failure"):
        assert f'["inference.handlers.{name}.handler"]' in text  # documented per-function CMD
        module = __import__(f"inference.handlers.{name}", fromlist=["handler"])
        assert callable(module.handler)
    # The pyproject's inference extra (what the image installs) has no training stack either.
    import tomllib

    extra = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"][
        "inference"
    ]
    assert not [d for d in extra if re.match(r"(apache-airflow|mlflow|pytorch-lightning|lightning)\b", d)]
    image_reqs = (REPO / "inference" / "requirements-lambda.txt").read_text().splitlines()
    pins = [line.split("#")[0].strip() for line in image_reqs if line.split("#")[0].strip()]
    assert pins and not [
        d for d in pins if re.match(r"(apache-airflow|mlflow|pytorch-lightning|lightning|torch)\b", d)
    ]

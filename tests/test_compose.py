"""The compose stack (docker-compose.yml) read as data: no Docker engine runs here (DESIGN §6)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from training.config import REPO_ROOT, compose

COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
AIRFLOW = ("api-server", "scheduler", "dag-processor", "triggerer")
REQUIRED = (*AIRFLOW, "postgres", "mlflow", "aws", "grafana")
ONE_SHOT = ("airflow-init", "aws-init")


@pytest.fixture(scope="module")
def stack() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


@pytest.fixture(scope="module")
def services(stack: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return stack["services"]


def _env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def _mounts(service: dict[str, Any]) -> dict[str, str]:
    """Container path -> source, for short-syntax volumes."""
    out = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        out[target] = source
    return out


def _default(value: str) -> str:
    """``${VAR:-default}`` -> ``default`` (what compose substitutes with VAR unset)."""
    return re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", value)


def test_every_service_is_there(services) -> None:
    missing = [name for name in (*REQUIRED, *ONE_SHOT) if name not in services]
    assert not missing, f"docker-compose.yml lacks {missing}"


def test_long_running_services_have_healthchecks(services) -> None:
    for name, service in services.items():
        if name in ONE_SHOT:
            assert service.get("restart") == "no", f"{name} is one-shot: restart must be 'no'"
            continue
        check = service.get("healthcheck")
        assert check and check.get("test"), f"{name} has no healthcheck"
        assert not check.get("disable"), f"{name} disables its healthcheck"


def test_depends_on_uses_conditions(services) -> None:
    for name, service in services.items():
        depends = service.get("depends_on", {})
        assert isinstance(depends, dict), f"{name}: depends_on must be the long form with conditions"
        for dep, spec in depends.items():
            assert dep in services, f"{name} depends on unknown service {dep}"
            wanted = "service_completed_successfully" if dep in ONE_SHOT else "service_healthy"
            assert spec.get("condition") == wanted, f"{name} -> {dep}: condition {spec.get('condition')!r}"
    for name in AIRFLOW:
        depends = services[name]["depends_on"]
        assert {"postgres", "airflow-init", "aws-init", "mlflow"} <= depends.keys(), name
    assert services["scheduler"]["depends_on"]["api-server"]["condition"] == "service_healthy"
    assert {"postgres", "aws-init"} <= services["mlflow"]["depends_on"].keys()


def test_one_shot_services_are_adopted(services) -> None:
    """``up --wait`` fails on an exited container unless a running service waits for it."""
    for init in ONE_SHOT:
        adopters = [n for n, s in services.items() if n not in ONE_SHOT and init in s.get("depends_on", {})]
        assert adopters, f"no long-running service depends on {init}"


def test_airflow_services_share_image_config_and_mounts(services) -> None:
    for name in (*AIRFLOW, "airflow-init"):
        service = services[name]
        assert service["build"]["dockerfile"] == "training/Dockerfile"
        assert (REPO_ROOT / service["build"]["dockerfile"]).is_file()
        env = _env(service)
        assert env["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor"
        assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].endswith("@postgres:5432/airflow")
        assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://api-server:8080/execution/"
        assert env["LANDCOVER_HOME"] == "/opt/landcover"
        assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
        assert env["AWS_ENDPOINT_URL"] == "http://aws:4566"
        mounts = _mounts(service)
        assert mounts["/opt/landcover/src/training"] == "./training"
        assert mounts["/opt/landcover/src/setup"] == "./setup"
        assert env["AIRFLOW__CORE__DAGS_FOLDER"] == "/opt/landcover/src/training/dags"
        for target, source in mounts.items():
            if source.startswith("./"):
                assert (REPO_ROOT / source).exists() or source == "./data", f"{name}: {source} -> {target}"
    assert services["api-server"]["ports"] == ["${AIRFLOW_PORT:-8080}:8080"]
    assert "worker" not in services, "LocalExecutor: tasks run in the scheduler, no Celery worker"


def test_aws_emulator_and_mlflow(services) -> None:
    aws = services["aws"]
    assert aws["image"] == "motoserver/moto:5.2.5"
    assert aws["ports"] == ["4566:4566"]
    assert _env(aws)["MOTO_PORT"] == "4566"
    init_code = services["aws-init"]["command"][0]
    compile(init_code, "aws-init", "exec")  # the bucket script is valid Python
    for suffix in ("artifacts", "registry", "mlflow"):
        assert f'"{suffix}"' in init_code
    command = " ".join(services["mlflow"]["command"])
    assert "--backend-store-uri=postgresql://" in command and "@postgres:5432/mlflow" in command
    assert "--artifacts-destination=s3://" in command
    assert _env(services["mlflow"])["MLFLOW_S3_ENDPOINT_URL"] == "http://aws:4566"


def test_postgres_creates_the_airflow_and_mlflow_databases(stack, services) -> None:
    sql = stack["configs"]["postgres-init"]["content"]
    assert "CREATE DATABASE airflow" in sql and "CREATE DATABASE mlflow" in sql
    assert _env(services["postgres"])["POSTGRES_DB"] == "ledger"


def test_grafana_mounts_the_provisioning_folders(services) -> None:
    grafana = services["grafana"]
    assert grafana["image"].startswith("grafana/grafana")
    assert grafana["ports"] == ["3000:3000"]
    mounts = _mounts(grafana)
    assert mounts["/etc/grafana/provisioning"] == "./observability/grafana/provisioning"
    assert mounts["/var/lib/grafana/dashboards"] == "./observability/grafana/dashboards"
    for source in ("observability/grafana/provisioning", "observability/grafana/dashboards"):
        assert (REPO_ROOT / source).is_dir(), f"{source} is mounted but missing"


def test_grafana_env_covers_the_provisioned_variables(services) -> None:
    """Every ``${VAR}`` the provisioning files use is set on the grafana service."""
    folder = REPO_ROOT / "observability" / "grafana" / "provisioning"
    used = {
        var
        for path in folder.rglob("*.y*ml")
        for line in path.read_text().splitlines()
        if not line.lstrip().startswith("#")
        for var in re.findall(r"\$\{?([A-Z][A-Z0-9_]*)\}?", line)
        if not var.startswith("GF_")
    }
    missing = used - _env(services["grafana"]).keys()
    assert not missing, f"grafana service lacks {sorted(missing)}"


def test_landcover_overrides_select_s3_storage(services, monkeypatch) -> None:
    """The containers' LANDCOVER_OVERRIDES compose to S3 storage and MLflow-proxied artifacts."""
    env = _env(services["scheduler"])
    monkeypatch.setenv("LANDCOVER_OVERRIDES", _default(env["LANDCOVER_OVERRIDES"]))
    cfg = compose(["training=baseline"])
    assert cfg.storage.root_uri == "s3://landcover-demo-artifacts"
    assert cfg.storage.registry_uri == "s3://landcover-demo-registry"
    assert cfg.logging.mlflow.artifact_uri == "mlflow-artifacts:/"
    # An explicit override (a DAG param) still wins over the environment's.
    assert compose(["storage=local"]).storage.root_uri.startswith("file://")


def test_landcover_overrides_unset_changes_nothing(monkeypatch) -> None:
    monkeypatch.delenv("LANDCOVER_OVERRIDES", raising=False)
    assert compose().storage.root_uri.startswith("file://")


def test_dockerfile_installs_the_project() -> None:
    text = (REPO_ROOT / "training" / "Dockerfile").read_text()
    assert "FROM apache/airflow:3.3.2-python3.11" in text
    assert "torch==2.13.0" in text and "download.pytorch.org/whl/cpu" in text
    assert '".[training]"' in text
    ignore = (REPO_ROOT / "training" / "Dockerfile.dockerignore").read_text().splitlines()
    assert "**" in ignore and "!training/" in ignore  # .venv, data and outputs stay out of the context


def test_docker_compose_config_is_valid() -> None:
    """``docker compose config -q`` parses and validates offline, without an engine."""
    if shutil.which("docker") is None:
        pytest.skip("no docker CLI on this machine")
    probe = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        pytest.skip(f"the docker CLI has no compose plugin: {(probe.stderr or probe.stdout).strip()[:120]}")
    result = subprocess.run(
        ["docker", "compose", "-f", str(COMPOSE_FILE), "config", "-q"],
        capture_output=True,
        text=True,
        cwd=Path(REPO_ROOT),
        check=False,
    )
    assert result.returncode == 0, result.stderr

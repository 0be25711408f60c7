"""The compose stack (docker-compose.yml) read as data: no Docker engine runs here."""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from core.config import REPO_ROOT, compose
from core.env_file import AIRFLOW_ADMIN_PASSWORD_VAR, read_env
from setup.compose_env import MODE, ensure_env_file, required_variables

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
    assert services["api-server"]["ports"] == [
        "${LANDCOVER_BIND_ADDRESS:-127.0.0.1}:${AIRFLOW_PORT:-8080}:8080"
    ]
    assert "worker" not in services, "LocalExecutor: tasks run in the scheduler, no Celery worker"


def test_aws_emulator_and_mlflow(services) -> None:
    aws = services["aws"]
    assert aws["image"] == "motoserver/moto:5.2.5"
    assert aws["ports"] == ["${LANDCOVER_BIND_ADDRESS:-127.0.0.1}:4566:4566"]
    assert _env(aws)["MOTO_PORT"] == "4566"
    init_code = services["aws-init"]["command"][0]
    compile(init_code, "aws-init", "exec")  # the bucket script is valid Python
    for suffix in ("artifacts", "registry", "mlflow"):
        assert f'"{suffix}"' in init_code
    command = " ".join(services["mlflow"]["command"])
    assert "--backend-store-uri=postgresql+psycopg2://" in command and "@postgres:5432/mlflow" in command
    assert "--artifacts-destination=s3://" in command
    assert _env(services["mlflow"])["MLFLOW_S3_ENDPOINT_URL"] == "http://aws:4566"


def test_postgres_creates_the_airflow_and_mlflow_databases(stack, services) -> None:
    sql = stack["configs"]["postgres-init"]["content"]
    assert "CREATE DATABASE airflow" in sql and "CREATE DATABASE mlflow" in sql
    assert _env(services["postgres"])["POSTGRES_DB"] == "ledger"


def test_grafana_mounts_the_provisioning_folders(services) -> None:
    grafana = services["grafana"]
    assert grafana["image"].startswith("grafana/grafana")
    assert grafana["ports"] == ["${LANDCOVER_BIND_ADDRESS:-127.0.0.1}:3000:3000"]
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


def test_docker_compose_config_is_valid(tmp_path: Path) -> None:
    """``docker compose config -q`` parses and validates offline, without an engine."""
    if shutil.which("docker") is None:
        pytest.skip("no docker CLI on this machine")
    probe = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        pytest.skip(f"the docker CLI has no compose plugin: {(probe.stderr or probe.stdout).strip()[:120]}")
    env_file = tmp_path / ".env"
    ensure_env_file(env_file)  # compose refuses to interpolate the secrets without one
    result = subprocess.run(
        ["docker", "compose", "--env-file", str(env_file), "-f", str(COMPOSE_FILE), "config", "-q"],
        capture_output=True,
        text=True,
        cwd=Path(REPO_ROOT),
        check=False,
    )
    assert result.returncode == 0, result.stderr


# --- Hardened defaults: loopback ports, secrets only from the generated .env -----------------

# Every secret the stack uses; each must be a ${NAME:?...} in the compose file (no default).
SECRETS = {
    "POSTGRES_PASSWORD",
    "AIRFLOW_DB_PASSWORD",
    "MLFLOW_DB_PASSWORD",
    "LEDGER_READER_PASSWORD",
    AIRFLOW_ADMIN_PASSWORD_VAR,
    "AIRFLOW_JWT_SECRET",
    "AIRFLOW_SECRET_KEY",
    "AIRFLOW_FERNET_KEY",
    "GRAFANA_ADMIN_PASSWORD",
}
SECRET_NAME = re.compile(r"PASSWORD|SECRET|FERNET|TOKEN|API_KEY")
# The local AWS emulator accepts any credentials: these are its placeholders, not secrets.
EMULATOR_CREDENTIALS = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
REFERENCE = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")
URL_PASSWORD = re.compile(r"://[^:/@\s]+:([^@\s]+)@")


class MissingVariable(Exception):
    pass


def _interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's variable substitution on every string of the file (``$$``, ``${X}``,
    ``${X:-d}``, ``${X-d}``, ``${X:?err}``, ``${X?err}``), raising where compose refuses."""
    if isinstance(value, dict):
        return {k: _interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def one(match: re.Match) -> str:
        if match.group(0) == "$$":
            return "$"
        name, op, arg = match.groups()
        have = env.get(name)
        unset = have is None or (op is not None and op.startswith(":") and have == "")
        if op and op.endswith("?") and unset:
            raise MissingVariable(f"{name}: {arg}")
        if op and op.endswith("-") and unset:
            return arg
        return have or ""

    return REFERENCE.sub(one, value)


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)
    elif isinstance(value, str):
        yield value


@pytest.fixture
def env_file(tmp_path: Path) -> Path:
    """`make env_file` into a temporary folder (the target the user runs)."""
    path = tmp_path / ".env"
    proc = subprocess.run(
        ["make", "-s", "env_file", f"ENV_FILE={path}"], cwd=REPO_ROOT, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return path


def test_published_ports_bind_to_loopback_by_default(stack, services) -> None:
    published = {name: s["ports"] for name, s in services.items() if s.get("ports")}
    assert {"postgres", "aws", "mlflow", "api-server", "grafana"} <= published.keys()
    for env, address in (({}, "127.0.0.1"), ({"LANDCOVER_BIND_ADDRESS": "0.0.0.0"}, "0.0.0.0")):
        for name, ports in published.items():
            for entry in ports:
                assert isinstance(entry, str), f"{name}: long-syntax port {entry!r} (give it host_ip)"
                assert entry.startswith("${LANDCOVER_BIND_ADDRESS:-127.0.0.1}:"), f"{name}: {entry}"
                host_ip, host_port, container_port = _interpolate(entry, env).split(":")
                assert host_ip == address, f"{name}: {entry} binds {host_ip}"
                assert host_port.isdigit() and container_port.isdigit(), entry


def test_no_secret_has_a_literal_default(stack, services) -> None:
    text = COMPOSE_FILE.read_text()
    required = set(required_variables(COMPOSE_FILE))
    assert required >= SECRETS, f"secrets that compose would start without: {sorted(SECRETS - required)}"
    for name in SECRETS:  # no ${NAME:-default} or ${NAME-default} anywhere
        assert not re.search(rf"\$\{{{name}:?-", text), f"{name} has a default"
    for insecure in (
        "change-me",
        "postgres:postgres",
        "admin/admin",
        "PASSWORD: postgres",
        "PASSWORD: admin",
    ):
        assert insecure not in text, f"docker-compose.yml still contains {insecure!r}"
    for service_name, service in services.items():
        for key, value in _env(service).items():
            if SECRET_NAME.search(key) and not key.endswith("_FILE") and key not in EMULATOR_CREDENTIALS:
                assert re.fullmatch(r"\$\{[A-Z0-9_]+:\?[^}]+\}", value), f"{service_name}: {key}={value}"
    for value in _strings(stack):  # passwords inside connection URLs
        for password in URL_PASSWORD.findall(value):
            assert re.fullmatch(r"\$\{[A-Z0-9_]+:\?[^}]+\}", password), f"literal password in {value}"


def test_compose_refuses_to_start_without_the_env_file(stack) -> None:
    with pytest.raises(MissingVariable, match="make env_file"):
        _interpolate(stack, {})
    for name in SECRETS:  # each one alone is enough to refuse
        env = {n: "x" for n in SECRETS if n != name}
        with pytest.raises(MissingVariable, match=name):
            _interpolate(stack, env)


def test_generated_env_file_feeds_every_secret(stack, env_file: Path, tmp_path: Path) -> None:
    assert env_file.stat().st_mode & 0o777 == MODE
    values = read_env(env_file)
    assert set(required_variables(COMPOSE_FILE)) <= values.keys()
    for name, value in values.items():
        assert re.fullmatch(r"[A-Za-z0-9_=-]{40,}", value), f"{name}: not a long URL-safe random value"
    fernet = base64.urlsafe_b64decode(values["AIRFLOW_FERNET_KEY"])
    assert len(fernet) == 32  # what Fernet() accepts

    # The stack interpolates completely, and each password reaches both ends of its connection.
    resolved = _interpolate(stack, values)
    svc = resolved["services"]
    sql = resolved["configs"]["postgres-init"]["content"]
    assert _env(svc["postgres"])["POSTGRES_PASSWORD"] == values["POSTGRES_PASSWORD"]
    for role, var in (("airflow", "AIRFLOW_DB_PASSWORD"), ("mlflow", "MLFLOW_DB_PASSWORD")):
        assert f"CREATE ROLE {role} LOGIN PASSWORD '{values[var]}'" in sql
        assert f"CREATE DATABASE {role} OWNER {role}" in sql
    assert (
        f"://airflow:{values['AIRFLOW_DB_PASSWORD']}@postgres:5432/airflow"
        in _env(svc["scheduler"])["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
    )
    assert f"://mlflow:{values['MLFLOW_DB_PASSWORD']}@postgres:5432/mlflow" in " ".join(
        svc["mlflow"]["command"]
    )
    grafana = _env(svc["grafana"])
    assert f"CREATE ROLE {grafana['LEDGER_DB_USER']} LOGIN PASSWORD '{grafana['LEDGER_DB_PASSWORD']}'" in sql
    assert "pg_read_all_data" in sql and "default_transaction_read_only = on" in sql
    assert grafana["GF_SECURITY_ADMIN_PASSWORD"] == values["GRAFANA_ADMIN_PASSWORD"]
    assert _env(svc["airflow-init"])[AIRFLOW_ADMIN_PASSWORD_VAR] == values[AIRFLOW_ADMIN_PASSWORD_VAR]
    scheduler = _env(svc["scheduler"])
    assert scheduler["AIRFLOW__API_AUTH__JWT_SECRET"] == values["AIRFLOW_JWT_SECRET"]
    assert scheduler["AIRFLOW__API__SECRET_KEY"] == values["AIRFLOW_SECRET_KEY"]
    assert scheduler["AIRFLOW__CORE__FERNET_KEY"] == values["AIRFLOW_FERNET_KEY"]

    # Two generations share no value.
    other = tmp_path / "other.env"
    ensure_env_file(other)
    again = read_env(other)
    assert all(again[name] != values[name] for name in values), "values repeat between generations"
    assert len(set(values.values())) == len(values), "two secrets share a value"


def test_env_file_is_never_overwritten(env_file: Path) -> None:
    before = env_file.read_text()
    assert ensure_env_file(env_file) == []
    assert env_file.read_text() == before
    # A hand-edited value is kept; a variable the file lacks is added; a loose mode is tightened.
    env_file.write_text("POSTGRES_PASSWORD=mine\n")
    env_file.chmod(0o644)
    added = ensure_env_file(env_file)
    values = read_env(env_file)
    assert values["POSTGRES_PASSWORD"] == "mine"
    assert set(added) == set(required_variables(COMPOSE_FILE)) - {"POSTGRES_PASSWORD"}
    assert set(required_variables(COMPOSE_FILE)) <= values.keys()
    assert env_file.stat().st_mode & 0o777 == MODE


def test_env_file_is_untracked() -> None:
    if shutil.which("git") is None or not (REPO_ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    proc = subprocess.run(["git", "check-ignore", "-q", ".env"], cwd=REPO_ROOT, check=False)
    assert proc.returncode == 0, ".env is not ignored by git"
    tracked = subprocess.run(["git", "ls-files", ".env"], cwd=REPO_ROOT, capture_output=True, text=True)
    assert tracked.stdout.strip() == "", ".env is tracked"

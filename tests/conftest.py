"""Shared fixtures: a real moto S3 server on 127.0.0.1, a throwaway Postgres database, tmp URIs."""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Iterator

import pytest

from core import storage
from tests.ports import free_port

POSTGRES_ADMIN_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/test")


@pytest.fixture(autouse=True)
def _root_logger_restored() -> Iterator[None]:
    """CLI entry points set the root logger's level and handlers for their process (the dry run's
    --json sets ERROR); in one pytest process that would hide later tests' records from caplog."""
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    yield
    root.setLevel(level)
    root.handlers[:] = handlers


@pytest.fixture(scope="session")
def moto_server() -> Iterator[str]:
    """A real S3-compatible API: moto's server on a free loopback port. Yields its endpoint URL."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    saved = {
        k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")
    }
    os.environ.update(
        AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1"
    )
    try:
        yield endpoint
    finally:
        server.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture
def s3_bucket(moto_server: str) -> Iterator[str]:
    """A fresh bucket on the moto server, with the storage layer pointed at it. Yields ``s3://bucket``."""
    storage.configure(endpoint_url=moto_server, region="us-east-1")
    bucket = f"test-{uuid.uuid4().hex[:12]}"
    storage.boto3_client("s3").create_bucket(Bucket=bucket)
    try:
        yield f"s3://{bucket}"
    finally:
        storage.configure()


@pytest.fixture
def tmp_uri(tmp_path) -> str:
    """A ``file://`` URI of an empty temporary folder."""
    return storage.to_uri(tmp_path)


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh Postgres database on the local server, dropped afterwards. Yields its SQLAlchemy URL."""
    import sqlalchemy as sa

    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    except sa.exc.OperationalError as exc:  # pragma: no cover - depends on the machine
        pytest.fail(f"Postgres is not reachable at {POSTGRES_ADMIN_URL}: {exc}")
    url = POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    try:
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()

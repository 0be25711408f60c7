"""The URI storage layer on file:// and on a real S3 API (moto server)."""

from __future__ import annotations

import threading
import uuid

import pytest

from core import storage


@pytest.fixture(params=["file", "s3"])
def root(request, tmp_uri) -> str:
    if request.param == "file":
        return tmp_uri
    return request.getfixturevalue("s3_bucket")


def test_round_trip_list_exists_delete(root: str) -> None:
    uri = storage.join(root, "a", "b.bin")
    assert not storage.exists(uri)
    storage.write_bytes(uri, b"\x00\x01payload")
    storage.write_text(storage.join(root, "a", "c.txt"), "hello")
    storage.write_text(storage.join(root, "z.txt"), "other")

    assert storage.exists(uri)
    assert storage.read_bytes(uri) == b"\x00\x01payload"
    assert storage.list_uris(storage.join(root, "a")) == [uri, storage.join(root, "a", "c.txt")]
    assert storage.list_uris(root, suffix=".txt") == [
        storage.join(root, "a", "c.txt"),
        storage.join(root, "z.txt"),
    ]
    assert storage.list_uris(storage.join(root, "missing")) == []

    storage.delete(uri)
    assert not storage.exists(uri)
    with pytest.raises(FileNotFoundError, match="no object at"):
        storage.read_bytes(uri)


def test_upload_download_and_open(root: str, tmp_path) -> None:
    src = tmp_path / "src.bin"
    src.write_bytes(b"x" * 10_000)
    uri = storage.join(root, "up", "src.bin")
    storage.upload(src, uri)
    got = storage.download(uri, tmp_path / "dl" / "copy.bin")
    assert got.read_bytes() == src.read_bytes()
    with storage.open_uri(uri) as handle:
        handle.seek(9_990)
        assert handle.read() == b"x" * 10


def test_put_if_match_is_compare_and_swap(root: str) -> None:
    uri = storage.join(root, "pointer.json")
    storage.put_if_match(uri, b"v1", expected_tag=None)
    with pytest.raises(storage.PreconditionFailed):
        storage.put_if_match(uri, b"again", expected_tag=None)

    tag = storage.version_tag(uri)
    storage.put_if_match(uri, b"v2", expected_tag=tag)
    with pytest.raises(storage.PreconditionFailed):  # the tag is stale now
        storage.put_if_match(uri, b"v3", expected_tag=tag)
    assert storage.read_bytes(uri) == b"v2"


def test_concurrent_cas_counter_loses_no_update(root: str) -> None:
    """Four writers increment one counter through CAS retries; every increment survives."""
    uri = storage.join(root, "counter")
    storage.put_if_match(uri, b"0", expected_tag=None)

    def bump() -> None:
        for _ in range(3):
            while True:
                tag = storage.version_tag(uri)
                value = int(storage.read_bytes(uri))
                try:
                    storage.put_if_match(uri, str(value + 1).encode(), expected_tag=tag)
                    break
                except storage.PreconditionFailed:
                    continue

    threads = [threading.Thread(target=bump) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert int(storage.read_bytes(uri)) == 12


def test_unknown_scheme_is_refused() -> None:
    with pytest.raises(storage.StorageError, match="unsupported URI scheme 'gs'"):
        storage.filesystem("gs://bucket/key")


def test_endpoint_from_config_then_env(monkeypatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1")
    storage.configure()
    assert storage.endpoint_url() == "http://127.0.0.1:1"
    storage.configure(endpoint_url="http://127.0.0.1:2")
    assert storage.endpoint_url() == "http://127.0.0.1:2"
    storage.configure()


def test_local_profile_uses_localstack_client(monkeypatch) -> None:
    """The `local` profile builds clients through localstack-client, aimed at the edge port."""
    monkeypatch.setenv("LOCALSTACK_HOST", "127.0.0.1:4566")
    client = storage.boto3_client("s3", profile="local")
    assert client.meta.endpoint_url == "http://127.0.0.1:4566"


def test_local_profile_boto3_and_s3fs_reach_the_same_emulator(monkeypatch, moto_server, tmp_path) -> None:
    """``AWS_PROFILE=local`` with LocalStack's ``LOCALSTACK_HOST`` at a moto server: a boto3
    client and the s3fs filesystem take localstack-client's endpoint and credentials and
    read each other's objects (no ``[profile local]`` in the AWS config, no AWS keys set)."""
    for name in ("AWS_ENDPOINT_URL", "USE_SSL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "missing-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "missing-credentials"))
    monkeypatch.setenv("AWS_PROFILE", "local")
    monkeypatch.setenv("LOCALSTACK_HOST", moto_server.removeprefix("http://"))
    storage.configure()
    try:
        assert storage.endpoint_url() == moto_server
        client = storage.boto3_client("s3")
        assert client.meta.endpoint_url == moto_server
        bucket = f"local-{uuid.uuid4().hex[:12]}"
        client.create_bucket(Bucket=bucket)
        client.put_object(Bucket=bucket, Key="from-boto3.txt", Body=b"written by boto3")
        assert storage.read_bytes(f"s3://{bucket}/from-boto3.txt") == b"written by boto3"
        storage.write_bytes(f"s3://{bucket}/from-s3fs.txt", b"written by s3fs")
        assert client.get_object(Bucket=bucket, Key="from-s3fs.txt")["Body"].read() == b"written by s3fs"
        fs, _ = storage.filesystem(f"s3://{bucket}")
        assert fs.client_kwargs["endpoint_url"] == moto_server
        # Every other client the platform builds goes there too (notices, triggers, secrets).
        for service in ("sns", "stepfunctions", "secretsmanager"):
            assert storage.boto3_client(service).meta.endpoint_url == moto_server
    finally:
        storage.configure()


def test_real_aws_is_untouched(monkeypatch) -> None:
    """No profile (or another one): no emulator endpoint, even with LOCALSTACK_HOST set."""
    for name in ("AWS_ENDPOINT_URL", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("LOCALSTACK_HOST", "127.0.0.1:4566")  # only the local profile reads it
    storage.configure(region="us-east-1")
    try:
        assert storage.aws_target("s3") == storage.AwsTarget(None, "us-east-1", None)
        assert storage.endpoint_url() is None
        assert storage.boto3_client("s3").meta.endpoint_url.endswith(".amazonaws.com")
        fs, _ = storage.filesystem("s3://bucket/key")
        assert fs.client_kwargs == {"region_name": "us-east-1"}
        assert fs.key is None and fs.secret is None
        assert storage.aws_target("s3", profile="prod") == storage.AwsTarget(None, "us-east-1", "prod")
    finally:
        storage.configure()

"""The URI storage layer on file:// and on a real S3 API (moto server)."""

from __future__ import annotations

import threading

import pytest

from training import storage


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

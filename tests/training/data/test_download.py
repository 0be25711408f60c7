"""Downloader: resume, checksum and offline errors against a local HTTP server (no internet)."""

from __future__ import annotations

import hashlib
import io
import socket
import threading
import zipfile
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from training.data import download
from training.data.download import (
    ChecksumMismatchError,
    DownloadError,
    download_chesapeake,
    fetch,
)


def _zip_bytes() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("de_1m_2013_extended-debuffered-test_tiles/m_1_naip-new.tif", b"x" * 5000)
        zf.writestr("de_1m_2013_extended-debuffered-test_tiles/m_1_lc.tif", b"y" * 3000)
    return buf.getvalue()


class _Server:
    def __init__(self, payload: bytes, honour_range: bool = True) -> None:
        self.payload = payload
        self.requests: list[str | None] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                rng = self.headers.get("Range")
                server.requests.append(rng)
                body, status = server.payload, 200
                if rng and honour_range:
                    start = int(rng.removeprefix("bytes=").split("-")[0])
                    if start >= len(server.payload):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(server.payload)}")
                        self.end_headers()
                        return
                    body, status = server.payload[start:], 206
                    self.send_response(status)
                    self.send_header(
                        "Content-Range", f"bytes {start}-{len(server.payload) - 1}/{len(server.payload)}"
                    )
                else:
                    self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/cvpr_chesapeake_landcover.zip"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)

    def __enter__(self) -> _Server:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def payload() -> bytes:
    return _zip_bytes()


@pytest.fixture
def server(payload: bytes) -> Iterator[_Server]:
    with _Server(payload) as srv:
        yield srv


def _closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/x.zip"  # nothing listens there any more


def test_full_download_verifies_and_extracts(tmp_path, server, payload):
    md5 = hashlib.md5(payload).hexdigest()
    sha = hashlib.sha256(payload).hexdigest()
    dest = download_chesapeake(
        tmp_path / "cvpr", urls=[server.url], expected_md5=md5, expected_sha256=sha, progress=False
    )
    tiles = dest / "de_1m_2013_extended-debuffered-test_tiles"
    assert (tiles / "m_1_naip-new.tif").read_bytes() == b"x" * 5000
    assert (dest / download.DONE_MARKER).exists()
    assert server.requests == [None]
    # Idempotent: a second run neither downloads nor extracts.
    download_chesapeake(tmp_path / "cvpr", urls=[server.url], expected_md5=md5, progress=False)
    assert server.requests == [None]


def test_resume_sends_range_and_appends(tmp_path, server, payload):
    dest = tmp_path / "cvpr_chesapeake_landcover.zip"
    part = tmp_path / "cvpr_chesapeake_landcover.zip.part"
    part.write_bytes(payload[:1234])
    fetch(server.url, dest, progress=False)
    assert server.requests == ["bytes=1234-"]
    assert dest.read_bytes() == payload and not part.exists()


def test_resume_of_a_complete_part_file(tmp_path, server, payload):
    dest = tmp_path / "f.zip"
    (tmp_path / "f.zip.part").write_bytes(payload)
    fetch(server.url, dest, progress=False)  # the server answers 416: nothing left to fetch
    assert dest.read_bytes() == payload


def test_server_ignoring_range_restarts(tmp_path, payload):
    with _Server(payload, honour_range=False) as srv:
        dest = tmp_path / "f.zip"
        (tmp_path / "f.zip.part").write_bytes(b"garbage")
        fetch(srv.url, dest, progress=False)
    assert dest.read_bytes() == payload


def test_checksum_mismatch(tmp_path, server):
    with pytest.raises(ChecksumMismatchError, match="md5"):
        download_chesapeake(tmp_path, urls=[server.url], expected_md5="0" * 32, progress=False)
    assert not (tmp_path / download.DONE_MARKER).exists()


def test_offline_fails_fast_and_falls_back(tmp_path, server, payload):
    with pytest.raises(DownloadError, match="offline") as info:
        download_chesapeake(tmp_path / "a", urls=[_closed_port_url()], progress=False, timeout=(1, 1))
    assert "make synthetic_data" in str(info.value)
    # The first URL is unreachable, the mirror works.
    md5 = hashlib.md5(payload).hexdigest()
    download_chesapeake(
        tmp_path / "b", urls=[_closed_port_url(), server.url], expected_md5=md5, progress=False
    )
    assert (tmp_path / "b" / download.DONE_MARKER).exists()


def test_cli_reports_error(tmp_path, capsys):
    code = download.main(["--dest", str(tmp_path), "--url", _closed_port_url(), "--no-verify"])
    assert code == 1 and "make synthetic_data" in capsys.readouterr().err


def test_zip_slip_is_refused(tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("../evil.txt", b"no")
    archive = tmp_path / "evil.zip"
    archive.write_bytes(buf.getvalue())
    with pytest.raises(DownloadError, match="unsafe"):
        download.extract(archive, tmp_path / "out")


def test_urls_and_checksums_come_from_the_data_config(tmp_path, monkeypatch):
    """The downloader keeps no URL or digest of its own: it reads setup/conf/data/chesapeake.yaml."""
    from omegaconf import OmegaConf

    source = download.release_source()
    section = OmegaConf.load(download.CONFIG_FILE).download
    assert list(source.urls) == list(section.urls) and source.urls[0].startswith("https://")
    assert source.md5 == section.md5 and source.sha256 == section.sha256
    text = (download.Path(download.__file__)).read_text()
    assert "blob.core.windows.net" not in text and source.md5 not in text

    # A config pointing at a local mirror with its digest is all the downloader needs.
    payload = _zip_bytes()
    mirror = tmp_path / "mirror.zip"
    mirror.write_bytes(payload)
    config = tmp_path / "chesapeake.yaml"
    config.write_text(
        f"download:\n  urls:\n    - {mirror.as_uri()}\n  sha256: {hashlib.sha256(payload).hexdigest()}\n  md5: null\n"
    )
    monkeypatch.setattr(download, "CONFIG_FILE", config)
    monkeypatch.setattr(download.release_source, "__defaults__", (config,))
    dest = download_chesapeake(tmp_path / "cvpr", progress=False)
    assert (dest / "de_1m_2013_extended-debuffered-test_tiles" / "m_1_lc.tif").read_bytes() == b"y" * 3000

    config.write_text(f"download:\n  urls:\n    - {mirror.as_uri()}\n  sha256: '{'0' * 64}'\n")
    with pytest.raises(ChecksumMismatchError, match="sha256"):
        download_chesapeake(tmp_path / "bad", progress=False)
    config.write_text(f"download:\n  urls:\n    - {mirror.as_uri()}\n  sha256: {'1' * 64}\n")
    with pytest.raises(ValueError, match="quoted hex string"):
        download.release_source(config)
    config.write_text("download:\n  urls: []\n")
    with pytest.raises(ValueError, match=r"download\.urls is empty"):
        download.release_source(config)


def test_file_url_copies_and_resumes(tmp_path, payload):
    source = tmp_path / "src.zip"
    source.write_bytes(payload)
    dest = tmp_path / "out" / "f.zip"
    dest.parent.mkdir()
    (tmp_path / "out" / "f.zip.part").write_bytes(payload[:700])  # an interrupted copy
    fetch(source.as_uri(), dest, progress=False)
    assert dest.read_bytes() == payload
    with pytest.raises(DownloadError, match="no such file"):
        fetch((tmp_path / "missing.zip").as_uri(), tmp_path / "x.zip", progress=False)

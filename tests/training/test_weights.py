"""Pretrained weights: fetching from a real HTTP server on 127.0.0.1 (Range, no Range, a cut
connection, a wrong digest), the full-size sparse file, and what model.pretrained resolves to."""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections.abc import Iterator
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from core.config import compose
from setup import cli
from training.data.download import ChecksumMismatchError, DownloadError
from training.models import weights
from training.models.weights import (
    RANDOM_INIT,
    WeightsConfigError,
    WeightsNotFetchedError,
    WeightSpec,
    encoder_weights_record,
    encoder_weights_uri,
    fetch_weights,
    read_record,
    weight_spec,
)

NAME = "clay-v1.5"
SMALL = 3_000_000  # bytes of the fast variants' file


class WeightServer:
    """Serves one file (sparse or not) over HTTP/1.1 on 127.0.0.1, with switches.

    ``honour_range``: answer ``Range`` with 206 (False: 200 and the whole body).
    ``cut_after``: bytes of the *next* body to send before the connection is closed mid-file.
    ``sent``: body bytes sent in total; ``ranges``: the Range header of each request.
    """

    def __init__(self, path: Path, honour_range: bool = True) -> None:
        self.path = path
        self.size = path.stat().st_size
        self.honour_range = honour_range
        self.cut_after: int | None = None
        self.sent = 0
        self.ranges: list[str | None] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                rng = self.headers.get("Range")
                server.ranges.append(rng)
                start = 0
                if rng and server.honour_range:
                    start = int(rng.removeprefix("bytes=").split("-")[0])
                    if start >= server.size:
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{server.size}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{server.size - 1}/{server.size}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(server.size - start))
                self.send_header("Accept-Ranges", "bytes" if server.honour_range else "none")
                self.end_headers()
                count = server.size - start
                cut, server.cut_after = server.cut_after, None
                if cut is not None:
                    count = min(count, cut)
                    self.close_connection = True  # then the socket closes: a broken download
                with open(server.path, "rb") as f:
                    # sendfile: a sparse multi-GB file costs the server no copies into Python.
                    server.sent += self.connection.sendfile(f, start, count)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1.5/{path.name}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)

    def __enter__(self) -> WeightServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _published(folder: Path, size: int, sparse: bool) -> tuple[Path, str | None]:
    """The file the server publishes and its sha256 (None for the sparse one: hashed by fetch)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "clay-v1.5.ckpt"
    if sparse:
        with open(path, "wb") as f:
            f.truncate(size)  # a hole: no disk used
        return path, None
    data = os.urandom(size)
    path.write_bytes(data)
    return path, hashlib.sha256(data).hexdigest()


@pytest.fixture
def small(tmp_path: Path) -> Iterator[tuple[WeightServer, WeightSpec]]:
    path, digest = _published(tmp_path / "hf", SMALL, sparse=False)
    with WeightServer(path) as srv:
        spec = replace(weight_spec(compose().weights, NAME), url=srv.url, sha256=digest, approx_bytes=SMALL)
        yield srv, spec


def test_catalog_holds_the_official_checkpoint() -> None:
    spec = weight_spec(compose().weights)  # the default name
    assert spec.name == NAME and spec.preset == "large" and spec.filename == "clay-v1.5.ckpt"
    assert spec.url == "https://huggingface.co/made-with-clay/Clay/resolve/main/v1.5/clay-v1.5.ckpt"
    assert spec.approx_bytes == 5_160_000_000
    assert spec.sha256 is None or weights.is_sha256_hex(spec.sha256)


def test_interrupted_download_resumes_without_sending_twice(tmp_path, small) -> None:
    srv, spec = small
    cache = tmp_path / "cache"
    srv.cut_after = SMALL // 3
    with pytest.raises(DownloadError, match="run again to resume"):
        fetch_weights(spec, cache, progress=False)
    final = cache / spec.filename
    part = cache / (spec.filename + ".part")
    assert not final.exists() and part.stat().st_size == SMALL // 3

    path = fetch_weights(spec, cache, progress=False)

    assert path == final and path.read_bytes() == srv.path.read_bytes()
    assert srv.ranges == [None, f"bytes={SMALL // 3}-"]
    assert srv.sent == SMALL  # the first third was not fetched again
    assert read_record(path) == spec.sha256 and not part.exists()
    # A second fetch finds the verified file and sends nothing.
    fetch_weights(spec, cache, progress=False)
    assert len(srv.ranges) == 2


def test_wrong_checksum_is_refused_and_not_left_for_the_loader(tmp_path, small) -> None:
    _, spec = small
    cache = tmp_path / "cache"
    with pytest.raises(ChecksumMismatchError, match="deleted"):
        fetch_weights(replace(spec, sha256="0" * 64), cache, progress=False)
    assert sorted(p.name for p in cache.iterdir()) == []  # no final file, no part, no record


def test_a_cached_file_that_misses_the_pin_is_replaced(tmp_path, small) -> None:
    srv, spec = small
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / spec.filename).write_bytes(b"an older upload")  # no record: hashed, then refused
    path = fetch_weights(spec, cache, progress=False)
    assert path.read_bytes() == srv.path.read_bytes() and read_record(path) == spec.sha256
    assert srv.ranges == [None]


def test_server_without_range_support_restarts_from_zero(tmp_path) -> None:
    path, digest = _published(tmp_path / "hf", SMALL, sparse=False)
    with WeightServer(path, honour_range=False) as srv:
        spec = replace(weight_spec(compose().weights, NAME), url=srv.url, sha256=digest, approx_bytes=SMALL)
        srv.cut_after = SMALL // 2
        with pytest.raises(DownloadError):
            fetch_weights(spec, tmp_path / "cache", progress=False)
        got = fetch_weights(spec, tmp_path / "cache", progress=False)
    assert srv.ranges == [None, f"bytes={SMALL // 2}-"]
    assert got.read_bytes() == path.read_bytes()  # the 200 body replaced the part, not appended
    assert srv.sent == SMALL // 2 + SMALL


def test_unpinned_digest_is_computed_recorded_and_warned(tmp_path, small, caplog) -> None:
    srv, spec = small
    with caplog.at_level(logging.WARNING, logger=weights.__name__):
        path = fetch_weights(replace(spec, sha256=None), tmp_path / "cache", progress=False)
    digest = hashlib.sha256(srv.path.read_bytes()).hexdigest()
    assert read_record(path) == digest
    assert (tmp_path / "cache" / "clay-v1.5.ckpt.sha256").read_text() == f"{digest}  clay-v1.5.ckpt\n"
    assert "NOT VERIFIED against a pinned digest" in caplog.text


def test_pinned_size_and_free_space_are_checked(tmp_path, small) -> None:
    srv, spec = small
    with pytest.raises(DownloadError, match=f"expected {SMALL + 1}"):
        fetch_weights(replace(spec, bytes=SMALL + 1), tmp_path / "a", progress=False)
    assert not (tmp_path / "a" / spec.filename).exists()
    with pytest.raises(DownloadError, match="GB free"):
        fetch_weights(replace(spec, approx_bytes=1 << 60), tmp_path / "b", progress=False)
    assert srv.ranges == [None]  # the disk check comes before any request


def test_cli_fetches_and_reports_errors(tmp_path, small, capsys) -> None:
    srv, spec = small
    argv = ["weights", "fetch", NAME, "--cache", str(tmp_path / "c"), "--url", srv.url, "--no-progress"]
    assert cli.main([*argv, "--sha256", spec.sha256]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "c" / "clay-v1.5.ckpt")
    assert cli.main([*argv[:3], "--cache", str(tmp_path / "d"), "--url", srv.url, "--sha256", "f" * 64]) == 1
    assert "sha256" in capsys.readouterr().err
    assert cli.main(["weights", "fetch", "clay-v9"]) == 1
    assert "unknown weights 'clay-v9'" in capsys.readouterr().err
    assert cli.main(["weights", "fetch", "--sha256", "abc"]) == 1
    assert "not a 64-digit hex digest" in capsys.readouterr().err


@pytest.mark.slow
def test_full_size_sparse_checkpoint_resumes_and_verifies(tmp_path) -> None:
    """The real size (the catalog's 5.16 GB): cut at half, resumed, hashed, recorded."""
    size = weight_spec(compose().weights, NAME).approx_bytes
    path, _ = _published(tmp_path / "hf", size, sparse=True)
    cache = tmp_path / "cache"
    try:
        with WeightServer(path) as srv:
            spec = replace(weight_spec(compose().weights, NAME), url=srv.url)
            srv.cut_after = size // 2
            with pytest.raises(DownloadError):
                fetch_weights(spec, cache, progress=False)
            got = fetch_weights(spec, cache, progress=False)
        assert got.stat().st_size == size and srv.sent == size
        zeros = hashlib.sha256()
        block = bytes(1 << 24)
        for _ in range(size // len(block)):
            zeros.update(block)
        zeros.update(bytes(size % len(block)))
        assert read_record(got) == zeros.hexdigest()
    finally:
        for leftover in cache.glob("*"):
            leftover.unlink()  # the client's copy is not sparse: do not leave 5 GB in pytest's tmp


# -- model.pretrained ----------------------------------------------------------------------


def _cfg(tmp_path: Path, *overrides: str):
    return compose(["model=clay_large", f"weights.cache_dir={tmp_path / 'cache'}", *overrides])


def test_pretrained_resolves_to_the_fetched_file(tmp_path, small) -> None:
    srv, spec = small
    cfg = _cfg(tmp_path, f"model.pretrained={NAME}")
    with pytest.raises(WeightsNotFetchedError, match=f"landcover weights fetch {NAME}"):
        encoder_weights_uri(cfg)
    path = fetch_weights(replace(spec, sha256=None), tmp_path / "cache", progress=False)
    assert encoder_weights_uri(cfg) == str(path)
    record = encoder_weights_record(cfg)
    assert record["source"] == NAME and record["uri"] == str(path)
    assert record["sha256"] == hashlib.sha256(srv.path.read_bytes()).hexdigest()
    # A pinned digest that the recorded one does not match is refused.
    # (A dotted catalog name cannot be a Hydra override key: pins are edited in the YAML file.)
    pinned = _cfg(tmp_path, f"model.pretrained={NAME}")
    pinned.weights.catalog[NAME].sha256 = "a" * 64
    with pytest.raises(WeightsNotFetchedError, match="not the pinned"):
        encoder_weights_uri(pinned)


def test_pretrained_config_errors(tmp_path) -> None:
    with pytest.raises(WeightsConfigError, match=r"unknown weights 'clay-v9'.*clay-v1\.5"):
        encoder_weights_uri(_cfg(tmp_path, "model.pretrained=clay-v9"))
    with pytest.raises(
        WeightsConfigError, match=r"'large' encoder but model\.preset is 'tiny'.*model=clay_large"
    ):
        encoder_weights_uri(compose([f"model.pretrained={NAME}"]))
    with pytest.raises(WeightsConfigError, match="both set"):
        encoder_weights_uri(
            _cfg(tmp_path, f"model.pretrained={NAME}", "model.pretrained_uri=/x/enc.safetensors")
        )
    unquoted = _cfg(tmp_path)
    unquoted.weights.catalog[NAME].sha256 = 12345  # what YAML makes of an unquoted all-digit value
    with pytest.raises(WeightsConfigError, match="quoted 64-digit hex"):
        weight_spec(unquoted.weights, NAME)


def test_explicit_file_and_random_init(tmp_path) -> None:
    cfg = _cfg(tmp_path, "model.pretrained_uri=/x/enc.safetensors")
    assert encoder_weights_uri(cfg) == "/x/enc.safetensors"
    assert encoder_weights_record(cfg)["source"] == "/x/enc.safetensors"
    assert encoder_weights_uri(compose()) is None
    assert encoder_weights_record(compose())["source"] == RANDOM_INIT


def test_training_warns_that_the_encoder_is_random(caplog) -> None:
    from training.pipeline import _build_segmenter

    with caplog.at_level(logging.WARNING, logger=weights.__name__):
        _build_segmenter(compose())
    assert "RANDOMLY INITIALISED" in caplog.text and "model.pretrained=clay-v1.5" in caplog.text
    with pytest.raises(WeightsConfigError, match=r"model\.preset is 'tiny'"):
        _build_segmenter(compose([f"model.pretrained={NAME}"]))

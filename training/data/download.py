"""Download and extract the real Chesapeake CVPR 2019 Land Cover release.

``python -m training.data.download --dest data/chesapeake``

Where from and what to verify live in one place, the data config
(``setup/conf/data/chesapeake.yaml``, key ``download``): the URLs, tried in turn, and the
expected sha256/md5 of the zip. :func:`release_source` reads them; ``--url``/``--sha256``/``--md5``
override them for one run.

The zip (~150 GB, all states and layers) is fetched over HTTP with resume: bytes go to
``<dest>/cvpr_chesapeake_landcover.zip.part`` and an interrupted run continues from where it
stopped with an HTTP ``Range`` request. ``file://`` URLs (a copy on a local or mounted disk) are
copied the same way, resuming from the part file's size. The finished file is checked against
the checksums before it is extracted; afterwards ``find_scenes(<dest>)`` sees the
``<state>_1m_<year>_extended-debuffered-{train,val,test}_tiles/`` folders (2013 for de, md, ny,
pa; 2014 for va, wv).

With no internet the first connection attempt times out after a few seconds and the command
stops with a message pointing to ``make synthetic_data``.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import shutil
import sys
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

import requests
import urllib3

log = logging.getLogger(__name__)

FILENAME = "cvpr_chesapeake_landcover.zip"
#: The data config that holds the release's URLs and checksums (the only place they are written).
CONFIG_FILE = Path(__file__).resolve().parents[2] / "setup" / "conf" / "data" / "chesapeake.yaml"
CONNECT_TIMEOUT_S = 5.0
READ_TIMEOUT_S = 60.0
CHUNK = 1 << 20
DONE_MARKER = ".extracted"


@dataclass(frozen=True)
class ReleaseSource:
    """Where the release zip comes from and the digests it must match (None: not checked)."""

    urls: tuple[str, ...]
    sha256: str | None = None
    md5: str | None = None


def release_source(config_file: Path = CONFIG_FILE) -> ReleaseSource:
    """The ``download`` section of the Chesapeake data config.

    Raises:
        ValueError: the section lists no URL.
    """
    from omegaconf import OmegaConf

    section = OmegaConf.load(config_file).download
    urls = tuple(str(u) for u in section.urls or ())
    if not urls:
        raise ValueError(f"{config_file}: download.urls is empty; list at least one URL of the release zip")
    digests = {}
    for name in ("sha256", "md5"):
        value = section.get(name)
        if value is not None and not isinstance(value, str):
            # YAML reads an unquoted all-digit (or 1e5...) digest as a number: never guess it back.
            raise ValueError(f"{config_file}: download.{name} must be a quoted hex string, got {value!r}")
        digests[name] = value or None
    return ReleaseSource(urls=urls, **digests)


class DownloadError(RuntimeError):
    """The release could not be fetched (offline, server error)."""


class ChecksumMismatchError(DownloadError):
    """The downloaded file does not match the expected checksum."""


def file_digest(path: Path, algorithm: str) -> str:
    """Hex digest of a file, read in 1 MiB chunks."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            h.update(block)
    return h.hexdigest()


def verify_checksum(path: Path, expected_sha256: str | None = None, expected_md5: str | None = None) -> None:
    """Raise :class:`ChecksumMismatchError` if ``path`` does not match the given digests."""
    for algorithm, expected in (("sha256", expected_sha256), ("md5", expected_md5)):
        if expected:
            actual = file_digest(path, algorithm)
            if actual.lower() != expected.lower():
                raise ChecksumMismatchError(
                    f"{path} has {algorithm} {actual}, expected {expected}; the download is corrupt or the "
                    f"file changed upstream. Delete it and run again, or pass the right --{algorithm}."
                )


def fetch(
    url: str,
    dest: Path,
    progress: bool = True,
    timeout: tuple[float, float] | None = None,
    expected_sha256: str | None = None,
) -> Path:
    """Download ``url`` to ``dest``, resuming a partial ``dest.part`` with an HTTP Range request.

    A server that ignores the Range header (200 with the whole body) is read from byte 0 again.
    With ``expected_sha256`` the finished part file is checked before it becomes ``dest``: a
    mismatch deletes it (resuming a wrong file cannot fix it), so ``dest`` only ever holds a
    verified file.

    Raises:
        DownloadError: the server cannot be reached or answers with an error.
        ChecksumMismatchError: the finished file does not match ``expected_sha256``.
    """
    from tqdm import tqdm

    timeout = timeout or (CONNECT_TIMEOUT_S, READ_TIMEOUT_S)
    part = dest.with_name(dest.name + ".part")
    dest.parent.mkdir(parents=True, exist_ok=True)
    have = part.stat().st_size if part.exists() else 0
    if url.startswith("file://"):
        _copy_local(url, part, have)
        return _finish(part, dest, expected_sha256)
    # Identity encoding: Range offsets and Content-Length must count the file's own bytes.
    headers = {"Accept-Encoding": "identity", **({"Range": f"bytes={have}-"} if have else {})}
    try:
        response = requests.get(url, headers=headers, stream=True, timeout=timeout)
    except requests.exceptions.ConnectionError as exc:
        raise DownloadError(f"cannot reach {url} ({type(exc).__name__}); are you offline?") from exc
    except requests.exceptions.Timeout as exc:
        raise DownloadError(f"no answer from {url} within {timeout[0]:g}s; are you offline?") from exc
    with response:
        if response.status_code == 416 and have:
            # Range not satisfiable: the part file already holds the whole object.
            return _finish(part, dest, expected_sha256)
        if response.status_code not in (200, 206):
            raise DownloadError(f"{url} answered HTTP {response.status_code}")
        if response.status_code == 200 and have:
            have = 0  # the server ignored the Range header: start over
        elif response.status_code == 206 and not _range_starts_at(response, have):
            raise DownloadError(
                f"{url} answered Range bytes={have}- with Content-Range "
                f"{response.headers.get('Content-Range')!r}; delete {part} and run again"
            )
        length = response.headers.get("Content-Length")
        total = have + int(length) if length is not None else None
        mode = "ab" if have else "wb"
        try:
            with (
                open(part, mode) as out,
                tqdm(
                    total=total, initial=have, unit="B", unit_scale=True, desc=dest.name, disable=not progress
                ) as bar,
            ):
                # read1 hands over whatever has arrived: when the connection breaks, every byte
                # received so far is in the part file (iter_content would drop its last chunk).
                while block := response.raw.read1(CHUNK):
                    out.write(block)
                    bar.update(len(block))
        except (requests.exceptions.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
            raise DownloadError(
                f"download of {url} broke off at {part.stat().st_size} bytes; run again to resume"
            ) from exc
    if total is not None and part.stat().st_size != total:
        raise DownloadError(f"{url}: got {part.stat().st_size} of {total} bytes; run again to resume")
    return _finish(part, dest, expected_sha256)


def _range_starts_at(response: requests.Response, start: int) -> bool:
    """Whether a 206 answer's ``Content-Range: bytes START-END/TOTAL`` begins at ``start``."""
    value = response.headers.get("Content-Range", "")
    first = value.removeprefix("bytes ").split("-", 1)[0].strip()
    return first.isdigit() and int(first) == start


def _finish(part: Path, dest: Path, expected_sha256: str | None) -> Path:
    """Move the complete ``part`` to ``dest``, after checking it when a digest is expected."""
    if expected_sha256:
        actual = file_digest(part, "sha256")
        if actual.lower() != expected_sha256.lower():
            part.unlink()
            raise ChecksumMismatchError(
                f"{part.name[: -len('.part')]} downloaded with sha256 {actual}, expected {expected_sha256}; "
                "the file was deleted, not kept. The download is corrupt or the file changed upstream: run "
                "again, or pass the right sha256 if the published file changed."
            )
    part.replace(dest)
    return dest


def _copy_local(url: str, part: Path, have: int) -> None:
    """``fetch`` for a ``file://`` URL: copy with the same part-file resume."""
    source = Path(unquote(urlparse(url).path))
    if not source.is_file():
        raise DownloadError(f"{url}: no such file")
    size = source.stat().st_size
    if have > size:
        have = 0  # the part file is not a prefix of this source: start over
    with open(source, "rb") as src, open(part, "ab" if have else "wb") as out:
        src.seek(have)
        shutil.copyfileobj(src, out, CHUNK)
    if part.stat().st_size != size:
        raise DownloadError(f"{url}: copied {part.stat().st_size} of {size} bytes; run again to resume")


def extract(archive: Path, dest: Path) -> None:
    """Extract a zip into ``dest``, refusing members that would land outside it."""
    root = dest.resolve()
    with zipfile.ZipFile(archive) as zf:
        for member in zf.namelist():
            target = (root / member).resolve()
            if root != target and root not in target.parents:
                raise DownloadError(f"{archive} holds an unsafe path {member!r}; refusing to extract")
        zf.extractall(root)
    (dest / DONE_MARKER).write_text(archive.name + "\n")


def download_chesapeake(
    dest: str | Path = "data/chesapeake",
    urls: Sequence[str] | None = None,
    expected_sha256: str | None = None,
    expected_md5: str | None = None,
    keep_zip: bool = True,
    progress: bool = True,
    timeout: tuple[float, float] | None = None,
    verify: bool = True,
) -> Path:
    """Fetch (with resume), verify and extract the release into ``dest``; idempotent.

    Each URL is tried in turn. ``urls`` and the digests default to the data config
    (:func:`release_source`); given ones replace the config's. ``verify=False`` skips the
    checksums. Returns ``dest``.

    Raises:
        DownloadError: no URL worked (the message lists why each failed).
        ChecksumMismatchError: the downloaded zip does not match the expected digest.
    """
    if urls is None or (verify and expected_sha256 is None and expected_md5 is None):
        source = release_source()
        urls = source.urls if urls is None else urls
        if expected_sha256 is None and expected_md5 is None:
            expected_sha256, expected_md5 = source.sha256, source.md5
    if not verify:
        expected_sha256 = expected_md5 = None
    dest = Path(dest)
    if (dest / DONE_MARKER).exists():
        log.info("%s already holds the extracted release (%s present)", dest, DONE_MARKER)
        return dest
    archive = dest / FILENAME
    if not archive.exists():
        errors = []
        for url in urls:
            try:
                fetch(url, archive, progress=progress, timeout=timeout)
                break
            except DownloadError as exc:
                errors.append(str(exc))
        else:
            raise DownloadError(
                "could not download the Chesapeake CVPR release:\n  "
                + "\n  ".join(errors)
                + "\nWithout internet, use `make synthetic_data` for generated scenes in the same layout."
            )
    if expected_sha256 or expected_md5:
        log.info("verifying %s ...", archive)
        verify_checksum(archive, expected_sha256, expected_md5)
    log.info("extracting %s -> %s", archive, dest)
    extract(archive, dest)
    if not keep_zip:
        archive.unlink()
    return dest


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(description="Download the Chesapeake CVPR 2019 land-cover release.")
    parser.add_argument("--dest", default="data/chesapeake", help="folder to download and extract into")
    parser.add_argument(
        "--url", action="append", help="override the config's download URL(s); repeat for fallbacks"
    )
    parser.add_argument("--sha256", default=None, help="expected sha256 of the zip (default: the config's)")
    parser.add_argument("--md5", default=None, help="expected md5 of the zip (default: the config's)")
    parser.add_argument("--no-verify", action="store_true", help="skip checksum verification")
    parser.add_argument("--delete-zip", action="store_true", help="remove the zip after extraction")
    args = parser.parse_args(argv)
    try:
        download_chesapeake(
            args.dest,
            urls=args.url,
            expected_sha256=args.sha256,
            expected_md5=args.md5,
            keep_zip=not args.delete_zip,
            verify=not args.no_verify,
        )
    except DownloadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

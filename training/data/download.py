"""Download and extract the real Chesapeake CVPR 2019 Land Cover release.

``python -m training.data.download --dest data/chesapeake``

The zip (~150 GB, all states and layers) is fetched over HTTP with resume: bytes go to
``<dest>/cvpr_chesapeake_landcover.zip.part`` and an interrupted run continues from where it
stopped with an HTTP ``Range`` request. The finished file is checked against a checksum before
it is extracted; afterwards ``find_scenes(<dest>)`` sees the
``<state>_1m_2013_extended-debuffered-{train,val,test}_tiles/`` folders.

Checksum: the release publishes no sha256. :data:`EXPECTED_MD5` is the MD5 that torchgeo's
``ChesapeakeCVPR`` dataset pins for this very file (``md5s["base"]``); we did not compute it
ourselves. Pass ``--sha256``/``--md5`` (or ``expected_sha256=``/``expected_md5=``) to verify
against a value you trust instead, or ``--no-verify`` to skip verification.

With no internet the first connection attempt times out after a few seconds and the command
stops with a message pointing to ``make synthetic_data``.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import zipfile
from collections.abc import Sequence
from pathlib import Path

import requests

#: Primary: the LILA BC blob store. Fallbacks: LILA's newer container and the source.coop mirror
#: (the mirror path follows LILA's layout on source.coop and is not verified from here).
URLS: tuple[str, ...] = (
    "https://lilablobssc.blob.core.windows.net/lcmcvpr2019/cvpr_chesapeake_landcover.zip",
    "https://lilawildlife.blob.core.windows.net/lila-wildlife/lcmcvpr2019/cvpr_chesapeake_landcover.zip",
    "https://data.source.coop/agentmorris/lila-wildlife/lcmcvpr2019/cvpr_chesapeake_landcover.zip",
)
FILENAME = "cvpr_chesapeake_landcover.zip"
#: MD5 of the zip as pinned by torchgeo (``ChesapeakeCVPR.md5s["base"]``); see the module docstring.
EXPECTED_MD5: str | None = "1225ccbb9590e9396875f221e5031514"
#: No published sha256 is known; supply one via ``expected_sha256`` to use it.
EXPECTED_SHA256: str | None = None
CONNECT_TIMEOUT_S = 5.0
READ_TIMEOUT_S = 60.0
CHUNK = 1 << 20
DONE_MARKER = ".extracted"


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


def fetch(url: str, dest: Path, progress: bool = True, timeout: tuple[float, float] | None = None) -> Path:
    """Download ``url`` to ``dest``, resuming a partial ``dest.part`` with an HTTP Range request.

    Raises:
        DownloadError: the server cannot be reached or answers with an error.
    """
    from tqdm import tqdm

    timeout = timeout or (CONNECT_TIMEOUT_S, READ_TIMEOUT_S)
    part = dest.with_name(dest.name + ".part")
    dest.parent.mkdir(parents=True, exist_ok=True)
    have = part.stat().st_size if part.exists() else 0
    headers = {"Range": f"bytes={have}-"} if have else {}
    try:
        response = requests.get(url, headers=headers, stream=True, timeout=timeout)
    except requests.exceptions.ConnectionError as exc:
        raise DownloadError(f"cannot reach {url} ({type(exc).__name__}); are you offline?") from exc
    except requests.exceptions.Timeout as exc:
        raise DownloadError(f"no answer from {url} within {timeout[0]:g}s; are you offline?") from exc
    with response:
        if response.status_code == 416 and have:
            # Range not satisfiable: the part file already holds the whole object.
            part.replace(dest)
            return dest
        if response.status_code not in (200, 206):
            raise DownloadError(f"{url} answered HTTP {response.status_code}")
        if response.status_code == 200 and have:
            have = 0  # the server ignored the Range header: start over
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
                for block in response.iter_content(CHUNK):
                    out.write(block)
                    bar.update(len(block))
        except requests.exceptions.RequestException as exc:
            raise DownloadError(
                f"download of {url} broke off at {part.stat().st_size} bytes; run again to resume"
            ) from exc
    if total is not None and part.stat().st_size != total:
        raise DownloadError(f"{url}: got {part.stat().st_size} of {total} bytes; run again to resume")
    part.replace(dest)
    return dest


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
    urls: Sequence[str] = URLS,
    expected_sha256: str | None = EXPECTED_SHA256,
    expected_md5: str | None = EXPECTED_MD5,
    keep_zip: bool = True,
    progress: bool = True,
    timeout: tuple[float, float] | None = None,
) -> Path:
    """Fetch (with resume), verify and extract the release into ``dest``; idempotent.

    Each URL is tried in turn. Returns ``dest``.

    Raises:
        DownloadError: no URL worked (the message lists why each failed).
        ChecksumMismatchError: the downloaded zip does not match the expected digest.
    """
    dest = Path(dest)
    if (dest / DONE_MARKER).exists():
        print(f"{dest} already holds the extracted release ({DONE_MARKER} present)")
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
        print(f"verifying {archive} ...")
        verify_checksum(archive, expected_sha256, expected_md5)
    print(f"extracting {archive} -> {dest}")
    extract(archive, dest)
    if not keep_zip:
        archive.unlink()
    return dest


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Download the Chesapeake CVPR 2019 land-cover release.")
    parser.add_argument("--dest", default="data/chesapeake", help="folder to download and extract into")
    parser.add_argument("--url", action="append", help="override the download URL(s); repeat for fallbacks")
    parser.add_argument("--sha256", default=EXPECTED_SHA256, help="expected sha256 of the zip")
    parser.add_argument(
        "--md5", default=EXPECTED_MD5, help="expected md5 of the zip (default: torchgeo's pin)"
    )
    parser.add_argument("--no-verify", action="store_true", help="skip checksum verification")
    parser.add_argument("--delete-zip", action="store_true", help="remove the zip after extraction")
    args = parser.parse_args(argv)
    try:
        download_chesapeake(
            args.dest,
            urls=args.url or URLS,
            expected_sha256=None if args.no_verify else args.sha256,
            expected_md5=None if args.no_verify else args.md5,
            keep_zip=not args.delete_zip,
        )
    except DownloadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

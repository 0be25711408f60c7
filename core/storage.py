"""URI-addressed storage over fsspec: the one I/O layer for ``file://`` and ``s3://``.

Every component reads and writes through these functions, so the same code runs against a
local folder, a moto server on 127.0.0.1, LocalStack or real S3; only the URI and the
endpoint change. :func:`aws_target` is the one place that decides where AWS calls go and as
whom, for boto3 clients (:func:`boto3_client`) and the s3fs filesystem alike: the endpoint from
:func:`configure` (Hydra's ``storage`` group); else, for the ``local`` profile (the compose
stack's moto server, LocalStack), localstack-client's; else ``AWS_ENDPOINT_URL``; else real AWS.
"""

from __future__ import annotations

import functools
import hashlib
import os
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import fsspec


class StorageError(RuntimeError):
    """Base class for storage failures that a caller may want to handle."""


class PreconditionFailed(StorageError):
    """A conditional write lost a race: the object changed since it was read."""


@dataclass
class StorageSettings:
    """Process-wide S3 settings. ``endpoint_url`` None means AWS_ENDPOINT_URL or real S3."""

    endpoint_url: str | None = None
    region: str | None = None
    profile: str | None = None


_settings = StorageSettings()


def configure(endpoint_url: str | None = None, region: str | None = None, profile: str | None = None) -> None:
    """Set the S3 endpoint, region and AWS profile used for every later ``s3://`` call."""
    global _settings
    _settings = StorageSettings(endpoint_url or None, region or None, profile or None)
    _s3_filesystem_cache.clear()
    _cached_client.cache_clear()


#: The AWS profile that means the local emulator: the compose stack's moto server on the edge
#: port, or LocalStack. It needs no entry in the AWS config files.
LOCAL_PROFILE = "local"
_LOCAL_REGION = "us-east-1"


@dataclass(frozen=True)
class AwsTarget:
    """Where AWS calls for one service go, and as whom."""

    endpoint_url: str | None  # None: the service's real AWS endpoint
    region: str | None  # None: botocore's own resolution (AWS_DEFAULT_REGION, the profile)
    profile: str | None  # the AWS profile in force (configured, else AWS_PROFILE)
    #: The local profile: localstack-client's credentials (any key works on moto and LocalStack)
    #: and no certificate check (LocalStack's USE_SSL serves a self-signed one).
    credentials: tuple[str, str, str] | None = None

    @property
    def local(self) -> bool:
        return self.profile == LOCAL_PROFILE


def _profile(profile: str | None = None) -> str | None:
    return profile or _settings.profile or os.environ.get("AWS_PROFILE") or None


def aws_target(service: str = "s3", profile: str | None = None) -> AwsTarget:
    """Where calls to ``service`` go: the one resolution boto3 clients and s3fs share.

    The endpoint is the configured one (:func:`configure`, ``storage.s3.endpoint_url``) if set;
    else, for the ``local`` profile, localstack-client's (``AWS_ENDPOINT_URL`` if set, else
    ``LOCALSTACK_HOST``, default ``localhost:4566``, over https with ``USE_SSL``); else
    ``AWS_ENDPOINT_URL``; else None, real AWS. Any other profile (or none) is real AWS as boto3
    resolves it, untouched.
    """
    profile = _profile(profile)
    if profile != LOCAL_PROFILE:
        endpoint = _settings.endpoint_url or os.environ.get("AWS_ENDPOINT_URL") or None
        return AwsTarget(endpoint, _settings.region, profile)
    import localstack_client.config
    import localstack_client.session

    region = _settings.region or _LOCAL_REGION
    emulator = localstack_client.session.Session(region_name=region)
    endpoint = _settings.endpoint_url or localstack_client.config.get_service_endpoint(service)
    if endpoint is None:  # a service localstack-client does not list: its edge port all the same
        endpoint = localstack_client.config.get_service_endpoint("edge")
    credentials = (emulator.aws_access_key_id, emulator.aws_secret_access_key, emulator.aws_session_token)
    return AwsTarget(endpoint, region, profile, credentials)


def endpoint_url(service: str = "s3") -> str | None:
    """The endpoint in force for ``service`` (see :func:`aws_target`); None means real AWS."""
    return aws_target(service).endpoint_url


#: botocore session variables of the local profile's sessions: the profile is read from nowhere
#: (not from ``AWS_PROFILE``), so ``AWS_PROFILE=local`` needs no ``[profile local]`` entry in the
#: AWS config files, which botocore would otherwise require (``ProfileNotFound``).
_NO_PROFILE_SESSION_VARS = {"profile": (None, None, None, None)}


def boto3_session(profile: str | None = None) -> Any:
    """A boto3 session for ``profile`` (default: configured, else ``AWS_PROFILE``).

    The ``local`` profile gets localstack-client's credentials and region (clients get its
    endpoint from :func:`boto3_client`); any other profile is boto3's own.
    """
    import boto3

    target = aws_target(profile=profile)
    if not target.local:
        return boto3.session.Session(profile_name=target.profile, region_name=target.region)
    import botocore.session

    key, secret, token = target.credentials
    return boto3.session.Session(
        aws_access_key_id=key,
        aws_secret_access_key=secret,
        aws_session_token=token,
        region_name=target.region,
        botocore_session=botocore.session.Session(session_vars=_NO_PROFILE_SESSION_VARS),
    )


def boto3_client(service: str, profile: str | None = None) -> Any:
    """A boto3 client for ``service`` at :func:`aws_target`'s endpoint, cached (clients are
    thread-safe)."""
    return _cached_client(service, aws_target(service, profile))


# -- the botocore retry layer ---------------------------------------------------------------
# botocore is the one owner of the faults of a single AWS API call (throttling, 5xx, a dropped or
# timed-out connection), for boto3 clients and for s3fs alike (s3fs's own retry loop is turned
# off in _s3_filesystem). Above it, inference.retry owns ledger-database outages only, and the
# state machine's Retry the Lambda service's errors (README: "Faults: which layer retries what").

#: Attempts of one call, the first included ("standard" mode: exponential backoff, full jitter).
BOTO_MAX_ATTEMPTS = 3
#: Seconds to open a connection, and to wait on a socket read, per attempt.
BOTO_CONNECT_TIMEOUT_S = 3.0
BOTO_READ_TIMEOUT_S = 10.0
#: botocore's standard-mode backoff before retry i (1-based): rand(0, 1) * min(2 ** (i - 1), 20) s,
#: plus up to 5 s more when the service sends x-amz-retry-after.
_BOTO_MAX_BACKOFF_S = 20.0
_BOTO_RETRY_AFTER_EXTRA_S = 5.0

#: ``total_max_attempts`` counts the first attempt (botocore's ``max_attempts`` would count retries only).
RETRIES = {"mode": "standard", "total_max_attempts": BOTO_MAX_ATTEMPTS}
#: The botocore config of every client and of s3fs: the retry policy and the per-attempt timeouts.
BOTO_CONFIG = {
    "retries": RETRIES,
    "connect_timeout": BOTO_CONNECT_TIMEOUT_S,
    "read_timeout": BOTO_READ_TIMEOUT_S,
}


def botocore_worst_case_s() -> float:
    """The longest one call can take before its error reaches the caller: every attempt hanging
    until its connect and read timeouts, with the longest backoff before each retry. It must fit
    in the shortest Lambda timeout (tests/inference/test_retry_layers.py checks it)."""
    attempts = BOTO_MAX_ATTEMPTS * (BOTO_CONNECT_TIMEOUT_S + BOTO_READ_TIMEOUT_S)
    waits = sum(
        min(2.0 ** (i - 1), _BOTO_MAX_BACKOFF_S) + _BOTO_RETRY_AFTER_EXTRA_S
        for i in range(1, BOTO_MAX_ATTEMPTS)
    )
    return attempts + waits


@functools.lru_cache(maxsize=32)
def _cached_client(service: str, target: AwsTarget) -> Any:
    from botocore.config import Config

    session = boto3_session(target.profile)
    extra = {"verify": False} if target.local else {}
    return session.client(service, endpoint_url=target.endpoint_url, config=Config(**BOTO_CONFIG), **extra)


_s3_filesystem_cache: dict[AwsTarget, fsspec.AbstractFileSystem] = {}


def _s3_filesystem() -> fsspec.AbstractFileSystem:
    target = aws_target("s3")
    if target not in _s3_filesystem_cache:
        client_kwargs: dict[str, Any] = {}
        if target.endpoint_url:
            client_kwargs["endpoint_url"] = target.endpoint_url
        if target.region:
            client_kwargs["region_name"] = target.region
        session: dict[str, Any] = {}
        if target.local:  # the same credentials and session config as boto3_session's
            key, secret, token = target.credentials
            session = {
                "key": key,
                "secret": secret,
                "token": token,
                "session_vars": _NO_PROFILE_SESSION_VARS,  # s3fs passes it on to its aiobotocore session
            }
            client_kwargs["verify"] = False
        # skip_instance_cache: each endpoint gets its own filesystem, never a stale shared one.
        fs = fsspec.filesystem(
            "s3",
            client_kwargs=client_kwargs,
            config_kwargs=dict(BOTO_CONFIG),
            skip_instance_cache=True,
            use_listings_cache=False,
            **session,
        )
        # One attempt per s3fs call: botocore (BOTO_CONFIG) already retried it; s3fs's own loop
        # (5 attempts by default) would retry botocore's final error again.
        fs.retries = 1
        _s3_filesystem_cache[target] = fs
    return _s3_filesystem_cache[target]


def filesystem(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The filesystem for ``uri`` and the path inside it. Bare paths are local files."""
    scheme, _, rest = uri.partition("://")
    if not rest:
        return fsspec.filesystem("file"), str(Path(uri).absolute())
    if scheme == "file":
        return fsspec.filesystem("file"), rest
    if scheme == "s3":
        return _s3_filesystem(), rest
    raise StorageError(f"unsupported URI scheme {scheme!r} in {uri!r}; use file:// or s3://")


def to_uri(path_or_uri: str | os.PathLike[str]) -> str:
    """Normalise a local path or URI to a URI (``/a/b`` -> ``file:///a/b``)."""
    text = str(path_or_uri)
    if "://" in text:
        return text
    return "file://" + str(Path(text).absolute())


def join(uri: str, *parts: str) -> str:
    """Join path parts onto a URI with single slashes."""
    out = uri.rstrip("/")
    for part in parts:
        out += "/" + str(part).strip("/")
    return out


def local_path(uri: str) -> Path | None:
    """The local path of a ``file://`` URI or bare path; None for remote URIs."""
    scheme, _, rest = str(uri).partition("://")
    if not rest:
        return Path(uri)
    return Path(rest) if scheme == "file" else None


def exists(uri: str) -> bool:
    fs, path = filesystem(uri)
    return fs.exists(path)


def read_bytes(uri: str) -> bytes:
    fs, path = filesystem(uri)
    try:
        return fs.cat_file(path)
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"no object at {uri}") from exc


def read_text(uri: str) -> str:
    return read_bytes(uri).decode("utf-8")


def write_bytes(uri: str, data: bytes) -> None:
    """Write ``data`` to ``uri``. Local writes are atomic (temp file + rename); S3 PUTs are atomic."""
    fs, path = filesystem(uri)
    local = local_path(uri)
    if local is not None:
        local.parent.mkdir(parents=True, exist_ok=True)
        tmp = local.with_name(f".{local.name}.{uuid.uuid4().hex}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, local)
        return
    fs.pipe_file(path, data)


def write_text(uri: str, text: str) -> None:
    write_bytes(uri, text.encode("utf-8"))


def upload(local_file: str | os.PathLike[str], uri: str) -> None:
    """Copy a local file to ``uri`` (atomic, as :func:`write_bytes`)."""
    fs, path = filesystem(uri)
    dest = local_path(uri)
    if dest is not None:
        write_bytes(uri, Path(local_file).read_bytes())
        return
    fs.put_file(str(local_file), path)


def download(uri: str, local_file: str | os.PathLike[str]) -> Path:
    """Copy ``uri`` to a local file atomically and return its path."""
    target = Path(local_file)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
    fs, path = filesystem(uri)
    fs.get_file(path, str(tmp))
    os.replace(tmp, target)
    return target


def sha256_of(uri: str) -> tuple[str, int]:
    """sha256 (hex) and size in bytes of the object at ``uri``, streamed, never held in memory."""
    with open_uri(uri, "rb") as handle:
        digest = hashlib.file_digest(handle, "sha256")
        size = handle.tell()
    return digest.hexdigest(), size


def write_tensors(uri: str, tensors: dict[str, Any], metadata: dict[str, str] | None = None) -> None:
    """Store torch tensors at ``uri`` as one safetensors file (written locally first, then uploaded)."""
    import tempfile

    from safetensors.torch import save_file

    with tempfile.TemporaryDirectory(prefix="tensors-") as tmp:
        path = Path(tmp) / "tensors.safetensors"
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata=metadata)
        upload(path, uri)


def list_uris(prefix: str, suffix: str = "", recursive: bool = True) -> list[str]:
    """Sorted URIs of the objects under ``prefix`` whose names end with ``suffix``.

    S3 listings are paginated by s3fs; a prefix that does not exist lists as empty.
    """
    fs, path = filesystem(prefix)
    scheme = prefix.partition("://")[0] if "://" in prefix else "file"
    try:
        found = fs.find(path) if recursive else fs.ls(path, detail=False)
    except FileNotFoundError:
        return []
    base = "s3://" if scheme == "s3" else "file://"
    return sorted(base + p.lstrip("/") if scheme == "s3" else base + p for p in found if p.endswith(suffix))


def delete(uri: str, recursive: bool = False) -> None:
    fs, path = filesystem(uri)
    if fs.exists(path):
        fs.rm(path, recursive=recursive)


@contextmanager
def open_uri(uri: str, mode: str = "rb") -> Iterator[IO[bytes]]:
    """A file object for ``uri`` (seekable for reads, so rasterio can do windowed reads)."""
    fs, path = filesystem(uri)
    if "w" in mode and local_path(uri) is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    with fs.open(path, mode) as handle:
        yield handle


def version_tag(uri: str) -> str | None:
    """An opaque tag that changes whenever the content changes (S3 ETag, local sha256).

    Locally it hashes the content: mtimes are too coarse to tell two quick writes apart.
    Meant for small objects such as pointers.
    """
    local = local_path(uri)
    if local is not None:
        if not local.exists():
            return None
        return sha256_of(uri)[0]
    fs, path = filesystem(uri)
    try:
        info = fs.info(path)
    except FileNotFoundError:
        return None
    return str(info.get("ETag", "")).strip('"') or None


def put_if_match(uri: str, data: bytes, expected_tag: str | None) -> None:
    """Compare-and-swap write: store ``data`` only if ``uri`` still has ``expected_tag``.

    ``expected_tag=None`` means "only if the object does not exist yet". On S3 this is a
    conditional PUT (``If-Match`` / ``If-None-Match``). AWS S3 evaluates the condition and
    the write atomically. moto 5.2.5 enforces both headers but checks and stores in two
    steps without a lock, so two concurrent conditional PUTs can both succeed there; the
    PUT is therefore also serialised per object inside this process, which makes threads
    safe on any server, while separate processes rely on the server's atomicity.
    Locally the check and the rename happen under an exclusive ``flock`` on a sidecar lock file.
    Raises :class:`PreconditionFailed` when another writer got there first (or, for
    ``If-Match``, when the object was deleted since it was read).
    """
    local = local_path(uri)
    if local is not None:
        import fcntl

        local.parent.mkdir(parents=True, exist_ok=True)
        lock_path = local.with_name(f".{local.name}.lock")
        with open(lock_path, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                if version_tag(uri) != expected_tag:
                    raise PreconditionFailed(f"{uri} changed since it was read")
                write_bytes(uri, data)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
        return

    bucket, _, key = filesystem(uri)[1].partition("/")
    client = boto3_client("s3")
    kwargs: dict[str, Any] = {"Bucket": bucket, "Key": key, "Body": data}
    if expected_tag is None:
        kwargs["IfNoneMatch"] = "*"
    else:
        kwargs["IfMatch"] = f'"{expected_tag}"'
    try:
        with _put_lock(endpoint_url(), bucket, key):
            client.put_object(**kwargs)
    except client.exceptions.ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        if code in {"PreconditionFailed", "ConditionalRequestConflict", "412", "409"}:
            raise PreconditionFailed(f"{uri} changed since it was read ({code})") from exc
        if code in {"NoSuchKey", "404"} and expected_tag is not None:
            raise PreconditionFailed(f"{uri} was deleted since it was read ({code})") from exc
        raise


# Striped process-local locks: a fixed set, so the table never grows with the number of keys.
_put_locks = tuple(threading.Lock() for _ in range(64))


def _put_lock(endpoint: str | None, bucket: str, key: str) -> threading.Lock:
    """The process-local lock that serialises conditional PUTs to one object (see put_if_match)."""
    return _put_locks[hash((endpoint, bucket, key)) % len(_put_locks)]


def read_ranges(uri: str, ranges: list[tuple[int, int]]) -> list[bytes]:
    """Bytes ``[start, end)`` of the object at ``uri`` for each range, nothing else of it.

    On S3 these are ranged GETs, issued concurrently by s3fs; locally, seeks and reads. Lets a
    caller read a few members of a multi-GB zip archive (a checkpoint) in place.
    """
    if not ranges:
        return []
    fs, path = filesystem(uri)
    starts, ends = zip(*ranges, strict=True)
    try:
        return list(fs.cat_ranges([path] * len(ranges), list(starts), list(ends)))
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"no object at {uri}") from exc

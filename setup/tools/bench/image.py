"""The Lambda image's Python environment, built the way the Dockerfile builds it, and measured.

:func:`build_lambda_env` runs ``pip install --require-hashes --target`` of the architecture's
lock file (``inference/requirements-lambda.txt`` on x86_64: what ``inference/Dockerfile``
installs), with the lock's own platform flags so that this machine picks the wheels Amazon Linux
2023 picks, then applies ``inference/lambda-strip.txt``; it reports the installed size, the
largest packages and whether torch got in. :func:`shipped_files` lists the repository files the image's build
context sends (``inference/Dockerfile.dockerignore``, last match wins as in BuildKit).
"""

from __future__ import annotations

import fnmatch
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

__all__ = [
    "IMAGE_BUDGET_BYTES",
    "LOCK_FILES",
    "REQUIREMENTS",
    "build_lambda_env",
    "cached_lambda_env",
    "host_architecture",
    "lock_header",
    "shipped_files",
    "strip_env",
]

REPO_ROOT = Path(__file__).resolve().parents[3]
#: Lambda architecture -> its lock file (written by setup/lambda_requirements.py).
LOCK_FILES: dict[str, Path] = {
    "x86_64": REPO_ROOT / "inference" / "requirements-lambda.txt",
    "arm64": REPO_ROOT / "inference" / "requirements-lambda-arm64.txt",
}
REQUIREMENTS = LOCK_FILES["x86_64"]
#: Header lines of a lock file: the digest of the declared set, and the pip flags of its platform.
LOCK_HEADER_DECLARED = "# declared-set-sha256: "
LOCK_HEADER_PIP_ARGS = "# pip-args: "
STRIP_LIST = REPO_ROOT / "inference" / "lambda-strip.txt"
IGNORE_FILE = REPO_ROOT / "inference" / "Dockerfile.dockerignore"
#: The installed-packages budget of the Lambda image (the issue's target).
IMAGE_BUDGET_BYTES = 600 * 10**6


def _tree_bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def strip_env(target: Path, strip_list: Path = STRIP_LIST) -> int:
    """Delete what ``strip_list`` names (globs relative to ``target``), as the Dockerfile does;
    returns the bytes removed."""
    import shutil

    removed = 0
    for line in strip_list.read_text().splitlines():
        pattern = line.strip()
        if not pattern or pattern.startswith("#"):
            continue
        for path in target.glob(pattern):
            removed += _tree_bytes(path)
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()
    return removed


def host_architecture() -> str:
    """This machine's Lambda architecture name (``x86_64`` or ``arm64``)."""
    import platform

    return "arm64" if platform.machine() in ("aarch64", "arm64") else "x86_64"


def lock_header(lock_text: str, prefix: str) -> str:
    """The value of one ``# key: value`` header line of a lock file."""
    for line in lock_text.splitlines():
        if line.startswith(prefix):
            return line[len(prefix) :].strip()
    raise ValueError(f"lock file has no {prefix.strip()!r} line: run python setup/lambda_requirements.py")


def build_lambda_env(target: Path, requirements: Path = REQUIREMENTS, timeout: float = 900) -> dict[str, Any]:
    """``pip install --require-hashes --no-deps --target target -r requirements`` with the lock's
    platform flags, then :func:`strip_env`; sizes of what is left."""
    target.mkdir(parents=True, exist_ok=True)
    platform_args = lock_header(requirements.read_text(), LOCK_HEADER_PIP_ARGS).split()
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    cmd += ["--require-hashes", "--no-deps", *platform_args]
    cmd += ["--target", str(target), "-r", str(requirements)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"pip install --target failed ({proc.returncode}): {proc.stderr[-3000:]}")
    stripped = strip_env(target)
    sizes = {p.name: _tree_bytes(p) for p in target.iterdir() if not p.name.endswith((".dist-info", ".pth"))}
    total = _tree_bytes(target)
    return {
        "requirements": str(requirements.relative_to(REPO_ROOT)),
        "seconds": seconds,
        "installed_bytes": total,
        "installed_mb": total / 1e6,
        "stripped_mb": stripped / 1e6,
        "budget_mb": IMAGE_BUDGET_BYTES / 1e6,
        "largest": sorted(((k, round(v / 1e6, 1)) for k, v in sizes.items()), key=lambda kv: -kv[1])[:10],
        "torch_installed": (target / "torch").exists(),
        "lightning_installed": (target / "pytorch_lightning").exists() or (target / "lightning").exists(),
    }


def cached_lambda_env(
    workdir: Path, rebuild: bool = False, requirements: Path | None = None
) -> dict[str, Any]:
    """:func:`build_lambda_env` under ``workdir/lambda-env-<hash of requirements + strip list>``
    (default: this machine's architecture's lock); a second run with unchanged files reuses the
    build and its report (``cached: true``, ``path``). A build is written to a temporary folder
    and renamed, so an interrupted one is never taken for a finished one."""
    import hashlib
    import json
    import shutil

    requirements = requirements or LOCK_FILES[host_architecture()]
    key = hashlib.sha256(requirements.read_bytes() + STRIP_LIST.read_bytes()).hexdigest()[:12]
    target = workdir / f"lambda-env-{key}"
    info = target.with_suffix(".json")
    if not rebuild and info.exists() and target.exists():
        return {**json.loads(info.read_text()), "cached": True, "path": str(target)}
    building = workdir / f".lambda-env-{key}.building"
    for stale in (target, building):
        if stale.exists():
            shutil.rmtree(stale)
    report = build_lambda_env(building, requirements)
    building.rename(target)
    info.write_text(json.dumps(report, indent=2))
    return {**report, "cached": False, "path": str(target)}


def _patterns() -> list[tuple[bool, str]]:
    out = []
    for line in IGNORE_FILE.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            out.append((line.startswith("!"), line.lstrip("!").rstrip("/")))
    return out


def shipped_files() -> list[str]:
    """Tracked files the image's build context sends (the last matching pattern decides)."""
    tracked = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    patterns = _patterns()
    out = []
    for relative in tracked:
        included = True
        for keep, pattern in patterns:
            if fnmatch.fnmatch(relative, pattern) or relative.startswith(pattern + "/"):
                included = keep
        if included and (REPO_ROOT / relative).is_file():
            out.append(relative)
    return out

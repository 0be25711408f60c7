"""The Lambda image's Python environment, built the way the Dockerfile builds it, and measured.

:func:`build_lambda_env` runs ``pip install --target`` of ``inference/requirements-lambda.txt``
(what ``inference/Dockerfile`` installs) and reports the installed size, the largest packages
and whether torch got in. :func:`shipped_files` lists the repository files the image's build
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
    "REQUIREMENTS",
    "build_lambda_env",
    "cached_lambda_env",
    "shipped_files",
    "strip_env",
]

REPO_ROOT = Path(__file__).resolve().parents[2]
REQUIREMENTS = REPO_ROOT / "inference" / "requirements-lambda.txt"
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


def build_lambda_env(target: Path, requirements: Path = REQUIREMENTS, timeout: float = 900) -> dict[str, Any]:
    """``pip install --target target -r requirements``, then :func:`strip_env`; sizes of what is left."""
    target.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
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


def cached_lambda_env(workdir: Path, rebuild: bool = False) -> dict[str, Any]:
    """:func:`build_lambda_env` under ``workdir/lambda-env-<hash of requirements + strip list>``;
    a second run with unchanged files reuses the build and its report (``cached: true``)."""
    import hashlib
    import json
    import shutil

    key = hashlib.sha256(REQUIREMENTS.read_bytes() + STRIP_LIST.read_bytes()).hexdigest()[:12]
    target = workdir / f"lambda-env-{key}"
    info = target.with_suffix(".json")
    if not rebuild and info.exists() and target.exists():
        return {**json.loads(info.read_text()), "cached": True}
    if target.exists():
        shutil.rmtree(target)
    report = build_lambda_env(target)
    info.write_text(json.dumps(report, indent=2))
    return {**report, "cached": False}


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

"""Lock the Lambda image's packages: ``pyproject.toml``'s ``inference`` extra -> hashed requirements.

    python setup/lambda_requirements.py            # rewrite both lock files
    python setup/lambda_requirements.py --check    # exit 1 if a lock is stale (CI runs the test)

The ``inference`` extra is the one declared set: the packages the served code imports (pinned
with ``==``). This script resolves it, with every transitive dependency, for the Lambda image's
platform rather than this machine's: CPython 3.11 wheels only, for the glibc of Amazon Linux 2023
(the ``provided:al2023`` base of ``inference/Dockerfile``; AL2's glibc 2.26, the ``python:3.11``
base, has no wheel of onnxruntime 1.32 or openvino 2026), for x86_64 and for arm64. Each lock
line pins one version and the sha256 of the one wheel pip picks there, so ``pip install
--require-hashes`` installs byte-identical files in the image and in ``make test``
(``setup/tools/bench/image.py`` reads the platform flags back from the lock's header).

Markers are evaluated for the target architecture here (``openvino`` is x86_64 only: it ships no
manylinux aarch64 wheel for AL2023's glibc); pip evaluates transitive markers on the host.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
from setup.tools.bench.image import (  # noqa: E402  (the lock files' names and header keys)
    LOCK_FILES,
    LOCK_HEADER_DECLARED,
    LOCK_HEADER_PIP_ARGS,
)

PYPROJECT = REPO_ROOT / "pyproject.toml"
EXTRA = "inference"
#: Lambda architecture -> the machine name that markers and wheel tags use.
MACHINES: dict[str, str] = {"x86_64": "x86_64", "arm64": "aarch64"}
#: Amazon Linux 2023's glibc (2.34): the newest manylinux tag the image can load.
GLIBC_MINOR = 34
PYTHON_VERSION = "3.11"

log = logging.getLogger("lambda_requirements")


def declared_requirements(pyproject: Path = PYPROJECT) -> list[str]:
    """The ``inference`` extra of ``pyproject.toml``, as written."""
    data = tomllib.loads(pyproject.read_text())
    return list(data["project"]["optional-dependencies"][EXTRA])


def declared_sha256(requirements: list[str]) -> str:
    """A digest of the declared set (order-free), recorded in each lock's header."""
    return hashlib.sha256("\n".join(sorted(requirements)).encode()).hexdigest()


def for_machine(requirements: list[str], machine: str) -> list[str]:
    """The declared requirements whose markers hold on Linux ``machine`` (markers stripped)."""
    env = {**default_environment(), "platform_machine": machine, "sys_platform": "linux"}
    out = []
    for line in requirements:
        req = Requirement(line)
        if req.marker is None or req.marker.evaluate(env):
            req.marker = None
            out.append(str(req))
    return out


def pip_platform_args(machine: str) -> list[str]:
    """``pip install`` flags that select the wheels the Lambda image's pip would pick."""
    args = ["--only-binary=:all:", "--python-version", PYTHON_VERSION, "--implementation", "cp"]
    args += ["--abi", "cp" + PYTHON_VERSION.replace(".", "")]
    for minor in range(GLIBC_MINOR, 16, -1):
        args += ["--platform", f"manylinux_2_{minor}_{machine}"]
    return [*args, "--platform", f"manylinux2014_{machine}", "--platform", f"linux_{machine}"]


def resolve(requirements: list[str], machine: str) -> list[tuple[str, str, str]]:
    """``(name, version, sha256)`` of every wheel pip resolves for ``requirements`` on ``machine``."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet"]
        cmd += ["--disable-pip-version-check", "--report", str(report), "--target", str(Path(tmp) / "t")]
        cmd += [*pip_platform_args(machine), *requirements]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"pip could not resolve the {machine} set: {proc.stderr[-3000:]}")
        installs = json.loads(report.read_text())["install"]
    out = []
    for item in installs:
        digest = item["download_info"].get("archive_info", {}).get("hashes", {}).get("sha256")
        if not digest:
            raise RuntimeError(f"{item['metadata']['name']}: pip reported no sha256 for its wheel")
        out.append((item["metadata"]["name"], item["metadata"]["version"], digest))
    return sorted(out, key=lambda row: row[0].lower())


def render(architecture: str, requirements: list[str] | None = None) -> str:
    """The lock file text of ``architecture`` (``x86_64`` or ``arm64``)."""
    requirements = declared_requirements() if requirements is None else requirements
    machine = MACHINES[architecture]
    rows = resolve(for_machine(requirements, machine), machine)
    lines = [
        f"# The Lambda image's Python packages for {architecture}: generated by",
        "# `python setup/lambda_requirements.py` from pyproject.toml's `inference` extra. Do not edit.",
        "# inference/Dockerfile and make test (tests/inference/test_lambda_env.py) install it with",
        "# `pip install --require-hashes --target`; a stale lock fails tests/inference/test_lambda_lock.py.",
        LOCK_HEADER_DECLARED + declared_sha256(requirements),
        LOCK_HEADER_PIP_ARGS + " ".join(pip_platform_args(machine)),
    ]
    lines += [f"{name}=={version} --hash=sha256:{digest}" for name, version, digest in rows]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if a lock is not up to date")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    stale = []
    for architecture, path in LOCK_FILES.items():
        log.info("resolving the %s set for Amazon Linux 2023 (glibc 2.%d) ...", architecture, GLIBC_MINOR)
        text = render(architecture)
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(path.name)
            continue
        path.write_text(text)
        log.info("wrote %s (%d packages)", path.relative_to(REPO_ROOT), text.count("--hash="))
    if stale:
        log.error("stale lock files: %s (run python setup/lambda_requirements.py)", ", ".join(stale))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

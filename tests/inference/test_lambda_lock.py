"""The Lambda image's lock files follow the one declared set (pyproject's ``inference`` extra).

Offline: the lock is not re-resolved here (``python setup/lambda_requirements.py --check`` does
that with PyPI); it is held to the declared set it was made from.
"""

from __future__ import annotations

import re

import pytest

from setup.lambda_requirements import MACHINES, declared_requirements, declared_sha256, for_machine
from setup.tools.bench.image import LOCK_FILES, LOCK_HEADER_DECLARED, LOCK_HEADER_PIP_ARGS, lock_header

LINE = re.compile(r"^(?P<name>[A-Za-z0-9_.\-]+)==(?P<version>\S+) --hash=sha256:[0-9a-f]{64}$")
NEVER_IN_THE_IMAGE = (
    "torch",
    "pytorch-lightning",
    "lightning",
    "apache-airflow",
    "mlflow",
    "moto",
    "rio-cogeo",
)


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _locked(text: str) -> dict[str, str]:
    rows = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = LINE.match(line)
        assert match, f"not a hashed pin: {line!r}"
        rows[_normal(match["name"])] = match["version"]
    return rows


@pytest.mark.parametrize("architecture", sorted(LOCK_FILES))
def test_the_lock_is_made_from_the_declared_set(architecture: str) -> None:
    text = LOCK_FILES[architecture].read_text()
    declared = declared_requirements()
    assert lock_header(text, LOCK_HEADER_DECLARED) == declared_sha256(declared), (
        f"{LOCK_FILES[architecture].name} is stale: run python setup/lambda_requirements.py"
    )
    platform_args = lock_header(text, LOCK_HEADER_PIP_ARGS)
    assert (
        f"manylinux_2_34_{MACHINES[architecture]}" in platform_args and "--only-binary=:all:" in platform_args
    )
    locked = _locked(text)
    for requirement in for_machine(declared, MACHINES[architecture]):
        name, _, version = requirement.partition("==")
        assert locked.get(_normal(name)) == version, (requirement, locked.get(_normal(name)))
    assert not [name for name in NEVER_IN_THE_IMAGE if name in locked], locked


def test_every_declared_package_is_pinned_exactly() -> None:
    for requirement in declared_requirements():
        assert re.match(r"^[A-Za-z0-9_.\-]+==[^=;\s]+(\s*;.*)?$", requirement), requirement


def test_openvino_is_x86_only() -> None:
    assert "openvino" in _locked(LOCK_FILES["x86_64"].read_text())
    assert "openvino" not in _locked(LOCK_FILES["arm64"].read_text())

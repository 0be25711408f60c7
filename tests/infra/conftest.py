"""Fixtures of the Terraform checks (both stacks)."""

from __future__ import annotations

import shutil

import pytest


@pytest.fixture(scope="module")
def terraform() -> str:
    """The terraform executable on PATH; a failure (not a skip) when it is missing."""
    path = shutil.which("terraform")
    if path is None:
        pytest.fail("terraform is not on PATH (Terraform >= 1.11 is required for the IaC tests)")
    return path

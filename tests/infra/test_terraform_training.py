"""Offline checks of the training stack's Terraform (training/tf: AWS Batch for runner=batch).

The same rules as the inference stack's checks (tests/infra/test_terraform.py): terraform from
the local provider mirror, ``terraform test`` with a mocked AWS provider, checkov with
--skip-download; nothing reaches the network.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.infra.terraform_tools import (
    CHECKOV,
    REPO_ROOT,
    find_provider_mirror,
    require_success,
    terraform_env,
)

TF_DIR = REPO_ROOT / "training" / "tf"


def _run(cmd: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        cmd, cwd=TF_DIR, env=terraform_env(), capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def initialised(terraform) -> Path:
    mirror = find_provider_mirror()
    # -lockfile=readonly: the committed .terraform.lock.hcl must match the mirror's provider.
    init = [
        terraform,
        "init",
        "-backend=false",
        "-input=false",
        "-lockfile=readonly",
        f"-plugin-dir={mirror}",
    ]
    require_success(_run(init))
    return mirror


def test_fmt(terraform) -> None:
    proc = _run([terraform, "fmt", "-check", "-recursive", "-diff"])
    assert proc.returncode == 0, f"terraform fmt would change:\n{proc.stdout}{proc.stderr}"


def test_validate(terraform, initialised) -> None:
    report = json.loads(require_success(_run([terraform, "validate", "-json"])))
    assert report["valid"] and report["error_count"] == 0 and report["warning_count"] == 0, report


@pytest.mark.slow
def test_terraform_test_with_mock_provider(terraform, initialised) -> None:
    """tests/main.tftest.hcl: names, spot GPU capacity, image, GPU per job, retries, least privilege."""
    out = require_success(_run([terraform, "test", "-no-color"], timeout=600))
    assert re.search(r"Success! 3 passed, 0 failed", out), out


def test_names_match_the_hydra_defaults() -> None:
    """training.batch's queue and job definition are the names this stack creates."""
    from core.config import compose

    batch = compose(["infra.project=lctest"]).training.batch
    assert batch.job_queue == batch.job_definition == "lctest-training"
    assert 'name      = "${var.project}-training"' in (TF_DIR / "main.tf").read_text()


def test_checkov_is_clean() -> None:
    if not CHECKOV.exists():
        proc = subprocess.run(["make", "-s", "iac_tools"], cwd=REPO_ROOT, capture_output=True, text=True)
        assert proc.returncode == 0, f"make iac_tools failed:\n{proc.stdout}\n{proc.stderr}"
    env = dict(os.environ, HCL_PARSE_TIMEOUT_SEC="120", LOG_LEVEL="WARNING")
    proc = subprocess.run(
        [str(CHECKOV), "--config-file", str(TF_DIR / ".checkov.yaml"), "-d", str(TF_DIR), "-o", "json"],
        cwd=TF_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode in (0, 1), f"checkov crashed:\n{proc.stderr[-4000:]}"
    report = json.loads(proc.stdout)
    summary = report["summary"]
    print(f"checkov {summary.get('checkov_version')}: {summary}")
    assert summary["parsing_errors"] == 0
    assert summary["passed"] > 20
    failed = [(c["check_id"], c["resource"]) for c in report["results"]["failed_checks"]]
    assert failed == [], f"checkov failures: {failed}"
    assert report["results"].get("skipped_checks", []) == []

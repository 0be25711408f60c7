"""What the Terraform checks of both stacks share: the checkov path, a clean terraform environment,
the local provider mirror and a success check that shows terraform's output when it fails."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
CHECKOV = REPO_ROOT / ".cache" / "checkov-venv" / "bin" / "checkov"
# Where a provider mirror may be; TF_PLUGIN_MIRROR wins.
MIRROR_CANDIDATES = (
    "/opt/tf-plugins",
    "/usr/share/terraform/plugins",
    "/usr/local/share/terraform/plugins",
    str(Path.home() / ".terraform.d" / "plugins"),
    str(Path.home() / ".local" / "share" / "terraform" / "plugins"),
)


def terraform_env() -> dict[str, str]:
    """Terraform with no user config, no update check, and no AWS credentials from the caller."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "TF_VAR_"))}
    env.update(TF_CLI_CONFIG_FILE=os.devnull, CHECKPOINT_DISABLE="1", TF_IN_AUTOMATION="1")
    return env


def require_success(proc: subprocess.CompletedProcess) -> str:
    """``proc``'s stdout; fails the test with the tail of its output when it exited non-zero."""
    assert proc.returncode == 0, (
        f"{' '.join(proc.args)} failed:\n{proc.stdout[-6000:]}\n{proc.stderr[-6000:]}"
    )
    return proc.stdout


def find_provider_mirror() -> Path:
    """The plugin directory holding hashicorp/aws 5.x, or a failure saying how to provide one."""
    candidates = [os.environ["TF_PLUGIN_MIRROR"]] if os.environ.get("TF_PLUGIN_MIRROR") else []
    for root in [*candidates, *MIRROR_CANDIDATES]:
        if list(Path(root).glob("registry.terraform.io/hashicorp/aws/5.*/*/terraform-provider-aws_*")):
            return Path(root)
    pytest.fail(
        "No local Terraform provider mirror with hashicorp/aws 5.x: looked in "
        f"{', '.join([*candidates, *MIRROR_CANDIDATES])}. Set TF_PLUGIN_MIRROR to the directory that holds "
        "registry.terraform.io/hashicorp/aws/<version>/<os_arch>/ (tests never download providers)."
    )

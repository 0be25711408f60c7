"""The compose stack's ``.env`` file: where it is, how it reads, and the Airflow password's name.

Standard library only: ``make env_file`` runs :mod:`setup.compose_env` with the system Python.
"""

from __future__ import annotations

import re
from pathlib import Path

# core.config.REPO_ROOT, not imported: that module needs omegaconf.
_REPO_ROOT = Path(__file__).resolve().parents[1]
ENV_FILE = _REPO_ROOT / ".env"
# The Airflow UI password (user admin) that airflow-init writes; the REST runner reads it too.
AIRFLOW_ADMIN_PASSWORD_VAR = "AIRFLOW_ADMIN_PASSWORD"
ENV_LINE = re.compile(r"^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=(.*)$")


def read_env(path: Path) -> dict[str, str]:
    """``NAME=value`` lines of an env file (comments and blank lines skipped, quotes stripped)."""
    values = {}
    for line in path.read_text().splitlines():
        match = ENV_LINE.match(line)
        if match and not line.lstrip().startswith("#"):
            values[match.group(1)] = match.group(2).strip().strip("'\"")
    return values

"""Debian's headless Chromium, for the tests that render a page (the static report, the Airflow UI)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def run_headless_chromium(tmp_path: Path, url: str, *mode: str) -> subprocess.CompletedProcess:
    """Chromium run once on ``url`` with ``mode`` (``--dump-dom``, ``--screenshot=...``), its own
    profile under ``tmp_path`` and console messages on stderr; fails the test when it is missing."""
    if not Path(CHROMIUM).exists():
        pytest.fail("Chromium is not installed: run `make browser` (apt-get install chromium)")
    profile = tmp_path / "chromium-profile"
    cmd = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--no-first-run",
        f"--user-data-dir={profile}",
        "--enable-logging=stderr",  # console messages and uncaught errors land on stderr as CONSOLE lines
        "--v=0",
        "--hide-scrollbars",
        "--virtual-time-budget=10000",  # let load handlers run before dumping/screenshotting
        *mode,
        url,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=90, check=False)

"""The static report: built on the embedded SQLite ledger, rendered in Debian's headless Chromium,
showing every chart and throwing no console errors; self-contained (no server, no network)."""

from __future__ import annotations

import re
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest

from observability import panels as P
from observability.report import build_report, main
from tests.observability.seed import seed_ledger

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CONSOLE_LINE = re.compile(r":CONSOLE[:(]|Uncaught", re.IGNORECASE)


def _chromium(tmp_path: Path, url: str, *mode: str) -> subprocess.CompletedProcess:
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


def _console_errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if CONSOLE_LINE.search(line)]


def test_console_error_detection_works(tmp_path):
    """Negative control: the log scan does catch console errors and uncaught exceptions."""
    page = tmp_path / "broken.html"
    page.write_text('<html><body><script>console.error("boom"); notAFunction();</script></body></html>')
    proc = _chromium(tmp_path, page.as_uri(), "--dump-dom")
    errors = _console_errors(proc.stderr)
    assert any("boom" in e for e in errors), proc.stderr[-2000:]
    assert any("Uncaught ReferenceError" in e for e in errors), proc.stderr[-2000:]


def test_report_renders_its_charts_in_headless_chromium(tmp_path):
    from PIL import Image

    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    seed_ledger(url)
    out = build_report(url, tmp_path / "report" / "report.html", drift_threshold=0.2)
    page = out.read_text(encoding="utf-8")

    # Self-contained: nothing fetched from anywhere (images are data: URIs, no external assets).
    refs = re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)""", page)
    assert refs and all(r.startswith("data:") or r.startswith("#") for r in refs), refs[:5]
    assert "url(http" not in page and "@import" not in page

    charts = [p for p in P.panels(0.2) if p.kind in ("timeseries", "barchart")]
    assert page.count('<img class="chart"') == len(charts)
    for panel in P.panels(0.2):
        assert f'data-panel="{panel.key}"' in page
        assert "query failed" not in page

    # The DOM after scripts ran: every chart image decoded with a non-zero size.
    proc = _chromium(tmp_path, out.as_uri(), "--dump-dom")
    assert proc.returncode == 0, proc.stderr[-2000:]
    dom = proc.stdout
    total = re.search(r'data-charts-total="(\d+)"', dom)
    rendered = re.search(r'data-charts-rendered="(\d+)"', dom)
    assert total and rendered, "the report's check script did not run"
    assert int(total.group(1)) == int(rendered.group(1)) == len(charts)
    assert f"{len(charts)} of {len(charts)} charts rendered" in dom
    assert _console_errors(proc.stderr) == []

    shot = tmp_path / "report.png"
    proc = _chromium(tmp_path, out.as_uri(), "--window-size=1400,3200", f"--screenshot={shot}")
    assert proc.returncode == 0 and shot.exists(), proc.stderr[-2000:]
    assert _console_errors(proc.stderr) == []
    image = Image.open(shot).convert("RGB")
    assert image.size == (1400, 3200)
    # A page of charts, not a blank or error page: many distinct colours.
    colours = image.resize((350, 800)).getcolors(maxcolors=1_000_000)
    assert colours is not None and len(colours) > 200


def test_report_cli_refuses_a_missing_ledger(tmp_path, capsys):
    missing = tmp_path / "nope.db"
    rc = main(["--ledger-url", f"sqlite:///{missing}", "--out", str(tmp_path / "r.html")])
    assert rc == 2
    assert "make run_inference" in capsys.readouterr().err
    assert not missing.exists()  # no empty database created as a side effect
    assert not (tmp_path / "r.html").exists()


def test_report_of_an_empty_ledger_says_no_data(tmp_path):
    from inference.ledger.db import migrate

    url = f"sqlite:///{tmp_path / 'empty.db'}"
    migrate(url)
    out = build_report(url, tmp_path / "empty.html", drift_threshold=0.2, time_to=datetime.now(UTC))
    page = out.read_text(encoding="utf-8")
    assert "No data in range" in page
    assert "query failed" not in page

"""The static report: built on the embedded SQLite ledger, rendered in Debian's headless Chromium,
showing every chart and throwing no console errors; self-contained (no server, no network)."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest

from observability import panels as P
from observability.report import build_report, main
from tests.chromium import run_headless_chromium
from tests.observability.seed import seed_ledger

CONSOLE_LINE = re.compile(r":CONSOLE[:(]|Uncaught", re.IGNORECASE)


def _console_errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if CONSOLE_LINE.search(line)]


def test_console_error_detection_works(tmp_path):
    """Negative control: the log scan does catch console errors and uncaught exceptions."""
    page = tmp_path / "broken.html"
    page.write_text('<html><body><script>console.error("boom"); notAFunction();</script></body></html>')
    proc = run_headless_chromium(tmp_path, page.as_uri(), "--dump-dom")
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
    proc = run_headless_chromium(tmp_path, out.as_uri(), "--dump-dom")
    assert proc.returncode == 0, proc.stderr[-2000:]
    dom = proc.stdout
    total = re.search(r'data-charts-total="(\d+)"', dom)
    rendered = re.search(r'data-charts-rendered="(\d+)"', dom)
    assert total and rendered, "the report's check script did not run"
    assert int(total.group(1)) == int(rendered.group(1)) == len(charts)
    assert f"{len(charts)} of {len(charts)} charts rendered" in dom
    assert _console_errors(proc.stderr) == []

    shot = tmp_path / "report.png"
    proc = run_headless_chromium(tmp_path, out.as_uri(), "--window-size=1400,3200", f"--screenshot={shot}")
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


@pytest.mark.slow
def test_report_shows_the_latest_scenes_quicklooks(tmp_path, tmp_uri):
    """The real chain writes a quicklook per scene (linked as its STAC thumbnail); the report
    embeds the newest ones and Chromium decodes every one of them."""
    import base64
    import io
    import json

    from PIL import Image

    from core import storage
    from core.classes import CLASSES
    from inference.ledger.db import make_engine
    from inference.ledger.models import Prediction
    from tests.observability.seed import seed_with_chain

    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    predicted = seed_with_chain(url, tmp_uri)
    engine = make_engine(url)
    with engine.connect() as conn:
        stac_uris = [r[0] for r in conn.execute(sa_select_stac(Prediction))]
    engine.dispose()
    assert len(stac_uris) == sum(predicted.values()) == 3
    for stac_uri in stac_uris:  # the quicklook sits next to the class COG, linked as the thumbnail
        assets = json.loads(storage.read_text(stac_uri))["assets"]
        assert assets["thumbnail"]["roles"] == ["thumbnail"] and assets["thumbnail"]["type"] == "image/png"
        assert assets["thumbnail"]["href"].rsplit("/", 1)[0] == assets["class"]["href"].rsplit("/", 1)[0]
        assert storage.read_bytes(assets["thumbnail"]["href"])[:8] == b"\x89PNG\r\n\x1a\n"

    out = build_report(url, tmp_path / "report.html", drift_threshold=0.2)
    page = out.read_text(encoding="utf-8")
    assert page.count('<img class="quicklook"') == 3
    # The embedded pictures are the quicklooks: the class panel uses the class table's colours.
    first = re.search(r'<img class="quicklook"[^>]*src="data:image/png;base64,([^"]+)"', page).group(1)
    colours = {
        c[1] for c in Image.open(io.BytesIO(base64.b64decode(first))).convert("RGB").getcolors(1 << 20)
    }
    predicted_colours = {c.color for c in CLASSES} & colours
    assert len(predicted_colours) >= 2, predicted_colours

    proc = run_headless_chromium(tmp_path, out.as_uri(), "--dump-dom")
    assert proc.returncode == 0, proc.stderr[-2000:]
    total = re.search(r'data-quicklooks-total="(\d+)"', proc.stdout)
    shown = re.search(r'data-quicklooks-rendered="(\d+)"', proc.stdout)
    assert total and shown and int(total.group(1)) == int(shown.group(1)) == 3
    assert _console_errors(proc.stderr) == []
    shot = tmp_path / "report-quicklooks.png"
    proc = run_headless_chromium(tmp_path, out.as_uri(), "--window-size=1400,1800", f"--screenshot={shot}")
    assert proc.returncode == 0 and shot.exists(), proc.stderr[-2000:]


def sa_select_stac(prediction):
    import sqlalchemy as sa

    return sa.select(prediction.stac_uri).order_by(prediction.id)


def test_charts_use_the_class_table_colours_and_read_well_for_one_run():
    """Low Vegetation is drawn in its own light green (outlined), never swapped for a palette
    red; a single run gives labelled bars, not a lone dot on a day-wide axis."""
    import base64

    from core.classes import CLASSES
    from observability.report_charts import snapshot_chart, timeseries_chart
    from observability.sql import Result

    def svg(uri: str) -> str:
        return base64.b64decode(uri.split(",", 1)[1]).decode()

    panel = next(p for p in P.panels(0.2) if p.key == "class_share")
    hexes = {c.name: "#{:02x}{:02x}{:02x}".format(*c.color) for c in CLASSES}
    t1, t2 = datetime(2026, 12, 1, 10, tzinfo=UTC), datetime(2026, 12, 1, 14, tzinfo=UTC)
    rows = [(t1, "Low Vegetation", 0.4), (t1, "Water", 0.6), (t2, "Low Vegetation", 0.5), (t2, "Water", 0.5)]
    two_runs = svg(timeseries_chart(panel, Result(panel.columns, rows), []))
    assert hexes["Low Vegetation"] in two_runs and hexes["Water"] in two_runs
    assert "#d62728" not in two_runs  # the red that replaced Low Vegetation before
    assert "40 %" in two_runs or "40.0 %" in two_runs  # few points: each value is written out

    one_run = timeseries_chart(panel, Result(panel.columns, rows[:2]), [])
    assert one_run == snapshot_chart(panel, {"Low Vegetation": ([t1], [0.4]), "Water": ([t1], [0.6])})
    text = svg(one_run)
    assert hexes["Low Vegetation"] in text and "one run" in text
    assert "60.0 %" in text and "40.0 %" in text

"""The dry run: the process step's listing, validation and block plan, Lambda estimates from measured
speed only, and nothing written (real Postgres ledger, moto S3 server)."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
import sqlalchemy as sa

from core import storage
from inference.dry_run import KNOWN, NEW, NO_MEASUREMENT, PREDICTED, dry_run, format_report
from inference.inputs import list_objects
from inference.ledger import repository
from inference.ledger.models import Base, SceneStatus, utcnow
from inference.planning import block_chip_counts, scene_identity
from inference.transactions import session
from tests.inference.chain_fixtures import chain_settings, make_champion, migrated, write_bad, write_scene

SIDE = 300  # px: more than one block of 2 x 2 chips at chip 128


def table_counts(url: str) -> dict[str, list[str]]:
    """Every row of every ledger table (as sorted text): any insert, update or delete shows."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return {
                t: sorted(repr(tuple(row)) for row in conn.execute(sa.text(f'SELECT * FROM "{t}"')))
                for t in Base.metadata.tables
            }
    finally:
        engine.dispose()


def bucket_keys(bucket_uri: str) -> list[tuple[str, str]]:
    s3 = storage.boto3_client("s3")
    listed = s3.list_objects_v2(Bucket=bucket_uri.removeprefix("s3://"))
    return sorted((o["Key"], o["ETag"]) for o in listed.get("Contents", []))


@pytest.fixture
def inputs(s3_bucket, postgres_url):
    """Settings over the moto bucket and a migrated Postgres ledger; a champion; 2 good scenes, 2 bad."""
    settings = chain_settings(s3_bucket, migrated(postgres_url), block_chips=2)
    make_champion(settings.registry_uri)
    for i in range(2):
        write_scene(storage.join(settings.input_uri, f"good-{i}.tif"), seed=i, size=SIDE)
    write_bad(storage.join(settings.input_uri, "rgb.tif"), "band_count")
    write_bad(storage.join(settings.input_uri, "fine.tif"), "resolution")
    return settings


def test_dry_run_writes_nothing_and_estimates_nothing_unmeasured(inputs, s3_bucket, tmp_path) -> None:
    settings = inputs
    before_rows, before_keys = table_counts(settings.ledger_url), bucket_keys(s3_bucket)
    report = dry_run(settings, bench_report=tmp_path / "absent.json")
    assert table_counts(settings.ledger_url) == before_rows
    assert bucket_keys(s3_bucket) == before_keys

    rows = {r.uri.rsplit("/", 1)[-1]: r for r in report.scenes}
    assert sorted(rows) == ["fine.tif", "good-0.tif", "good-1.tif", "rgb.tif"]
    assert (rows["rgb.tif"].verdict, rows["rgb.tif"].reason, rows["rgb.tif"].bands) == (
        "quarantined",
        "band_count",
        3,
    )
    assert "NIR is required" in rows["rgb.tif"].detail
    assert (rows["fine.tif"].reason, rows["fine.tif"].gsd_m) == ("resolution", pytest.approx([0.6, 0.6]))
    good = rows["good-0.tif"]
    assert (good.verdict, good.width, good.height, good.bands, good.dtype) == ("ok", SIDE, SIDE, 4, "uint8")
    assert good.crs.startswith("EPSG:")
    # The process step's plan: the same blocks for this size and block side.
    from inference.ledger.models import Scene
    from inference.steps.process import planned_blocks

    assert good.blocks == len(planned_blocks(settings, Scene(height=SIDE, width=SIDE), 2)) > 1
    # An empty ledger: every valid scene is new (a real run predicts them all).
    assert [r.ledger for r in report.scenes if r.verdict == "ok"] == [NEW, NEW]
    assert (report.totals["to_predict"], report.totals["already_predicted"]) == (2, 0)
    # No measurement: no number, and the report says how to get one.
    assert report.measurement is None and good.est_seconds is None and good.est_usd is None
    assert report.totals["est_seconds"] is None and NO_MEASUREMENT in report.notes
    text = format_report(report)
    assert NO_MEASUREMENT in text and "quarantined (resolution)" in text and "good-1.tif" in text
    assert json.loads(json.dumps(report.to_dict()))["no_measurement"] == NO_MEASUREMENT


def test_estimate_from_the_bench_report(inputs, tmp_path) -> None:
    settings = inputs
    bench = tmp_path / "bench.json"
    bench.write_text(
        json.dumps(
            {
                "presets": {"large": {"optimized": {"ms_per_chip": 900.0, "runs": 5}}},
                "machine": {"cores": 4, "cpu": "test cpu"},
                "chip": 128,
            }
        )
    )
    report = dry_run(settings, bench_report=bench)
    assert report.measurement is not None and report.measurement.source == "bench"
    # 0.9 s/chip on 4 threads; the 3008 MB Lambda has 1.70 vCPU: 4 / 1.70 times slower.
    per_chip = 0.9 * 4 / settings.lambda_vcpus(3008)
    assert report.measurement.seconds_per_chip == pytest.approx(per_chip)
    good = next(r for r in report.scenes if r.verdict == "ok")
    chips = sum(block_chip_counts(settings, SIDE, SIDE, 2))
    assert good.chips == chips
    assert good.est_seconds == pytest.approx(per_chip * chips)
    assert good.est_usd == pytest.approx(settings.lambda_cost_usd(per_chip * chips, 3008, good.blocks + 1))
    assert report.totals["est_usd"] == pytest.approx(2 * good.est_usd)
    assert dry_run(settings, bench, bench_preset="huge").measurement is None  # a preset it did not measure


def test_estimate_from_the_ledger_block_durations_wins(inputs, tmp_path) -> None:
    settings = inputs
    from inference.model_cache import champion

    version = str(champion(settings)["version"])
    blocks = block_chip_counts(settings, SIDE, SIDE, 2)
    now = utcnow()
    with session(settings) as s:
        scene, _ = repository.register_scene(
            s, "a" * 64, "s3://elsewhere/old.tif", 1, width=SIDE, height=SIDE
        )
        rows = [
            {"block_index": i, "row_off": 0, "col_off": 0, "height": 1, "width": 1}
            for i in range(len(blocks))
        ]
        planned = repository.plan_blocks(s, scene, version, 2, rows)
        for block in planned[:2]:  # two finished blocks, 3 s each
            repository.claim_block(s, block)
            repository.record_block(
                s,
                block,
                output_uri="s3://x/y",
                started_at=now - timedelta(seconds=3),
                finished_at=now,
                seconds=3.0,
                run_id=None,
            )
    bench = tmp_path / "bench.json"
    bench.write_text(json.dumps({"presets": {"large": {"optimized": {"ms_per_chip": 1.0}}}, "chip": 128}))
    before = table_counts(settings.ledger_url)
    report = dry_run(settings, bench_report=bench)
    assert table_counts(settings.ledger_url) == before
    m = report.measurement
    assert m is not None and m.source == "ledger" and "2 predicted block(s)" in m.detail
    assert m.seconds_per_chip == pytest.approx(6.0 / (blocks[0] + blocks[1]))
    good = next(r for r in report.scenes if r.verdict == "ok")
    assert good.est_seconds == pytest.approx(m.seconds_per_chip * sum(blocks))


def test_scenes_the_ledger_knows_are_marked_and_the_predicted_left_out_of_the_totals(
    inputs, s3_bucket
) -> None:
    """good-0 is in the ledger at its own key (found by key and ETag) with the champion's
    prediction; good-1's bytes are in it under another key (found by sha256), not yet predicted."""
    settings = inputs
    from inference.model_cache import champion

    version = str(champion(settings)["version"])
    listed = {o.uri.rsplit("/", 1)[-1]: o for o in list_objects(settings.input_uri)}
    now = utcnow()
    with session(settings) as s:
        g0 = listed["good-0.tif"]
        done, _ = repository.register_scene(s, scene_identity(g0.uri)[0], g0.uri, g0.size, etag=g0.etag)
        repository.transition(s, done, SceneStatus.validated)
        repository.claim_for_prediction(s, done, "earlier-run", 60.0)
        repository.record_prediction(
            s,
            done,
            version,
            input_sha256=done.sha256,
            class_uri="s3://out/classes.tif",
            started_at=now - timedelta(seconds=1),
            finished_at=now,
        )
        copy_sha, copy_size = scene_identity(listed["good-1.tif"].uri)
        repository.register_scene(s, copy_sha, "s3://elsewhere/copy.tif", copy_size)
    before_rows, before_keys = table_counts(settings.ledger_url), bucket_keys(s3_bucket)
    report = dry_run(settings)
    assert table_counts(settings.ledger_url) == before_rows
    assert bucket_keys(s3_bucket) == before_keys

    rows = {r.uri.rsplit("/", 1)[-1]: r for r in report.scenes}
    assert (rows["good-0.tif"].ledger, rows["good-1.tif"].ledger) == (PREDICTED, KNOWN)
    assert rows["rgb.tif"].ledger is None  # not valid: not looked up
    t = report.totals
    assert (t["ok"], t["to_predict"], t["already_predicted"]) == (2, 1, 1)
    assert t["blocks"] == rows["good-1.tif"].blocks and t["chips"] == rows["good-1.tif"].chips
    assert t["area_km2"] == pytest.approx(rows["good-1.tif"].area_km2)
    assert "ok (already predicted)" in format_report(report)


def test_cli_dry_run_json_creates_no_ledger(tmp_path, capsys) -> None:
    from setup.cli import main
    from tests.data.builders import write_naip

    write_naip(tmp_path / "in" / "a.tif", size=64)
    ledger = tmp_path / "ledger.db"
    rc = main(
        [
            "infer",
            "--dry-run",
            "--json",
            "--ledger-url",
            f"sqlite:///{ledger}",
            "--bench",
            str(tmp_path / "no-bench.json"),
            f"inference.input_uri={storage.to_uri(tmp_path / 'in')}",
            f"storage.registry_uri={storage.to_uri(tmp_path / 'registry')}",
        ]
    )
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert [s["verdict"] for s in out["scenes"]] == ["ok"]
    assert out["measurement"] is None and out["no_measurement"] == NO_MEASUREMENT
    assert out["totals"]["est_usd"] is None and out["model_version"] is None
    assert not ledger.exists()

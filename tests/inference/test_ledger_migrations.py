"""Alembic migrations of the ledger: one head, models == migrations, a clean round trip."""

from __future__ import annotations

import ast
import io
import re
import subprocess
import sys
from contextlib import redirect_stdout
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from inference.ledger import db
from inference.ledger import repository as repo
from inference.ledger.models import Base, SceneStatus

VERSIONS = db.MIGRATIONS_DIR / "versions"
REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(params=["sqlite", "postgres"])
def fresh_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database on each backend."""
    if request.param == "postgres":
        return request.getfixturevalue("postgres_url")
    return f"sqlite:///{tmp_path / 'ledger.db'}"


def schema_diff(url: str, metadata: sa.MetaData = Base.metadata) -> list:
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            return compare_metadata(context, metadata)
    finally:
        engine.dispose()


def table_names(url: str) -> set[str]:
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        inspector = sa.inspect(engine)
        return set(inspector.get_table_names()) | set(inspector.get_view_names())
    finally:
        engine.dispose()


def test_single_head() -> None:
    heads = db.head_revisions()
    assert len(heads) == 1, f"multiple heads {heads}: add a merge revision (alembic merge heads)"


def test_revision_files_are_dated_and_explain_why() -> None:
    files = sorted(VERSIONS.glob("*.py"))
    assert files
    for path in files:
        assert re.match(r"\d{4}_\d{2}_\d{2}_[0-9a-f]+_\w+\.py$", path.name), path.name
        docstring = ast.get_docstring(ast.parse(path.read_text())) or ""
        assert "Why" in docstring and "<explain" not in docstring, (
            f"{path.name}: explain why in the docstring"
        )


def test_upgrade_head_matches_the_models(fresh_url: str) -> None:
    db.migrate(fresh_url)
    assert db.current_revision(fresh_url) == db.head_revisions()[0]
    assert schema_diff(fresh_url) == []
    assert {"scenes", "scene_sources", "runs", "predictions", "metrics", "quarantine", "model_changes"} <= (
        table_names(fresh_url)
    )


def test_schema_comparison_is_not_vacuous(fresh_url: str) -> None:
    """Guard the test above: a model change the migrations lack is reported."""
    db.migrate(fresh_url)
    changed = sa.MetaData(naming_convention=Base.metadata.naming_convention)
    for table in Base.metadata.sorted_tables:
        table.to_metadata(changed)
    changed.tables["scenes"].append_column(sa.Column("cloud_cover", sa.Float()))
    changed.tables["runs"].c.model_version.type = sa.String(16)
    kinds = {diff[0] if isinstance(diff, tuple) else diff[0][0] for diff in schema_diff(fresh_url, changed)}
    assert {"add_column", "modify_type"} <= kinds


def test_postgres_metric_uniqueness_uses_partial_indexes(postgres_url: str) -> None:
    db.migrate(postgres_url)
    engine = sa.create_engine(postgres_url, poolclass=sa.pool.NullPool)
    try:
        indexes = {i["name"]: i for i in sa.inspect(engine).get_indexes("metrics")}
    finally:
        engine.dispose()
    assert indexes["uq_metrics_run_level"]["unique"]
    assert "scene_id IS NULL" in indexes["uq_metrics_run_level"]["dialect_options"]["postgresql_where"]
    assert "scene_id IS NOT NULL" in indexes["uq_metrics_scene_level"]["dialect_options"]["postgresql_where"]


def test_downgrade_with_data_then_upgrade_again(fresh_url: str) -> None:
    db.migrate(fresh_url)
    engine = db.make_engine(fresh_url)
    try:
        with db.session_scope(engine) as session:
            scene, _ = repo.register_scene(session, "0" * 64, "s3://b/a.tif", 1)
            repo.transition(session, scene, SceneStatus.validated)
            repo.claim_for_prediction(session, scene, "exec-1", 0.0)
            run, _ = repo.start_run(session, "exec-1", model_version="v1")
            now = datetime.now(UTC)
            repo.record_prediction(
                session,
                scene,
                "v1",
                input_sha256=scene.sha256,
                class_uri="s3://o/c.tif",
                started_at=now,
                finished_at=now,
                run_id=run.id,
            )
            repo.record_metrics(session, run.id, None, "v1", [("psi_class", "", 0.1)])
            repo.record_metrics(session, run.id, scene.id, "v1", [("class_fraction", "water", 0.2)])
    finally:
        engine.dispose()

    db.downgrade(fresh_url)
    assert db.current_revision(fresh_url) is None
    assert table_names(fresh_url) <= {"alembic_version"}

    db.migrate(fresh_url)
    assert schema_diff(fresh_url) == []
    engine = db.make_engine(fresh_url)
    try:
        with db.session_scope(engine) as session:
            _, created = repo.register_scene(session, "0" * 64, "s3://b/a.tif", 1)
            assert created  # the downgrade really dropped the data
    finally:
        engine.dispose()


def test_migrate_from_any_cwd_with_ledger_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"sqlite:///{tmp_path / 'env.db'}"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(db.LEDGER_URL_ENV, url)
    db.migrate()
    assert db.current_revision(url) == db.head_revisions()[0]
    monkeypatch.delenv(db.LEDGER_URL_ENV)
    with pytest.raises(db.LedgerConfigError, match="LEDGER_URL"):
        db.migrate()


def test_alembic_cli_with_the_ini(tmp_path: Path) -> None:
    """``alembic -c inference/ledger/alembic.ini upgrade head`` works from another directory."""
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    result = subprocess.run(
        [sys.executable, "-m", "alembic", "-c", str(db.ALEMBIC_INI), "upgrade", "head"],
        cwd=tmp_path,
        env={"LEDGER_URL": url, "PYTHONPATH": str(REPO_ROOT), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert db.current_revision(url) == db.head_revisions()[0]


def test_offline_sql_for_postgres_needs_no_database() -> None:
    """``alembic upgrade head --sql`` renders the DDL a DBA can review."""
    config = db.alembic_config("postgresql+psycopg2://nobody:secret@db.invalid:5432/ledger")
    out = io.StringIO()
    config.stdout = out
    with redirect_stdout(out):
        command.upgrade(config, "head", sql=True)
    sql = out.getvalue()
    assert "CREATE TABLE scenes" in sql
    assert "WHERE scene_id IS NULL" in sql
    assert "secret" not in sql


def test_redact_url_hides_the_password() -> None:
    assert "secret" not in db.redact_url("postgresql+psycopg2://u:secret@h/db")


def test_ensure_schema_migrates_once_and_overlapping_callers_agree(fresh_url: str) -> None:
    from concurrent.futures import ThreadPoolExecutor

    assert db.current_revision(fresh_url) is None
    with ThreadPoolExecutor(3) as pool:  # three runs starting on a fresh ledger at once
        migrated = list(pool.map(lambda _: db.ensure_schema(fresh_url), range(3)))
    assert any(migrated)
    assert db.current_revision(fresh_url) in db.head_revisions()
    assert db.ensure_schema(fresh_url) is False  # at head: nothing to do

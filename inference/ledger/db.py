"""Engines, sessions and migrations of the ledger. Nothing is built at import time.

The URL comes from the caller (the Lambda builds the RDS URL from Secrets Manager; Hydra
config supplies the embedded SQLite one) or from the ``LEDGER_URL`` environment variable.
URLs carry passwords, so anything logged goes through :func:`redact_url` first.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

log = logging.getLogger(__name__)

LEDGER_URL_ENV = "LEDGER_URL"
# The one Postgres driver the project installs (psycopg2-binary): ledger, Alembic, tests, compose.
POSTGRES_DRIVER = "postgresql+psycopg2"
PACKAGE_DIR = Path(__file__).resolve().parent
MIGRATIONS_DIR = PACKAGE_DIR / "migrations"
ALEMBIC_INI = PACKAGE_DIR / "alembic.ini"
# Same as alembic.ini; repeated so programmatic use does not depend on the ini being shipped.
FILE_TEMPLATE = "%%(year)d_%%(month).2d_%%(day).2d_%%(rev)s_%%(slug)s"


class LedgerConfigError(RuntimeError):
    """The ledger's database URL is missing or unusable."""


def resolve_url(url: str | sa.URL | None = None) -> str:
    """The explicit ``url`` if given, else ``$LEDGER_URL``.

    Raises:
        LedgerConfigError: neither is set.
    """
    if url is not None:
        return with_driver(url.render_as_string(hide_password=False) if isinstance(url, sa.URL) else str(url))
    env = os.environ.get(LEDGER_URL_ENV)
    if not env:
        raise LedgerConfigError(
            f"no ledger database URL: pass one explicitly or set {LEDGER_URL_ENV} "
            f"(e.g. sqlite:///ledger.db or {POSTGRES_DRIVER}://user@host:5432/ledger)"
        )
    return with_driver(env)


def with_driver(url: str) -> str:
    """``url`` with the project's Postgres driver named: ``postgresql://`` becomes
    ``postgresql+psycopg2://``; any other Postgres driver is refused with a clear error
    (only psycopg2 is installed). Other databases pass through unchanged.

    Raises:
        LedgerConfigError: a Postgres URL names a driver other than psycopg2.
    """
    parsed = sa.make_url(url)
    if parsed.get_backend_name() != "postgresql" or parsed.drivername == POSTGRES_DRIVER:
        return url
    if parsed.drivername != "postgresql":
        raise LedgerConfigError(
            f"the ledger URL names the driver {parsed.drivername!r}, but the project installs only "
            f"psycopg2: write {POSTGRES_DRIVER}://... (got {redact_url(parsed)})"
        )
    return parsed.set(drivername=POSTGRES_DRIVER).render_as_string(hide_password=False)


def redact_url(url: str | sa.URL) -> str:
    """``url`` with its password masked, safe for logs and error messages."""
    return sa.make_url(url).render_as_string(hide_password=True)


def make_engine(url: str | sa.URL | None = None, **kwargs: Any) -> sa.Engine:
    """An engine for the ledger at ``url`` (or ``$LEDGER_URL``).

    SQLite connections get ``foreign_keys=ON`` (off by default in SQLite, which would make the
    FKs decorative), WAL journaling for file databases (readers, such as the report, do not block
    the writer) and a busy timeout. Postgres connections are pre-pinged, because a warm Lambda
    can hold a pooled connection that RDS has since closed.
    """
    resolved = sa.make_url(resolve_url(url))
    if resolved.get_backend_name() == "sqlite":
        in_memory = resolved.database in (None, "", ":memory:")
        if in_memory:
            # Each connection to :memory: is a new, empty database: share one connection.
            kwargs.setdefault("poolclass", sa.pool.StaticPool)
            kwargs.setdefault("connect_args", {"check_same_thread": False})
        engine = sa.create_engine(resolved, **kwargs)

        @sa.event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            cursor = dbapi_conn.cursor()
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=5000")
            if not in_memory:
                cursor.execute("PRAGMA journal_mode=WAL")
            cursor.close()

    else:
        kwargs.setdefault("pool_pre_ping", True)
        engine = sa.create_engine(resolved, **kwargs)
    log.debug("ledger engine for %s", redact_url(resolved))
    return engine


def session_factory(engine: sa.Engine) -> sessionmaker[Session]:
    """Sessions that keep loaded attributes after commit, so handlers can return them."""
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def session_scope(engine: sa.Engine) -> Iterator[Session]:
    """One transaction: commit when the block succeeds, roll back (and re-raise) when it fails."""
    session = session_factory(engine)()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


# ---------------------------------------------------------------------------------------------
# Migrations
# ---------------------------------------------------------------------------------------------


def alembic_config(url: str | sa.URL | None = None) -> Any:
    """An Alembic ``Config`` for the ledger, independent of the current directory.

    The URL travels in ``config.attributes`` rather than ``sqlalchemy.url``: it never passes
    through configparser (which chokes on ``%`` in passwords) and never lands in a file.
    """
    from alembic.config import Config

    config = Config(str(ALEMBIC_INI)) if ALEMBIC_INI.exists() else Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("file_template", FILE_TEMPLATE)
    config.attributes["url"] = resolve_url(url)
    # Programmatic callers own logging; env.py must not reconfigure it from the ini.
    config.attributes["configure_logger"] = False
    return config


def migrate(url: str | sa.URL | None = None, revision: str = "head") -> None:
    """Upgrade the ledger at ``url`` (or ``$LEDGER_URL``) to ``revision`` (``alembic upgrade``)."""
    from alembic import command

    config = alembic_config(url)
    log.info("migrating ledger %s to %s", redact_url(config.attributes["url"]), revision)
    command.upgrade(config, revision)


#: Postgres advisory-lock key held while a process step migrates (overlapping runs wait for it).
MIGRATION_LOCK_KEY = 0x4C414E44  # "LAND"
_MIGRATION_THREAD_LOCK = threading.Lock()


def ensure_schema(url: str | sa.URL | None = None) -> bool:
    """Migrate the ledger at ``url`` to head unless it is there already; True when it migrated.

    The ``process`` step calls it at the start of every run, so a fresh RDS ledger gets its
    schema on the first run and a new image's migrations apply on its first run (one query when
    nothing is to do). On Postgres an advisory lock serialises overlapping runs' migrations.
    """
    heads = set(head_revisions())
    if current_revision(url) in heads:
        return False
    resolved = resolve_url(url)
    if not resolved.startswith("postgresql"):  # the embedded SQLite ledger: one host, one lock
        with _MIGRATION_THREAD_LOCK:
            if current_revision(resolved) in heads:
                return False
            migrate(resolved)
        return True
    engine = sa.create_engine(resolved, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": MIGRATION_LOCK_KEY})
            try:
                if current_revision(resolved) not in heads:  # another run may have migrated meanwhile
                    migrate(resolved)
            finally:
                conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": MIGRATION_LOCK_KEY})
    finally:
        engine.dispose()
    return True


def downgrade(url: str | sa.URL | None = None, revision: str = "base") -> None:
    """Downgrade the ledger at ``url`` to ``revision`` (default: drop everything)."""
    from alembic import command

    config = alembic_config(url)
    log.info("downgrading ledger %s to %s", redact_url(config.attributes["url"]), revision)
    command.downgrade(config, revision)


def current_revision(url: str | sa.URL | None = None) -> str | None:
    """The revision the database at ``url`` is at (None when unmigrated)."""
    from alembic.runtime.migration import MigrationContext

    engine = sa.create_engine(resolve_url(url), poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()


def head_revisions() -> tuple[str, ...]:
    """The heads of the migration scripts (exactly one, unless someone forgot to merge)."""
    from alembic.script import ScriptDirectory

    return tuple(ScriptDirectory(str(MIGRATIONS_DIR)).get_heads())

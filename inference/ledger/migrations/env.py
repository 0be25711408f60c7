"""Alembic environment of the inference ledger.

The URL comes from ``config.attributes["url"]`` (set by :func:`inference.ledger.db.migrate`),
else a ``sqlalchemy.url`` in the ini, else ``$LEDGER_URL``. A caller may instead hand over an
open connection in ``config.attributes["connection"]`` (tests do).
"""

from __future__ import annotations

import logging.config

import sqlalchemy as sa
from alembic import context

from inference.ledger.db import resolve_url
from inference.ledger.models import Base

config = context.config
target_metadata = Base.metadata

# Only the CLI configures logging from the ini; programmatic callers keep their own setup
# (fileConfig would otherwise disable every logger that already exists).
if config.config_file_name is not None and config.attributes.get("configure_logger", True):
    logging.config.fileConfig(config.config_file_name, disable_existing_loggers=False)


def _url() -> str:
    return resolve_url(config.attributes.get("url") or config.get_main_option("sqlalchemy.url") or None)


def _configure(**kwargs: object) -> None:
    dialect = kwargs.pop("dialect_name")
    context.configure(
        target_metadata=target_metadata,
        compare_type=True,
        # SQLite cannot ALTER most things; batch mode rebuilds the table instead.
        render_as_batch=dialect == "sqlite",
        **kwargs,
    )


def run_migrations_offline() -> None:
    """Emit SQL to stdout (``alembic upgrade head --sql``) without a database."""
    url = _url()
    _configure(
        url=url,
        dialect_name=sa.make_url(url).get_backend_name(),
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


def _run(connection: sa.Connection) -> None:
    _configure(connection=connection, dialect_name=connection.dialect.name)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    """Migrate a live database."""
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    # A plain engine, deliberately without the app's SQLite ``foreign_keys=ON``: a batch
    # migration drops and recreates tables, which with FK enforcement on would cascade-delete
    # child rows (SQLite's own guidance is to disable FKs around table rebuilds).
    engine = sa.create_engine(_url(), poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as connection:
            _run(connection)
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()

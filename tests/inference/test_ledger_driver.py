"""One Postgres driver: psycopg2 (issue 16). URLs without a driver get it; other drivers are refused."""

from __future__ import annotations

import importlib.util

import pytest
import sqlalchemy as sa

from inference.ledger import db


def test_postgres_driver_is_psycopg2_and_installed() -> None:
    assert db.POSTGRES_DRIVER == "postgresql+psycopg2"
    assert importlib.util.find_spec("psycopg2") is not None
    # psycopg 3 is not installed: nothing can silently depend on a second driver.
    assert importlib.util.find_spec("psycopg") is None


def test_plain_postgresql_url_gets_psycopg2_and_keeps_the_password() -> None:
    url = sa.make_url(db.resolve_url("postgresql://u:p%40ss@h:5433/ledger"))
    assert (url.drivername, url.password, url.port, url.database) == (
        "postgresql+psycopg2",
        "p@ss",
        5433,
        "ledger",
    )


def test_other_postgres_driver_is_refused_clearly() -> None:
    with pytest.raises(db.LedgerConfigError, match=r"psycopg2.*postgresql\+psycopg2://") as err:
        db.resolve_url("postgresql+psycopg://u:secret@h/ledger")
    assert "secret" not in str(err.value)


def test_sqlite_url_unchanged() -> None:
    assert db.resolve_url("sqlite:///x.db") == "sqlite:///x.db"

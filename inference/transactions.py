"""Ledger transactions of the chain's steps: one engine per URL per process (reused by warm
Lambda calls), a transaction retried whole on transient faults, a run's deadline, and the
scene a manifest item names."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import TypeVar

import sqlalchemy as sa
from sqlalchemy.orm import Session

from inference import retry
from inference.errors import ChainError
from inference.ledger import db
from inference.ledger.models import Scene, utcnow
from inference.settings import ChainSettings

T = TypeVar("T")


@functools.lru_cache(maxsize=8)
def _engine(url: str) -> sa.Engine:
    return db.make_engine(url)


def engine(settings: ChainSettings) -> sa.Engine:
    """The ledger engine for ``settings`` (one per URL per process)."""
    return _engine(settings.resolved_ledger_url())


@contextmanager
def session(settings: ChainSettings) -> Iterator[Session]:
    """One ledger transaction."""
    with db.session_scope(engine(settings)) as s:
        yield s


def transaction(settings: ChainSettings, what: str, work: Callable[[Session], T]) -> T:
    """``work(session)`` in one ledger transaction, retried whole on transient database faults."""

    def attempt() -> T:
        with session(settings) as s:
            return work(s)

    return retry.call(attempt, what)


def deadline(settings: ChainSettings) -> datetime:
    """The deadline a run gets each time it makes progress."""
    return utcnow() + timedelta(seconds=settings.run_stale_after_s)


def get_scene(s: Session, scene_id: int) -> Scene:
    """The ledger scene of a manifest item; a :class:`ChainError` when the ledger lacks it."""
    scene = s.get(Scene, scene_id)
    if scene is None:
        raise ChainError(f"scene {scene_id} is not in the ledger; the manifest does not match it")
    return scene

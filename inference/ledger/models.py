"""ORM models of the inference ledger: scenes, their source URIs, runs, predictions, blocks,
shadow comparisons, metrics.

The same models (and the same Alembic migrations) run on Postgres (RDS, the full stack) and
SQLite (the embedded default), so every type here is portable:

- enums are stored as ``VARCHAR`` + a named ``CHECK`` constraint (no native Postgres enum types,
  which would need ``CREATE TYPE``/``DROP TYPE`` choreography in every migration);
- JSON is ``JSON`` everywhere and ``JSONB`` on Postgres;
- timestamps are timezone-aware and always UTC (:class:`UTCDateTime` re-attaches the zone on
  SQLite, which stores none).

Two read-only views, created by the migrations rather than the ORM, serve the dashboards:
``quarantine`` (quarantined scenes with their reason) and ``model_changes`` (runs where the
champion model version changed, for Grafana annotations).
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any, ClassVar

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

# Constraint names must be deterministic: Alembic can only drop/alter what it can name, and
# SQLite batch migrations recreate tables by constraint name.
NAMING_CONVENTION: dict[str, str] = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

#: Portable JSON: JSONB on Postgres (indexable, compact), JSON text elsewhere.
# none_as_null: Python None is SQL NULL, not the JSON literal null (IS NULL must find it).
JSONType = sa.JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql")

SHA256_LENGTH = 64


def utcnow() -> datetime:
    """The current time, timezone-aware in UTC (the only zone the ledger stores)."""
    return datetime.now(UTC)


class UTCDateTime(sa.types.TypeDecorator[datetime]):
    """``TIMESTAMP WITH TIME ZONE`` that always hands back aware UTC datetimes.

    Postgres keeps the zone itself; SQLite stores naive text, so values are normalised to UTC on
    the way in and the zone is re-attached on the way out. Naive datetimes are rejected: they
    are ambiguous and are how "off by five hours" bugs get into a ledger.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: the ledger stores timezone-aware UTC times only")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class SceneStatus(enum.StrEnum):
    """Lifecycle of an input scene. Transitions are listed in :data:`ALLOWED_TRANSITIONS`."""

    discovered = "discovered"  # seen in the bucket, hashed, not yet validated
    validated = "validated"  # a readable NAIP-like raster; waiting for a prediction
    quarantined = "quarantined"  # rejected input (corrupt, wrong bands, no CRS...); see error
    predicting = "predicting"  # claimed by an infer attempt (stays here if the Lambda crashes)
    predicted = "predicted"  # a prediction exists for at least one model version
    failed = "failed"  # an attempt failed; retried while attempts remain


#: Legal status changes. Staying in the same status is always a no-op, never an error.
ALLOWED_TRANSITIONS: dict[SceneStatus, frozenset[SceneStatus]] = {
    SceneStatus.discovered: frozenset({SceneStatus.validated, SceneStatus.quarantined, SceneStatus.failed}),
    SceneStatus.validated: frozenset({SceneStatus.predicting, SceneStatus.quarantined, SceneStatus.failed}),
    # Quarantine is final for automation; an operator may release a scene (e.g. after a
    # validator bug fix) by sending it back to discovered.
    SceneStatus.quarantined: frozenset({SceneStatus.discovered}),
    SceneStatus.predicting: frozenset({SceneStatus.predicted, SceneStatus.failed, SceneStatus.quarantined}),
    # predicted -> predicting re-predicts with a new model version (a backfill).
    SceneStatus.predicted: frozenset({SceneStatus.predicting}),
    # failed -> predicted: an attempt whose lease expired finished after the takeover failed.
    SceneStatus.failed: frozenset(
        {
            SceneStatus.discovered,
            SceneStatus.validated,
            SceneStatus.predicting,
            SceneStatus.predicted,
            SceneStatus.quarantined,
        }
    ),
}


class BlockStatus(enum.StrEnum):
    """State of one block of a scene's prediction by one model version."""

    pending = "pending"  # planned by process, not yet started
    predicting = "predicting"  # an infer call is on it (stays here if the Lambda dies)
    predicted = "predicted"  # its outputs are written; a second record of it is a no-op
    failed = "failed"  # an attempt failed; a re-run redoes it while attempts remain


class ShadowStatus(enum.StrEnum):
    """State of one scene's shadow comparison (a challenger beside the champion)."""

    predicting = "predicting"  # an execution holds its lease and predicts the challenger's blocks
    compared = "compared"  # the challenger's outputs are written and compared; recorded once
    failed = "failed"  # an attempt failed; a later run's shadow pass may retry it


class RunStatus(enum.StrEnum):
    """State of one state-machine execution."""

    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    abandoned = "abandoned"  # its execution stopped making progress before it closed the run


def _enum_type(enum_cls: type[enum.Enum], name: str) -> sa.Enum:
    # Stored as VARCHAR + CHECK by *value* (not member name), identical on Postgres and SQLite.
    return sa.Enum(
        enum_cls,
        name=name,
        native_enum=False,
        create_constraint=True,
        length=16,
        validate_strings=True,
        values_callable=lambda members: [member.value for member in members],
    )


class Base(DeclarativeBase):
    """Declarative base: naming convention and the Python-type → column-type map."""

    metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        datetime: UTCDateTime(),
        str: sa.Text(),
        int: sa.Integer(),
        float: sa.Float(),
        dict[str, Any]: JSONType,
        list[float]: JSONType,
        SceneStatus: _enum_type(SceneStatus, "scene_status"),
        RunStatus: _enum_type(RunStatus, "run_status"),
        BlockStatus: _enum_type(BlockStatus, "block_status"),
        ShadowStatus: _enum_type(ShadowStatus, "shadow_status"),
    }


class Scene(Base):
    """One input image, identified by the sha256 of its bytes (not the S3 ETag, which is not a
    content hash for multipart uploads and differs for the same bytes uploaded differently)."""

    __tablename__ = "scenes"

    id: Mapped[int] = mapped_column(primary_key=True)
    sha256: Mapped[str] = mapped_column(sa.String(SHA256_LENGTH), unique=True)
    source_uri: Mapped[str]  # the first URI the content was seen at; aliases in scene_sources
    size_bytes: Mapped[int] = mapped_column(sa.BigInteger())
    width: Mapped[int | None]
    height: Mapped[int | None]
    crs: Mapped[str | None]
    # Bounds in the scene's own CRS, plus an optional WGS84 [minlon, minlat, maxlon, maxlat].
    minx: Mapped[float | None]
    miny: Mapped[float | None]
    maxx: Mapped[float | None]
    maxy: Mapped[float | None]
    bbox_wgs84: Mapped[list[float] | None]
    area_km2: Mapped[float | None]
    status: Mapped[SceneStatus] = mapped_column(default=SceneStatus.discovered, index=True)
    error: Mapped[str | None] = mapped_column(sa.String(64))  # machine-readable reason code
    error_message: Mapped[str | None]  # human-readable detail
    attempts: Mapped[int] = mapped_column(default=0)  # prediction attempts so far
    # The execution holding the current prediction attempt, and until when (see claim_for_prediction).
    lease_owner: Mapped[str | None] = mapped_column(sa.String(512))
    lease_expires_at: Mapped[datetime | None]
    discovered_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    predictions: Mapped[list[Prediction]] = relationship(back_populates="scene", lazy="raise")
    sources: Mapped[list[SceneSource]] = relationship(back_populates="scene", lazy="raise")

    def __repr__(self) -> str:
        return f"Scene(id={self.id!r}, sha256={self.sha256[:12]!r}…, status={self.status!r})"


class SceneSource(Base):
    """Every URI a scene's content has been seen at, so a re-listing of the bucket can skip keys
    it already hashed (matched on URI + ETag) and a duplicate upload under another key is
    recorded as an alias instead of a second scene."""

    __tablename__ = "scene_sources"

    id: Mapped[int] = mapped_column(primary_key=True)
    scene_id: Mapped[int] = mapped_column(sa.ForeignKey("scenes.id", ondelete="CASCADE"), index=True)
    uri: Mapped[str] = mapped_column(unique=True)
    etag: Mapped[str | None]  # as listed; only used to notice an overwritten key
    seen_at: Mapped[datetime] = mapped_column(default=utcnow)

    scene: Mapped[Scene] = relationship(back_populates="sources", lazy="raise")


class Run(Base):
    """One execution of the process → infer → observe state machine."""

    __tablename__ = "runs"

    id: Mapped[int] = mapped_column(primary_key=True)
    execution_id: Mapped[str] = mapped_column(sa.String(512), unique=True)  # SFN execution name/ARN
    status: Mapped[RunStatus] = mapped_column(default=RunStatus.running)
    model_version: Mapped[str | None] = mapped_column(sa.String(128))
    started_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    finished_at: Mapped[datetime | None]
    scenes_discovered: Mapped[int] = mapped_column(default=0)
    scenes_quarantined: Mapped[int] = mapped_column(default=0)
    scenes_predicted: Mapped[int] = mapped_column(default=0)
    scenes_failed: Mapped[int] = mapped_column(default=0)
    error: Mapped[str | None]  # the Catch path's error/cause
    # Moved forward on progress; a run still running past it is closed as abandoned.
    deadline_at: Mapped[datetime | None]

    predictions: Mapped[list[Prediction]] = relationship(back_populates="run", lazy="raise")
    metrics: Mapped[list[Metric]] = relationship(back_populates="run", lazy="raise")

    def __repr__(self) -> str:
        return f"Run(id={self.id!r}, execution_id={self.execution_id!r}, status={self.status!r})"


class Prediction(Base):
    """The outputs of one model version on one scene; at most one row per (scene, model)."""

    __tablename__ = "predictions"
    __table_args__ = (sa.UniqueConstraint("scene_id", "model_version"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    scene_id: Mapped[int] = mapped_column(sa.ForeignKey("scenes.id", ondelete="CASCADE"))
    model_version: Mapped[str] = mapped_column(sa.String(128), index=True)
    input_sha256: Mapped[str] = mapped_column(sa.String(SHA256_LENGTH))  # bytes the model read
    class_uri: Mapped[str]
    confidence_uri: Mapped[str | None]
    stac_uri: Mapped[str | None]
    started_at: Mapped[datetime]
    finished_at: Mapped[datetime]
    seconds: Mapped[float]
    # The model version's encoder, from the served artifact's metadata (encoder_weights): the
    # encoder registry name and version, or the source (random-init, catalog name, file) and no
    # version; NULL when the artifact records none.
    encoder_name: Mapped[str | None]
    encoder_version: Mapped[str | None] = mapped_column(sa.String(128))
    # SET NULL: deleting a run's bookkeeping must not delete the predictions it made.
    run_id: Mapped[int | None] = mapped_column(sa.ForeignKey("runs.id", ondelete="SET NULL"), index=True)

    scene: Mapped[Scene] = relationship(back_populates="predictions", lazy="raise")
    run: Mapped[Run | None] = relationship(back_populates="predictions", lazy="raise")


class Block(Base):
    """One block of a scene's prediction by a model version: the unit one infer call predicts.

    ``process`` plans the blocks (:func:`inference.predict.plan_blocks`); the scene is
    predicted (its :class:`Prediction` row) once every block is and the scene's outputs are
    assembled from theirs. The window is the block's core in scene pixels.
    """

    __tablename__ = "blocks"
    __table_args__ = (sa.UniqueConstraint("scene_id", "model_version", "block_index"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    scene_id: Mapped[int] = mapped_column(sa.ForeignKey("scenes.id", ondelete="CASCADE"), index=True)
    model_version: Mapped[str] = mapped_column(sa.String(128))
    block_index: Mapped[int]
    block_chips: Mapped[int]  # chips a side the plan used (the block grid it belongs to)
    row_off: Mapped[int]
    col_off: Mapped[int]
    height: Mapped[int]
    width: Mapped[int]
    status: Mapped[BlockStatus] = mapped_column(default=BlockStatus.pending)
    attempts: Mapped[int] = mapped_column(default=0)
    error: Mapped[str | None] = mapped_column(sa.String(64))
    error_message: Mapped[str | None]
    output_uri: Mapped[str | None]  # the block's outputs (removed once the scene is assembled)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    seconds: Mapped[float | None]  # prediction time of the attempt that recorded it
    run_id: Mapped[int | None] = mapped_column(sa.ForeignKey("runs.id", ondelete="SET NULL"), index=True)

    @property
    def window(self) -> tuple[int, int, int, int]:
        return (self.row_off, self.col_off, self.height, self.width)


class ShadowComparison(Base):
    """A challenger's prediction of one scene, compared with the champion's; never served.

    One row per (scene, champion version, challenger version), claimed under a lease like a
    scene's prediction (the execution's shadow blocks share it). Once ``compared``, the
    agreement is recorded; per-class IoU and class-area deltas are scene metrics
    (``shadow_iou``, ``shadow_area_delta``) of the run that compared it, under the challenger's
    version.
    """

    __tablename__ = "shadow_comparisons"
    __table_args__ = (sa.UniqueConstraint("scene_id", "champion_version", "challenger_version"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    scene_id: Mapped[int] = mapped_column(sa.ForeignKey("scenes.id", ondelete="CASCADE"), index=True)
    champion_version: Mapped[str] = mapped_column(sa.String(128))
    challenger_version: Mapped[str] = mapped_column(sa.String(128), index=True)
    status: Mapped[ShadowStatus] = mapped_column(default=ShadowStatus.predicting)
    attempts: Mapped[int] = mapped_column(default=0)
    lease_owner: Mapped[str | None] = mapped_column(sa.String(512))
    lease_expires_at: Mapped[datetime | None]
    error: Mapped[str | None] = mapped_column(sa.String(64))
    error_message: Mapped[str | None]
    pixels: Mapped[int | None] = mapped_column(sa.BigInteger())  # valid pixels compared
    agreement: Mapped[float | None]  # share of them where both models give the same class
    seconds: Mapped[float | None]  # the challenger's prediction time (its blocks' sum)
    class_uri: Mapped[str | None]  # the challenger's class COG, under the shadow prefix
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    compared_at: Mapped[datetime | None]
    run_id: Mapped[int | None] = mapped_column(sa.ForeignKey("runs.id", ondelete="SET NULL"), index=True)


class Metric(Base):
    """One named number of a run (``scene_id`` NULL) or of a scene within a run.

    Uniqueness is (run_id, scene_id, name, key). SQL treats NULLs as distinct, so a plain unique
    constraint would let run-level rows duplicate; instead two partial unique indexes cover the
    two cases. Partial indexes (and ``ON CONFLICT ... WHERE``) work the same on Postgres and
    SQLite, unlike ``NULLS NOT DISTINCT`` (Postgres ≥ 15 only).
    """

    __tablename__ = "metrics"
    __table_args__ = (
        sa.Index(
            "uq_metrics_scene_level",
            "run_id",
            "scene_id",
            "name",
            "key",
            unique=True,
            postgresql_where=sa.text("scene_id IS NOT NULL"),
            sqlite_where=sa.text("scene_id IS NOT NULL"),
        ),
        sa.Index(
            "uq_metrics_run_level",
            "run_id",
            "name",
            "key",
            unique=True,
            postgresql_where=sa.text("scene_id IS NULL"),
            sqlite_where=sa.text("scene_id IS NULL"),
        ),
        # Dashboards select by metric name over time.
        sa.Index("ix_metrics_name_key_recorded_at", "name", "key", "recorded_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(sa.ForeignKey("runs.id", ondelete="CASCADE"))
    scene_id: Mapped[int | None] = mapped_column(sa.ForeignKey("scenes.id", ondelete="CASCADE"), index=True)
    model_version: Mapped[str] = mapped_column(sa.String(128))
    name: Mapped[str] = mapped_column(sa.String(64))
    key: Mapped[str] = mapped_column(sa.String(128), default="")  # class/band name, '' when none
    value: Mapped[float]
    recorded_at: Mapped[datetime] = mapped_column(default=utcnow)

    run: Mapped[Run] = relationship(back_populates="metrics", lazy="raise")
    scene: Mapped[Scene | None] = relationship(lazy="raise")

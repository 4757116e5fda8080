"""ORM models of the provenance catalog."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from magic141.windows import WINDOW_MODES

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

PRIOR_SOURCES = ("user", "generate", "retrieve")
INDEX_BUILD_STATUSES = ("running", "published", "unchanged", "failed")
BATCH_STATUSES = ("running", "done", "failed", "interrupted")
ROW_STATUSES = ("pending", "done", "skipped", "failed", "rejected")


def one_of(column: str, values: tuple[str, ...]) -> str:
    """SQL check that ``column`` holds one of ``values``."""
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


def new_id() -> str:
    """Return a fresh video id (uuid4 hex)."""
    return uuid.uuid4().hex


def utcnow() -> datetime:
    """Return the current time as an aware UTC datetime."""
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware datetime stored as UTC; SQLite's naive values come back as UTC."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}; pass a timezone-aware datetime")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class Base(DeclarativeBase):
    """Declarative base with deterministic constraint names."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    _private_columns: tuple[str, ...] = ()  # left out of :meth:`as_dict`

    def as_dict(self) -> dict[str, Any]:
        """The row as a JSON-ready dict: every public column, times in ISO 8601."""
        row = {}
        for name in self.__table__.columns.keys():
            if name not in self._private_columns:
                value = getattr(self, name)
                row[name] = value.isoformat() if isinstance(value, datetime) else value
        return row


class Video(Base):
    """One generated video and everything needed to reproduce it."""

    __tablename__ = "videos"
    __table_args__ = (
        CheckConstraint(one_of("prior_source", PRIOR_SOURCES), name="prior_source"),
        CheckConstraint(one_of("windows_mode", WINDOW_MODES), name="windows_mode"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True, default=utcnow)
    prompt: Mapped[str] = mapped_column(Text)
    negative_prompt: Mapped[str | None] = mapped_column(Text)
    seed: Mapped[int] = mapped_column(BigInteger)
    prior_source: Mapped[str] = mapped_column(String(16))
    prior_image_path: Mapped[str] = mapped_column(Text)
    prior_image_sha256: Mapped[str] = mapped_column(String(64))
    preset: Mapped[str] = mapped_column(String(64))
    weights_fingerprint: Mapped[str] = mapped_column(String(64))
    steps: Mapped[int] = mapped_column(Integer)
    guidance: Mapped[float | None] = mapped_column(Float)
    true_cfg: Mapped[float | None] = mapped_column(Float)
    seconds: Mapped[float] = mapped_column(Float)
    window_layout: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    output_path: Mapped[str] = mapped_column(Text, unique=True)
    output_sha256: Mapped[str] = mapped_column(String(64), index=True)
    output_bytes: Mapped[int] = mapped_column(BigInteger)
    frames: Mapped[int] = mapped_column(Integer)
    fps: Mapped[int] = mapped_column(Integer)
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    stage_timings: Mapped[dict[str, float]] = mapped_column(JSON)
    flow_run_id: Mapped[str | None] = mapped_column(String(64))
    library_versions: Mapped[dict[str, str]] = mapped_column(JSON)
    windows_mode: Mapped[str] = mapped_column(String(16), default="chained")
    content_key: Mapped[str | None] = mapped_column(String(64), unique=True)
    prior_details: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    model_details: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # prompt format, distillation (teacher, settings)
    thumbnail_path: Mapped[str | None] = mapped_column(Text)
    batch_id: Mapped[str | None] = mapped_column(ForeignKey("batches.id"), index=True)


class VideoWindow(Base):
    """One rendered window of a video: where in the video it lies and who rendered it."""

    __tablename__ = "video_windows"
    __table_args__ = (UniqueConstraint("video_id", "window_index"),)
    _private_columns = ("id", "video_id")

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    video_id: Mapped[str] = mapped_column(ForeignKey("videos.id", ondelete="CASCADE"), index=True)
    window_index: Mapped[int] = mapped_column(Integer)
    frame_start: Mapped[int] = mapped_column(Integer)
    frame_end: Mapped[int] = mapped_column(Integer)
    latent_start: Mapped[int] = mapped_column(Integer)
    latent_end: Mapped[int] = mapped_column(Integer)
    actor: Mapped[str] = mapped_column(String(64))
    node: Mapped[str] = mapped_column(String(255))
    gpu_id: Mapped[str | None] = mapped_column(String(64))
    seconds: Mapped[float] = mapped_column(Float)
    attempts: Mapped[int] = mapped_column(Integer, default=1)


class IndexBuild(Base):
    """One build of the retrieval index: running, published, failed, or unchanged.

    An ``unchanged`` build found the current version already built from the same corpus with the
    same settings and published nothing; its ``version`` is that current version. Every other
    row's ``version`` is its own (unique among them).
    """

    __tablename__ = "index_builds"
    __table_args__ = (
        CheckConstraint(one_of("status", INDEX_BUILD_STATUSES), name="status"),
        Index(
            "uq_index_builds_version", "version", unique=True,
            sqlite_where=text("status <> 'unchanged'"), postgresql_where=text("status <> 'unchanged'"),
        ),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    version: Mapped[str] = mapped_column(String(64))
    started_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    status: Mapped[str] = mapped_column(String(16), default="running")
    corpus: Mapped[str] = mapped_column(Text)
    index_dir: Mapped[str] = mapped_column(Text)
    model_id: Mapped[str] = mapped_column(String(255))
    dimension: Mapped[int | None] = mapped_column(Integer)
    count: Mapped[int | None] = mapped_column(Integer)
    embedded: Mapped[int | None] = mapped_column(Integer)
    skipped: Mapped[list[dict[str, str]] | None] = mapped_column(JSON)
    index_type: Mapped[str | None] = mapped_column(String(64))
    recall: Mapped[float | None] = mapped_column(Float)
    duration_s: Mapped[float | None] = mapped_column(Float)
    error: Mapped[str | None] = mapped_column(Text)
    flow_run_id: Mapped[str | None] = mapped_column(String(64))


class Batch(Base):
    """One run of a prompt CSV through the bulk flow."""

    __tablename__ = "batches"
    __table_args__ = (CheckConstraint(one_of("status", BATCH_STATUSES), name="status"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    status: Mapped[str] = mapped_column(String(16), default="running")
    csv_path: Mapped[str] = mapped_column(Text)
    csv_sha256: Mapped[str] = mapped_column(String(64), index=True)
    out_dir: Mapped[str] = mapped_column(Text)
    counts: Mapped[dict[str, int] | None] = mapped_column(JSON)
    flow_run_id: Mapped[str | None] = mapped_column(String(64))


class BatchRow(Base):
    """One CSV row of a batch and what became of it."""

    __tablename__ = "batch_rows"
    __table_args__ = (
        UniqueConstraint("batch_id", "row_number"),
        CheckConstraint(one_of("status", ROW_STATUSES), name="status"),
    )
    _private_columns = ("id",)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    batch_id: Mapped[str] = mapped_column(ForeignKey("batches.id", ondelete="CASCADE"), index=True)
    row_number: Mapped[int] = mapped_column(Integer)
    row_key: Mapped[str | None] = mapped_column(String(255))
    status: Mapped[str] = mapped_column(String(16), index=True)
    reason: Mapped[str | None] = mapped_column(Text)
    content_key: Mapped[str | None] = mapped_column(String(64), index=True)
    video_id: Mapped[str | None] = mapped_column(ForeignKey("videos.id"))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    seconds: Mapped[float | None] = mapped_column(Float)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)

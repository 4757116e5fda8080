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
    Integer,
    MetaData,
    String,
    Text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

PRIOR_SOURCES = ("user", "generate", "retrieve")


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


class Video(Base):
    """One generated video and everything needed to reproduce it."""

    __tablename__ = "videos"
    __table_args__ = (
        CheckConstraint("prior_source IN ('user', 'generate', 'retrieve')", name="prior_source"),
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

"""Videos and their windows in the catalog: adding, looking up, listing and exporting them.

:class:`VideoQueries` is the video half of :class:`~tasks.catalog.store.Catalog`. A video is added
with its windows in one transaction (:meth:`~VideoQueries.add_video`); a bulk row's video through
:meth:`~VideoQueries.add_video_once`, which never creates two videos with one content key: when
another writer got there first, its video comes back instead.
"""

from __future__ import annotations

import logging
import numbers
import os
import re
from collections.abc import Iterator
from typing import Any

from sqlalchemy import JSON, BigInteger, Float, Integer, String, and_, or_, select
from sqlalchemy.exc import IntegrityError

from tasks.catalog.errors import CatalogError, short_reason
from tasks.catalog.models import PRIOR_SOURCES, Batch, BatchRow, Video, VideoWindow

logger = logging.getLogger(__name__)

EXPORT_PAGE = 500
WINDOW_FIELDS = tuple(name for name in VideoWindow.__table__.columns.keys() if name not in ("id", "video_id"))
_ID_PREFIX = re.compile(r"[0-9a-f]{1,32}")
_AMBIGUOUS_SHOWN = 5
_COLUMNS = tuple(Video.__table__.columns.keys())
_SETTABLE = frozenset(_COLUMNS) - {"id", "created_at"}
_REQUIRED = (
    frozenset(
        column.key
        for column in Video.__table__.columns
        if not column.nullable and column.default is None
    )
    & _SETTABLE
)
_JSON_SHAPES = {
    "window_layout": list,
    "stage_timings": dict,
    "library_versions": dict,
    "prior_details": dict,
    "model_details": dict,
}


def _coerce(name: str, value: Any) -> Any:
    """Return value as column name's Python type; raise ValueError saying why it does not fit."""
    column_type = Video.__table__.columns[name].type
    if isinstance(column_type, JSON):
        shape = _JSON_SHAPES[name]
        if not isinstance(value, shape):
            raise ValueError(f"{name} must be a {shape.__name__}, got {type(value).__name__}")
        return value
    if isinstance(column_type, Integer):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise ValueError(f"{name} must be an int, got {type(value).__name__}")
        bits = 64 if isinstance(column_type, BigInteger) else 32
        if not -(2 ** (bits - 1)) <= int(value) < 2 ** (bits - 1):
            raise ValueError(f"{name} {value} does not fit a {bits}-bit integer")
        return int(value)
    if isinstance(column_type, Float):
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise ValueError(f"{name} must be a float, got {type(value).__name__}")
        return float(value)
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str):
        raise ValueError(f"{name} must be a str, got {type(value).__name__}")
    return value


def _video_values(fields: dict[str, Any]) -> dict[str, Any]:
    """Check caller-supplied video fields and normalise numbers and paths."""
    unknown = sorted(set(fields) - _SETTABLE)
    if unknown:
        raise CatalogError(
            f"cannot add video: unknown or read-only field(s) {', '.join(unknown)}; "
            f"pass only {', '.join(sorted(_SETTABLE))}"
        )
    missing = sorted(name for name in _REQUIRED if fields.get(name) is None)
    if missing:
        raise CatalogError(
            f"cannot add video: required field(s) {', '.join(missing)} missing or None; "
            f"pass a value for each"
        )
    values: dict[str, Any] = {}
    problems: list[str] = []
    for name, value in fields.items():
        try:
            values[name] = None if value is None else _coerce(name, value)
        except ValueError as exc:
            problems.append(str(exc))
    if problems:
        raise CatalogError(f"cannot add video: {'; '.join(problems)}; fix those values")
    if values["prior_source"] not in PRIOR_SOURCES:
        raise CatalogError(
            f"cannot add video: prior_source {values['prior_source']!r} is invalid; "
            f"pass one of {', '.join(PRIOR_SOURCES)}"
        )
    return values


def _window_values(number: int, window: dict[str, Any]) -> dict[str, Any]:
    """Check one window record: exactly the window fields, of the right types."""
    if set(window) != set(WINDOW_FIELDS):
        missing = sorted(set(WINDOW_FIELDS) - set(window))
        unknown = sorted(set(window) - set(WINDOW_FIELDS))
        raise CatalogError(
            f"cannot add video: window {number} has missing field(s) {missing} and unknown field(s) {unknown}; "
            f"pass exactly {', '.join(WINDOW_FIELDS)}"
        )
    values: dict[str, Any] = {}
    for name, value in window.items():
        column_type = VideoWindow.__table__.columns[name].type
        if value is None and VideoWindow.__table__.columns[name].nullable:
            values[name] = None
        elif isinstance(column_type, Integer) and isinstance(value, numbers.Integral) and not isinstance(value, bool):
            values[name] = int(value)
        elif isinstance(column_type, Float) and isinstance(value, numbers.Real) and not isinstance(value, bool):
            values[name] = float(value)
        elif isinstance(column_type, String) and isinstance(value, str):
            values[name] = value
        else:
            raise CatalogError(
                f"cannot add video: window {number} field {name} has the wrong type ({type(value).__name__}); "
                f"fix the window record"
            )
    return values




class VideoQueries:
    """The video and window queries of a :class:`~tasks.catalog.store.Catalog` (through its ``_session``)."""

    url: str
    _session: Any

    def add_video(self, *, windows: list[dict[str, Any]] | None = None, **fields: Any) -> str:
        """Insert one video row, and its windows' rows, in one transaction; return the video's new id."""
        values = _video_values(fields)
        window_rows = [_window_values(number, window) for number, window in enumerate(windows or [])]
        try:
            with self._session("add a video", write=True) as session:
                video = Video(**values)
                session.add(video)
                session.flush()
                video_id = video.id
                session.add_all(VideoWindow(video_id=video_id, **row) for row in window_rows)
        except IntegrityError as exc:
            raise self._integrity_error(values, exc) from exc
        logger.info("catalogued video %s at %s", video_id, values["output_path"])
        return video_id

    def _integrity_error(self, values: dict[str, Any], exc: IntegrityError) -> CatalogError:
        with self._session("look up a video") as session:
            existing = session.scalar(
                select(Video.id).where(Video.output_path == values["output_path"])
            )
        if existing is not None:
            return CatalogError(
                f"output path {values['output_path']!r} is already catalogued as video "
                f"{existing}; write the new video to another path"
            )
        if values.get("content_key") is not None:
            with self._session("look up a video") as session:
                same_content = session.scalar(
                    select(Video.id).where(Video.content_key == values["content_key"])
                )
            if same_content is not None:
                return CatalogError(
                    f"content key {values['content_key']} is already catalogued as video "
                    f"{same_content}; reuse that video instead of adding another"
                )
        batch_id = values.get("batch_id")
        if batch_id is not None:
            with self._session("look up a batch") as session:
                batch_exists = session.get(Batch, batch_id) is not None
            if not batch_exists:
                return CatalogError(
                    f"batch {batch_id!r} is not in catalog {self.url}; start the batch before adding "
                    f"its videos, or leave batch_id out"
                )
        return CatalogError(
            f"cannot add video to catalog {self.url}: {short_reason(exc)}; check the field values"
        )

    def video_windows(self, video_id: str) -> list[dict[str, Any]]:
        """The windows recorded for a video (exact id), in window order."""
        with self._session("list a video's windows") as session:
            rows = session.scalars(
                select(VideoWindow).where(VideoWindow.video_id == video_id).order_by(VideoWindow.window_index)
            ).all()
            return [row.as_dict() for row in rows]

    def get_video(self, id_or_prefix: str) -> dict[str, Any]:
        """Return the video whose id is, or uniquely starts with, id_or_prefix."""
        prefix = id_or_prefix.strip().lower()
        if not _ID_PREFIX.fullmatch(prefix):
            raise CatalogError(
                f"no video with id {id_or_prefix!r}: ids are 1 to 32 hex characters; "
                f"list the catalog to find the id"
            )
        with self._session("look up a video") as session:
            matches = session.scalars(
                select(Video)
                .where(Video.id.startswith(prefix, autoescape=True))
                .order_by(Video.id)
                .limit(_AMBIGUOUS_SHOWN + 1)
            ).all()
            rows = [video.as_dict() for video in matches]
        if not rows:
            raise CatalogError(
                f"no video with id {id_or_prefix!r} in catalog {self.url}; "
                f"list the catalog to find the id"
            )
        if len(rows) > 1:
            shown = ", ".join(row["id"] for row in rows[:_AMBIGUOUS_SHOWN])
            more = ", ..." if len(rows) > _AMBIGUOUS_SHOWN else ""
            raise CatalogError(
                f"ambiguous id prefix {prefix!r} matches {shown}{more}; "
                f"give more characters of the id"
            )
        return rows[0]

    def list_videos(self, limit: int | None = None) -> list[dict[str, Any]]:
        """Return videos newest first, at most limit of them."""
        if limit is not None and limit < 0:
            raise CatalogError(
                f"list limit must be 0 or more, got {limit}; pass None for all videos"
            )
        with self._session("list videos") as session:
            videos = session.scalars(
                select(Video).order_by(Video.created_at.desc(), Video.id.desc()).limit(limit)
            ).all()
            return [video.as_dict() for video in videos]

    def find_video(self, content_key: str) -> dict[str, Any] | None:
        """The video made from this content key, or None."""
        with self._session("look up a video") as session:
            video = session.scalar(select(Video).where(Video.content_key == content_key))
            return None if video is None else video.as_dict()

    def find_video_by_output(self, output_path: str) -> dict[str, Any] | None:
        """The video catalogued at this output path, or None."""
        with self._session("look up a video") as session:
            video = session.scalar(select(Video).where(Video.output_path == str(output_path)))
            return None if video is None else video.as_dict()

    def add_video_once(self, **fields: Any) -> tuple[str, bool]:
        """Add a video unless one with its ``content_key`` exists; return (video id, whether it was added).

        When another writer got there first, the existing id comes back with ``False``: the caller
        then owns a duplicate file and should remove it.
        """
        key = fields.get("content_key")
        if not key:
            raise CatalogError("add_video_once needs a content_key; compute it with tasks.bulk_csv.content_key")
        existing = self.find_video(key)
        if existing is not None:
            return existing["id"], False
        try:
            return self.add_video(**fields), True
        except CatalogError:
            existing = self.find_video(key)
            if existing is None:
                raise
            logger.info("video with content key %s was added concurrently as %s", key, existing["id"])
            return existing["id"], False

    def export_videos(self, page: int = EXPORT_PAGE) -> Iterator[dict[str, Any]]:
        """Every video, oldest first, with ``windows`` (in order) and ``batch_row`` (the row that made it, or None).

        Reads ``page`` videos per query, so memory does not grow with the catalog.
        """
        after: tuple[Any, str] | None = None
        while True:
            query = select(Video).order_by(Video.created_at, Video.id).limit(page)
            if after is not None:
                query = query.where(
                    or_(Video.created_at > after[0], and_(Video.created_at == after[0], Video.id > after[1]))
                )
            with self._session("export videos") as session:
                videos = session.scalars(query).all()
                if not videos:
                    return
                ids = [video.id for video in videos]
                windows: dict[str, list[dict[str, Any]]] = {video_id: [] for video_id in ids}
                for window in session.scalars(
                    select(VideoWindow).where(VideoWindow.video_id.in_(ids)).order_by(VideoWindow.window_index)
                ):
                    windows[window.video_id].append(window.as_dict())
                made_by: dict[str, dict[str, Any]] = {}
                for row in session.scalars(
                    select(BatchRow)
                    .where(BatchRow.video_id.in_(ids), BatchRow.status == "done")
                    .order_by(BatchRow.updated_at, BatchRow.id)
                ):
                    made_by.setdefault(row.video_id or "", row.as_dict())
                exported = [
                    {**video.as_dict(), "windows": windows[video.id], "batch_row": made_by.get(video.id)}
                    for video in videos
                ]
                after = (videos[-1].created_at, videos[-1].id)
            yield from exported

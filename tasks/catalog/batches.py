"""Bulk batches in the catalog: one ``batches`` row per run of a prompt CSV, one ``batch_rows`` row per CSV row.

A batch starts ``running`` (:func:`start_batch`); its rows are recorded ``pending`` or
``rejected`` up front (:func:`add_rows`) and then move on as the flow works (:func:`set_row`):

- ``pending`` -> ``done`` (with the new video), ``skipped`` (with the video that already had the
  row's content key), ``failed`` (with the error and the attempts made) or back to ``pending``;
- ``failed`` -> any status (a later attempt may succeed);
- ``done``, ``skipped`` and ``rejected`` are final: recording the same status again returns the
  row as it is (the first writer wins), another status is an error.

:func:`finish_batch` stores the count of rows per status. A batch whose run ended without
finishing it (killed, or stopped by an error) is closed by :func:`close_interrupted_batch`: its
pending rows become ``done``/``skipped`` when their video was catalogued after all, else
``failed`` with the interruption as the reason. Videos are added through
:meth:`~tasks.catalog.videos.VideoQueries.add_video_once`, which never creates two videos with one content key.

Several threads, processes or machines may record at once. The unique constraints
(``videos.content_key``, ``batch_rows(batch_id, row_number)``) decide races: the writer that
loses gets the row the winner wrote, never an error or a duplicate.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from tasks.catalog.errors import CatalogError, short_reason
from tasks.catalog.models import ROW_STATUSES, Batch, BatchRow, Video, new_id, utcnow
from tasks.catalog.store import Catalog

logger = logging.getLogger(__name__)

FINAL_ROW_STATUSES = ("done", "skipped", "rejected")
T = TypeVar("T")


@dataclass(frozen=True)
class RowRecord:
    """A row as first recorded when a batch starts: ``pending`` or ``rejected`` with its reason."""

    row_number: int
    row_key: str | None
    status: str = "pending"
    reason: str | None = None
    content_key: str | None = None


def _require_batch(session: Session, batch_id: str) -> Batch:
    batch = session.get(Batch, batch_id)
    if batch is None:
        raise CatalogError(f"no batch {batch_id!r} in the catalog; start one with start_batch()")
    return batch


def _check_row_values(row_number: int, status: str, video_id: str | None, reason: str | None) -> None:
    if status not in ROW_STATUSES:
        raise CatalogError(f"row status {status!r} is invalid; use one of {', '.join(ROW_STATUSES)}")
    if isinstance(row_number, bool) or not isinstance(row_number, int) or row_number < 1:
        raise CatalogError(f"row number must be an int >= 1, got {row_number!r}")
    if status in ("done", "skipped") and not video_id:
        raise CatalogError(f"a {status} row needs the id of its video; pass video_id")
    if status in ("failed", "rejected") and not reason:
        raise CatalogError(f"a {status} row needs a reason; pass the error or rejection reason")


def _write_retrying(catalog: Catalog, action: str, work: Callable[[Session], T]) -> T:
    """Run ``work`` in a write transaction; when a concurrent writer wins a unique constraint, run it once more.

    The second run sees the winner's row, so it updates or keeps it instead of inserting again.
    """
    try:
        with catalog.session(action, write=True) as session:
            return work(session)
    except IntegrityError:
        logger.debug("concurrent write while trying to %s; retrying", action)
    try:
        with catalog.session(action, write=True) as session:
            return work(session)
    except IntegrityError as exc:
        raise CatalogError(
            f"cannot {action} in catalog {catalog.url}: {short_reason(exc)}; check the batch and video exist"
        ) from exc


def start_batch(
    catalog: Catalog,
    *,
    csv_path: str,
    csv_sha256: str,
    out_dir: str,
    flow_run_id: str | None = None,
    batch_id: str | None = None,
) -> str:
    """Record a new running batch and return its id (``batch_id``, or a fresh one)."""
    with catalog.session("start a batch", write=True) as session:
        batch = Batch(
            id=batch_id or new_id(), csv_path=str(csv_path), csv_sha256=csv_sha256, out_dir=str(out_dir),
            flow_run_id=flow_run_id,
        )
        session.add(batch)
        session.flush()
        batch_id = batch.id
    logger.info("started batch %s for %s", batch_id, csv_path)
    return batch_id


def get_batch(catalog: Catalog, batch_id: str) -> dict[str, Any]:
    """The batch's row: paths, status, times and counts."""
    with catalog.session("look up a batch") as session:
        return _require_batch(session, batch_id).as_dict()


def add_rows(catalog: Catalog, batch_id: str, rows: Iterable[RowRecord]) -> int:
    """Record rows not yet in the batch (rows already there are left as they are); return how many were new."""
    records = list(rows)
    for record in records:
        if record.status not in ("pending", "rejected"):
            raise CatalogError(f"rows start pending or rejected, got {record.status!r} for row {record.row_number}")
        _check_row_values(record.row_number, record.status, None, record.reason)
    def insert(session: Session) -> int:
        _require_batch(session, batch_id)
        present = set(session.scalars(select(BatchRow.row_number).where(BatchRow.batch_id == batch_id)))
        new = [record for record in records if record.row_number not in present]
        session.add_all(
            BatchRow(
                batch_id=batch_id,
                row_number=record.row_number,
                row_key=record.row_key,
                status=record.status,
                reason=record.reason,
                content_key=record.content_key,
                attempts=0,
            )
            for record in new
        )
        return len(new)

    return _write_retrying(catalog, "record batch rows", insert)


def set_row(
    catalog: Catalog,
    batch_id: str,
    row_number: int,
    status: str,
    *,
    row_key: str | None = None,
    reason: str | None = None,
    content_key: str | None = None,
    video_id: str | None = None,
    attempts: int | None = None,
    seconds: float | None = None,
) -> dict[str, Any]:
    """Record what became of one row (creating it if needed) and return the row as stored.

    ``done`` and ``skipped`` need ``video_id``; ``failed`` and ``rejected`` need ``reason``.
    Fields left as None keep their stored value. See the module docstring for the transitions.
    """
    _check_row_values(row_number, status, video_id, reason)
    changes = {
        "row_key": row_key, "reason": reason, "content_key": content_key,
        "video_id": video_id, "attempts": attempts, "seconds": seconds,
    }
    changes = {name: value for name, value in changes.items() if value is not None}
    return _write_retrying(
        catalog, "record a batch row", lambda session: _set_row(session, batch_id, row_number, status, changes)
    )


def _set_row(session: Session, batch_id: str, row_number: int, status: str, changes: dict[str, Any]) -> dict[str, Any]:
    _require_batch(session, batch_id)
    if "video_id" in changes and session.get(Video, changes["video_id"]) is None:
        raise CatalogError(f"no video {changes['video_id']!r} in the catalog; add the video before its row")
    row = session.scalar(
        select(BatchRow)
        .where(BatchRow.batch_id == batch_id, BatchRow.row_number == row_number)
        .with_for_update()
    )
    if row is None:
        row = BatchRow(batch_id=batch_id, row_number=row_number, status=status, **{"attempts": 0, **changes})
        session.add(row)
        session.flush()
        return row.as_dict()
    if row.status in FINAL_ROW_STATUSES:
        if row.status == status:
            return row.as_dict()
        raise CatalogError(
            f"row {row_number} of batch {batch_id} is already {row.status}; it cannot become {status}"
        )
    row.status = status
    if status not in ("failed", "rejected"):
        row.reason = None
    for name, value in changes.items():
        setattr(row, name, value)
    row.updated_at = utcnow()
    session.flush()
    return row.as_dict()


def _close(session: Session, batch: Batch, status: str) -> dict[str, Any]:
    """Store the number of rows per status (and ``total``), the status and the finish time."""
    counted = dict(
        session.execute(
            select(BatchRow.status, func.count()).where(BatchRow.batch_id == batch.id).group_by(BatchRow.status)
        ).all()
    )
    counts = {name: int(counted.get(name, 0)) for name in ROW_STATUSES}
    counts["total"] = sum(counts.values())
    batch.counts = counts
    batch.status = status
    batch.finished_at = utcnow()
    session.flush()
    return batch.as_dict()


def finish_batch(catalog: Catalog, batch_id: str, status: str = "done") -> dict[str, Any]:
    """Close the batch: store the number of rows per status (and ``total``) and the finish time."""
    if status not in ("done", "failed"):
        raise CatalogError(f"a batch finishes done or failed (interrupted ones are closed by recovery), got {status!r}")
    with catalog.session("finish a batch", write=True) as session:
        finished = _close(session, _require_batch(session, batch_id), status)
    logger.info("batch %s finished %s: %s", batch_id, status, finished["counts"])
    return finished


def _settle_pending_row(session: Session, row: BatchRow, reason: str) -> bool:
    """Settle a pending row of an interrupted batch; True when it was left unmade (now ``failed``)."""
    video = None
    if row.content_key:
        video = session.scalar(select(Video).where(Video.content_key == row.content_key))
    if video is None:
        row.status, row.reason = "failed", reason
    else:
        row.status, row.video_id = ("done" if video.batch_id == row.batch_id else "skipped"), video.id
    row.updated_at = utcnow()
    return video is None


def _close_interrupted(session: Session, batch_id: str, reason: str) -> dict[str, Any] | None:
    batch = session.scalar(select(Batch).where(Batch.id == batch_id).with_for_update())
    if batch is None or batch.status != "running":
        return None
    pending = session.scalars(
        select(BatchRow).where(BatchRow.batch_id == batch_id, BatchRow.status == "pending").with_for_update()
    ).all()
    unmade = [row for row in pending if _settle_pending_row(session, row, reason)]
    session.flush()
    if unmade:
        return _close(session, batch, "interrupted")
    failed = session.scalar(
        select(func.count()).select_from(BatchRow).where(BatchRow.batch_id == batch_id, BatchRow.status == "failed")
    )
    return _close(session, batch, "failed" if failed else "done")


def close_interrupted_batch(catalog: Catalog, batch_id: str, reason: str) -> dict[str, Any] | None:
    """Close a batch whose run ended without finishing it; return the closed batch, or None if it was not running.

    Each pending row whose content key was catalogued after all becomes ``done`` (this batch made
    the video) or ``skipped`` (another did); every other pending row becomes ``failed`` with
    ``reason``. The batch ends ``interrupted`` if a row was left unmade, else ``failed`` or ``done``
    as a finished run would have. A batch that is missing
    or already closed is left as it is, so several runs may try this at once.
    """
    if not reason:
        raise CatalogError("an interrupted batch needs a reason for its unfinished rows; pass the interruption")
    with catalog.session("close an interrupted batch", write=True) as session:
        closed = _close_interrupted(session, batch_id, reason)
    if closed is not None:
        logger.warning("closed interrupted batch %s as %s: %s", batch_id, closed["status"], reason)
    return closed


def list_rows(
    catalog: Catalog, *, status: str | None = None, batch_id: str | None = None, limit: int | None = None
) -> list[dict[str, Any]]:
    """Batch rows (newest batch first, then by row number), each with its batch's CSV path."""
    if status is not None and status not in ROW_STATUSES:
        raise CatalogError(f"row status {status!r} is invalid; use one of {', '.join(ROW_STATUSES)}")
    if limit is not None and limit < 0:
        raise CatalogError(f"list limit must be 0 or more, got {limit}; pass None for all rows")
    query = select(BatchRow, Batch.csv_path).join(Batch, Batch.id == BatchRow.batch_id)
    if status is not None:
        query = query.where(BatchRow.status == status)
    if batch_id is not None:
        query = query.where(BatchRow.batch_id == batch_id)
    query = query.order_by(Batch.started_at.desc(), Batch.id, BatchRow.row_number).limit(limit)
    with catalog.session("list batch rows") as session:
        return [{**row.as_dict(), "csv_path": csv_path} for row, csv_path in session.execute(query).all()]

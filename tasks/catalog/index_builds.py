"""Catalog records of retrieval-index builds (table ``index_builds``).

A build's row is inserted as ``running`` before any work, and ends ``published`` (its version
folder exists and is, or was, current), ``unchanged`` (the current version was already built from
the same corpus with the same settings; the row's ``version`` becomes that version and nothing
was published) or ``failed`` with the error. A build whose process died is found by the next
build of the same index folder and marked failed.
"""

from __future__ import annotations

import logging
import numbers
from collections.abc import Sequence
from typing import Any

from sqlalchemy import select, update

from tasks.catalog.errors import CatalogError
from tasks.catalog.models import IndexBuild, utcnow
from tasks.catalog.store import Catalog

logger = logging.getLogger(__name__)

_MAX_ERROR_CHARS = 2000


def _check_skipped(skipped: Sequence[dict[str, str]]) -> list[dict[str, str]]:
    checked = []
    for item in skipped:
        if not isinstance(item, dict) or not isinstance(item.get("path"), str) or not isinstance(item.get("reason"), str):
            raise CatalogError(
                f"skipped entry {item!r} is not a {{path, reason}} pair of strings; pass one per skipped file"
            )
        checked.append({"path": item["path"], "reason": item["reason"]})
    return checked


def start_index_build(
    catalog: Catalog, *, version: str, corpus: str, index_dir: str, model_id: str, flow_run_id: str | None = None
) -> str:
    """Record a build as running and return its row id."""
    with catalog.session("record an index build", write=True) as session:
        build = IndexBuild(
            version=version, corpus=corpus, index_dir=index_dir, model_id=model_id, flow_run_id=flow_run_id,
            status="running",
        )
        session.add(build)
        session.flush()
        build_id = build.id
    logger.info("index build %s (version %s) started", build_id, version)
    return build_id


def _finish(
    catalog: Catalog, build_id: str, status: str, values: dict[str, Any], from_statuses: Sequence[str] = ("running",)
) -> None:
    for name in ("dimension", "count", "embedded"):
        value = values.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Integral)):
            raise CatalogError(f"index build {name} must be an int, got {type(value).__name__}")
    with catalog.session(f"mark index build {build_id} {status}", write=True) as session:
        result = session.execute(
            update(IndexBuild)
            .where(IndexBuild.id == build_id, IndexBuild.status.in_(from_statuses))
            .values(status=status, finished_at=utcnow(), **values)
        )
        if result.rowcount != 1:
            raise CatalogError(
                f"index build {build_id} is not a {' or '.join(from_statuses)} build in catalog {catalog.url}; "
                f"it was finished already or never started"
            )


def publish_index_build(
    catalog: Catalog,
    build_id: str,
    *,
    dimension: int,
    count: int,
    embedded: int,
    skipped: Sequence[dict[str, str]],
    index_type: str,
    recall: float,
    duration_s: float,
) -> None:
    """Mark a running build published with what it produced."""
    _finish(catalog, build_id, "published", {
        "dimension": dimension, "count": count, "embedded": embedded, "skipped": _check_skipped(skipped),
        "index_type": index_type, "recall": float(recall), "duration_s": float(duration_s),
    })
    logger.info("index build %s published: %d images, recall %.3f", build_id, count, recall)


def mark_index_build_unchanged(
    catalog: Catalog,
    build_id: str,
    *,
    version: str,
    dimension: int,
    count: int,
    skipped: Sequence[dict[str, str]],
    index_type: str,
    recall: float,
    duration_s: float,
) -> None:
    """Mark a running build unchanged: it found ``version`` (current, and on disk) up to date and published nothing."""
    _finish(catalog, build_id, "unchanged", {
        "version": version, "dimension": dimension, "count": count, "embedded": 0,
        "skipped": _check_skipped(skipped), "index_type": index_type, "recall": float(recall),
        "duration_s": float(duration_s),
    })
    logger.info("index build %s unchanged: version %s is up to date", build_id, version)


def fail_index_build(
    catalog: Catalog,
    build_id: str,
    *,
    error: str,
    duration_s: float | None = None,
    skipped: Sequence[dict[str, str]] | None = None,
) -> None:
    """Mark a build failed with a one-line error: a running one, or a published one whose switch to current failed."""
    message = " ".join(error.split())[:_MAX_ERROR_CHARS] or "unknown error"
    values: dict[str, Any] = {"error": message, "duration_s": duration_s}
    if skipped is not None:
        values["skipped"] = _check_skipped(skipped)
    _finish(catalog, build_id, "failed", values, ("running", "published"))
    logger.info("index build %s failed: %s", build_id, message)


def fail_abandoned_builds(catalog: Catalog, index_dir: str, reason: str) -> list[str]:
    """Mark failed every build of ``index_dir`` still running (call while holding its build lock); return their ids."""
    with catalog.session("close abandoned index builds", write=True) as session:
        ids = list(session.scalars(
            select(IndexBuild.id).where(IndexBuild.index_dir == index_dir, IndexBuild.status == "running")
        ))
        if ids:
            session.execute(
                update(IndexBuild).where(IndexBuild.id.in_(ids))
                .values(status="failed", finished_at=utcnow(), error=reason)
            )
    if ids:
        logger.warning("marked %d abandoned index build(s) of %s failed", len(ids), index_dir)
    return ids


def get_index_build(catalog: Catalog, version: str) -> dict[str, Any]:
    """The build that made ``version`` (not the ``unchanged`` builds that later found it up to date)."""
    with catalog.session("look up an index build") as session:
        build = session.scalar(
            select(IndexBuild).where(IndexBuild.version == version, IndexBuild.status != "unchanged")
        )
        if build is None:
            raise CatalogError(f"no index build of version {version!r} in catalog {catalog.url}; list the builds")
        return build.as_dict()


def list_index_builds(catalog: Catalog, index_dir: str | None = None, limit: int | None = None) -> list[dict[str, Any]]:
    """Builds newest first, of one index folder or all, at most ``limit``."""
    if limit is not None and limit < 0:
        raise CatalogError(f"list limit must be 0 or more, got {limit}; pass None for all builds")
    query = select(IndexBuild).order_by(IndexBuild.started_at.desc(), IndexBuild.id.desc()).limit(limit)
    if index_dir is not None:
        query = query.where(IndexBuild.index_dir == index_dir)
    with catalog.session("list index builds") as session:
        return [build.as_dict() for build in session.scalars(query)]

"""Record stage: one catalog row describing a finished video and how it was made."""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger, task

from tasks.catalog import open_catalog


@task(name="record")
def record_video(catalog_url: str, fields: dict[str, Any], windows: list[dict[str, Any]]) -> str:
    """Insert the video's provenance row and one row per rendered window; return the video's id."""
    with open_catalog(catalog_url) as catalog:
        video_id = catalog.add_video(windows=windows, **fields)
    get_run_logger().info("catalogued video %s", video_id)
    return video_id


@task(name="record-once")
def record_video_once(catalog_url: str, fields: dict[str, Any], windows: list[dict[str, Any]]) -> tuple[str, bool]:
    """Like :func:`record_video` for a video with a ``content_key``: return (video id, whether this call added it).

    When a video with the same content key is already catalogued, nothing is written and that
    video's id comes back with ``False``.
    """
    with open_catalog(catalog_url) as catalog:
        video_id, added = catalog.add_video_once(windows=windows, **fields)
    if added:
        get_run_logger().info("catalogued video %s", video_id)
    else:
        get_run_logger().info("content key %s is already catalogued as video %s", fields["content_key"], video_id)
    return video_id, added

"""One video from a validated request: prior -> render -> (contact sheet) -> publish -> record.

Shared by the ``generate`` flow and the rows of ``bulk_generate``. The files are made in a leased work
folder and published only once complete (:mod:`tasks.runtime.publish`); the catalog row is written
after the files are in place, and if recording fails the published files are removed again: no
catalog row points at a missing file, and no file is left that the catalog does not know about.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path

from tasks.prior import prepare_prior
from tasks.record import VideoRecord, record_video, record_video_once
from tasks.render import render_video
from tasks.request import GenerateRequest, prior_image_path
from tasks.runtime.diskspace import DiskFullError, is_disk_full
from tasks.runtime.publish import STAGED_VIDEO, claim, gpu_slot, publish, remove_if_ours, work_folder
from tasks.runtime.thumbnails import contact_sheet_path, write_contact_sheet

logger = logging.getLogger(__name__)

def produce_video(request: GenerateRequest, flow_run_id: str | None) -> VideoRecord:
    """Make, publish and catalogue one video (call inside a flow or task run).

    A full disk under the output folder, however it shows, raises :class:`DiskFullError` naming the
    folder and its free space; nothing partial is published.
    """
    folder = Path(request.output.path).parent
    try:
        return _produce_video(request, flow_run_id)
    except Exception as exc:
        if is_disk_full(exc, folder):
            raise DiskFullError(folder) from exc
        raise


def _produce_video(request: GenerateRequest, flow_run_id: str | None) -> VideoRecord:
    started = time.perf_counter()
    output = request.output
    out = Path(output.path)
    with work_folder(out, output.url) as work_dir:
        prior = prepare_prior(request, str(work_dir))
        staged = work_dir / STAGED_VIDEO
        with gpu_slot(output.gpu_limit):
            rendered = render_video(request, prior.path, str(staged))
        sheet = write_contact_sheet(staged) if output.thumbnail else None
        inode = staged.stat().st_ino
        winner = claim(staged, out, output.url, output.content_key)
        video = replace(rendered, path=str(out), prior=prior, prior_path=prior.path)
        if winner is not None:
            logger.info("video %s already has content key %s; discarding this copy", winner, output.content_key)
            return replace(video, video_id=winner, added=False, stage_seconds={})
        published = {out: inode}
        if prior.source == "generate":
            video = replace(video, prior_path=str(prior_image_path(out)))
            published[Path(video.prior_path)] = publish(work_dir, Path(prior.path), Path(video.prior_path))
        if sheet is not None:
            video = replace(video, thumbnail_path=str(contact_sheet_path(out)))
            published[Path(video.thumbnail_path)] = publish(work_dir, sheet, Path(video.thumbnail_path))
        timings = {"prior": prior.seconds, "prior_model": prior.model_seconds, **rendered.stage_seconds}
        fields = replace(video, stage_seconds={**timings, "total": time.perf_counter() - started}).catalog_fields(
            request, flow_run_id)
        try:
            if output.content_key is None:
                video_id, added = record_video(output.url, fields, rendered.windows), True
            else:
                video_id, added = record_video_once(output.url, fields, rendered.windows)
        except BaseException:
            remove_if_ours(published)
            raise
        if not added:
            remove_if_ours(published)
        return replace(video, video_id=video_id, added=added, stage_seconds=timings)

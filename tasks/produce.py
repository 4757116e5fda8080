"""One video from a validated request: prior -> render -> (contact sheet) -> publish -> record.

Shared by the ``generate`` flow and the rows of ``bulk_generate``. The files are made in a leased work
folder and published only once complete (:mod:`tasks.runtime.publish`); the catalog row is written
after the files are in place, and if recording fails the published files are removed again: no
catalog row points at a missing file, and no file is left that the catalog does not know about.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tasks.prior import PriorPolicy, prepare_prior
from tasks.provenance import combined_fingerprint, library_versions, model_details
from tasks.record import record_video, record_video_once
from tasks.render import RenderSettings, render_video
from tasks.request import GenerateRequest, prior_image_path
from tasks.runtime.diskspace import DiskFullError, is_disk_full
from tasks.runtime.publish import STAGED_VIDEO, claim, gpu_slot, publish, remove_if_ours, work_folder
from tasks.runtime.thumbnails import contact_sheet_path, write_contact_sheet

logger = logging.getLogger(__name__)

@dataclass(frozen=True)
class VideoJob:
    """A validated request and how to publish it.

    ``content_key`` (bulk rows) makes recording idempotent; ``batch_id`` links the video to its
    batch; ``thumbnail`` writes a contact sheet beside the video; ``gpu_limit`` names the Prefect
    global concurrency limit a render holds a slot of (None: no limit).
    """

    request: GenerateRequest
    policy: PriorPolicy | None = None
    content_key: str | None = None
    batch_id: str | None = None
    thumbnail: bool = False
    gpu_limit: str | None = None


@dataclass(frozen=True)
class ProducedVideo:
    """The catalogued video. ``added`` is False when another writer had already catalogued its content key."""

    video_id: str
    added: bool
    path: str
    sha256: str
    frames: int
    fps: int
    width: int
    height: int
    prior_source: str
    thumbnail_path: str | None
    stage_seconds: dict[str, float]


def produce_video(job: VideoJob, flow_run_id: str | None) -> ProducedVideo:
    """Make, publish and catalogue one video (call inside a flow or task run).

    A full disk under the output folder, however it shows, raises :class:`DiskFullError` naming the
    folder and its free space; nothing partial is published.
    """
    folder = Path(job.request.out).parent
    try:
        return _produce_video(job, flow_run_id)
    except Exception as exc:
        if is_disk_full(exc, folder):
            raise DiskFullError(folder) from exc
        raise


def _produce_video(job: VideoJob, flow_run_id: str | None) -> ProducedVideo:
    started = time.perf_counter()
    request = job.request
    out = Path(request.out)
    with work_folder(out, request.catalog_url) as work_dir:
        prior = prepare_prior(
            request.prompt, request.seed, request.model, str(work_dir), request.image, request.negative_prompt,
            job.policy,
        )
        settings = RenderSettings(
            model=request.model,
            steps=request.steps,
            guidance=request.guidance,
            true_cfg=request.true_cfg,
            windows=request.windows,
            overlap=request.overlap,
            workers=request.workers,
            ray_address=request.ray_address,
            size=request.size,
        )
        staged = work_dir / STAGED_VIDEO
        with gpu_slot(job.gpu_limit):
            rendered = render_video(
                request.prompt, prior.path, str(staged), request.num_frames, request.fps, request.seed, settings,
                request.negative_prompt,
            )
        sheet = write_contact_sheet(staged) if job.thumbnail else None
        inode = staged.stat().st_ino
        winner = claim(staged, out, request.catalog_url, job.content_key)
        if winner is not None:
            logger.info("video %s already has content key %s; discarding this copy", winner, job.content_key)
            return _as_produced(winner, False, rendered, str(out), prior.source, None, {})
        published = {out: inode}
        prior_path = prior.path
        if prior.source == "generate":
            prior_path = str(prior_image_path(out))
            published[Path(prior_path)] = publish(work_dir, Path(prior.path), Path(prior_path))
        thumbnail_path = None
        if sheet is not None:
            thumbnail_path = str(contact_sheet_path(out))
            published[Path(thumbnail_path)] = publish(work_dir, sheet, Path(thumbnail_path))
        timings = {
            "prior": prior.seconds,
            "prior_model": prior.model_seconds,
            "render": rendered.seconds,
            "render_model": rendered.model_seconds,
        }
        fields = _fields(job, prior_path, prior.source, prior.sha256, prior.fingerprint, prior.details, rendered,
                         str(out), thumbnail_path, {**timings, "total": time.perf_counter() - started}, flow_run_id)
        try:
            if job.content_key is None:
                video_id, added = record_video(request.catalog_url, fields, rendered.windows), True
            else:
                video_id, added = record_video_once(request.catalog_url, fields, rendered.windows)
        except BaseException:
            remove_if_ours(published)
            raise
        if not added:
            remove_if_ours(published)
        return _as_produced(video_id, added, rendered, str(out), prior.source, thumbnail_path, timings)


def _fields(
    job: VideoJob,
    prior_path: str,
    prior_source: str,
    prior_sha256: str,
    prior_fingerprint: str | None,
    prior_details: dict[str, Any] | None,
    rendered: Any,
    output_path: str,
    thumbnail_path: str | None,
    timings: dict[str, float],
    flow_run_id: str | None,
) -> dict[str, Any]:
    request = job.request
    fields: dict[str, Any] = {
        "prompt": request.prompt,
        "negative_prompt": request.negative_prompt,
        "seed": request.seed,
        "prior_source": prior_source,
        "prior_image_path": prior_path,
        "prior_image_sha256": prior_sha256,
        "preset": request.preset,
        "weights_fingerprint": combined_fingerprint(rendered.fingerprint, prior_fingerprint),
        "steps": request.steps,
        "guidance": request.guidance,
        "true_cfg": request.true_cfg if request.true_cfg > 1 else None,
        "seconds": request.seconds,
        "window_layout": rendered.window_layout,
        "windows_mode": request.windows,
        "output_path": output_path,
        "output_sha256": rendered.sha256,
        "output_bytes": rendered.bytes,
        "frames": rendered.frames,
        "fps": rendered.fps,
        "width": rendered.width,
        "height": rendered.height,
        "stage_timings": timings,
        "flow_run_id": flow_run_id,
        "library_versions": library_versions(),
        "model_details": model_details(request.preset, request.weights),
    }
    if job.policy is not None:
        fields["prior_details"] = prior_details
    if job.content_key is not None:
        fields.update(content_key=job.content_key, batch_id=job.batch_id, thumbnail_path=thumbnail_path)
    elif thumbnail_path is not None:
        fields["thumbnail_path"] = thumbnail_path
    return fields


def _as_produced(
    video_id: str, added: bool, rendered: Any, path: str, prior_source: str, thumbnail_path: str | None,
    timings: dict[str, float],
) -> ProducedVideo:
    return ProducedVideo(
        video_id, added, path, rendered.sha256, rendered.frames, rendered.fps, rendered.width, rendered.height,
        prior_source, thumbnail_path, timings,
    )

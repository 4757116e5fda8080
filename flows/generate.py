"""The ``generate`` flow: prompt (+ optional image) -> prior -> render (windows stitched into the mp4) -> record."""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path

from prefect import flow
from prefect.runtime import flow_run

from tasks.catalog import plain_url
from tasks.prior import PriorPolicy
from tasks.produce import VideoJob, produce_video
from tasks.request import GenerateRequest, validate_request
from tasks.runtime.publish import sweep_work_dirs

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class GenerateResult:
    """The catalogued video."""

    video_id: str
    path: str
    sha256: str
    frames: int
    fps: int
    width: int
    height: int
    catalog_url: str
    stage_seconds: dict[str, float]
    prior_source: str


def prior_policy(request: GenerateRequest) -> PriorPolicy:
    """The request's prior policy; without ``prior``: the image if given, else text-to-image."""
    mode = request.prior or ("user" if request.image is not None else "generate")
    return PriorPolicy(mode, request.index_dir, request.prior_threshold, request.prior_strength)


@flow(name="generate", log_prints=False)
def generate(request: GenerateRequest) -> GenerateResult:
    """Generate one video and record its provenance; the catalog row is written only once the mp4 is complete.

    The prior's decision is recorded as ``prior_details``. Work folders that dead runs left in
    the output folder are removed first.
    """
    request = validate_request(replace(request, catalog_url=plain_url(request.catalog_url)))
    sweep_work_dirs(Path(request.out).parent, request.catalog_url)
    video = produce_video(VideoJob(request, prior_policy(request)), flow_run.get_id())
    return GenerateResult(
        video.video_id, video.path, video.sha256, video.frames, video.fps, video.width, video.height,
        request.catalog_url, video.stage_seconds, video.prior_source,
    )

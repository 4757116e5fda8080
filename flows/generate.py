"""The ``generate`` flow: prompt (+ optional image) -> prior -> render (windows stitched into the mp4) -> record."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from prefect import flow
from prefect.runtime import flow_run

from tasks.prior import PriorPolicy
from tasks.produce import VideoJob, produce_video
from tasks.request import GenerateRequest, validate_request

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


@flow(name="generate", log_prints=False)
def generate(request: GenerateRequest) -> GenerateResult:
    """Generate one video and record its provenance; the catalog row is written only once the mp4 is complete."""
    request = validate_request(request)
    policy = None
    if request.prior is not None:
        policy = PriorPolicy(request.prior, request.index_dir, request.prior_threshold, request.prior_strength)
    video = produce_video(VideoJob(request, policy), flow_run.get_id())
    return GenerateResult(
        video.video_id, video.path, video.sha256, video.frames, video.fps, video.width, video.height,
        request.catalog_url, video.stage_seconds,
    )

"""The ``generate`` flow: prompt (+ optional image) -> prior -> render (windows stitched into the mp4) -> record."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from prefect import flow
from prefect.runtime import flow_run

from tasks.prior import prepare_prior
from tasks.provenance import combined_fingerprint, library_versions
from tasks.record import record_video
from tasks.render import RenderSettings, render_video
from tasks.request import GenerateRequest, prior_image_path, validate_request

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
    started = time.perf_counter()
    request = validate_request(request)
    out = Path(request.out)
    work_dir = tempfile.mkdtemp(prefix=f".{out.stem}.", suffix=".work", dir=out.parent)
    try:
        model = request.model
        prior = prepare_prior(request.prompt, request.seed, model, work_dir, request.image, request.negative_prompt)
        settings = RenderSettings(
            model=model,
            steps=request.steps,
            guidance=request.guidance,
            true_cfg=request.true_cfg,
            windows=request.windows,
            overlap=request.overlap,
            workers=request.workers,
            ray_address=request.ray_address,
        )
        rendered = render_video(
            request.prompt,
            prior.path,
            request.out,
            request.num_frames,
            request.fps,
            request.seed,
            settings,
            request.negative_prompt,
        )
        prior_path = request.image
        if prior.source == "generate":
            prior_path = str(prior_image_path(out))
            os.replace(prior.path, prior_path)
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    timings = {
        "prior": prior.seconds,
        "prior_model": prior.model_seconds,
        "render": rendered.seconds,
        "render_model": rendered.model_seconds,
    }
    fields = {
        "prompt": request.prompt,
        "negative_prompt": request.negative_prompt,
        "seed": request.seed,
        "prior_source": prior.source,
        "prior_image_path": prior_path,
        "prior_image_sha256": prior.sha256,
        "preset": request.preset,
        "weights_fingerprint": combined_fingerprint(rendered.fingerprint, prior.fingerprint),
        "steps": request.steps,
        "guidance": request.guidance,
        "true_cfg": request.true_cfg if request.true_cfg > 1 else None,
        "seconds": request.seconds,
        "window_layout": rendered.window_layout,
        "windows_mode": request.windows,
        "output_path": rendered.path,
        "output_sha256": rendered.sha256,
        "output_bytes": rendered.bytes,
        "frames": rendered.frames,
        "fps": rendered.fps,
        "width": rendered.width,
        "height": rendered.height,
        "stage_timings": {**timings, "total": time.perf_counter() - started},
        "flow_run_id": flow_run.get_id(),
        "library_versions": library_versions(),
    }
    try:
        video_id = record_video(request.catalog_url, fields, rendered.windows)
    except BaseException:
        # A video the catalog does not know about would be an orphan: remove it so a rerun starts clean.
        Path(rendered.path).unlink(missing_ok=True)
        if prior.source == "generate":
            Path(prior_path).unlink(missing_ok=True)
        raise
    return GenerateResult(
        video_id, rendered.path, rendered.sha256, rendered.frames, rendered.fps, rendered.width, rendered.height,
        request.catalog_url, timings,
    )

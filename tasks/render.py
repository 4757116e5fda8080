"""Render stage: sample and decode the video's windows and stream them, stitched, into one mp4.

Windows render in this process (``workers`` 0) or on the Ray render pool; either way each decoded
window goes straight into the ffmpeg encode (crossfading overlaps), so memory does not grow with
the video's length. The mp4 appears under its final name only when every frame is in.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass
from typing import Any

from typing import TYPE_CHECKING

import numpy as np
import PIL.Image
from prefect import get_run_logger, task

from magic141.presets import get_preset
from magic141.windows import Window
from tasks.ffmpeg import VideoWriter, probe, sha256_file
from tasks.models import video_pipeline
from tasks.progress import StageProgress
from tasks.request import ModelSpec
from tasks.stitch import Stitcher

if TYPE_CHECKING:  # torch, diffusers and ray load when a video is rendered, not at import
    from magic141.sampler import SamplerConfig
    from tasks.render_pool import WindowRecord


@dataclass(frozen=True)
class RenderSettings:
    """How to render: window mode and overlap, and where (in process, or a Ray pool of ``workers``)."""

    model: ModelSpec
    steps: int
    guidance: float
    true_cfg: float = 1.0
    windows: str = "chained"
    overlap: int | None = None
    workers: int = 0
    ray_address: str | None = None


@dataclass(frozen=True)
class RenderResult:
    """The finished mp4, its windows' provenance and layout, and the model that made it."""

    path: str
    sha256: str
    bytes: int
    frames: int
    fps: int
    width: int
    height: int
    windows: list[dict[str, Any]]
    window_layout: list[dict[str, int]]
    fingerprint: str
    seconds: float
    model_seconds: float  # summed over windows: time the model spent sampling and decoding


def _render_here(
    settings: RenderSettings,
    sampler: SamplerConfig,
    first_frame: PIL.Image.Image,
    prompt: str,
    negative_prompt: str | None,
    num_frames: int,
    seed: int,
    plan: list[Window],
    stitcher: Stitcher,
    progress: StageProgress,
) -> tuple[list[WindowRecord], str]:
    from tasks.render_pool import ActorInfo, WindowRecord

    pipeline = video_pipeline(settings.model)
    device = pipeline.device
    actor = ActorInfo(
        name="local",
        node=socket.gethostname(),
        gpu_id=str(device.index or 0) if device.type == "cuda" else None,
        pid=os.getpid(),
    )
    records = [WindowRecord(window, actor) for window in plan]
    windows = pipeline(
        first_frame,
        prompt,
        num_frames=num_frames,
        seed=seed,
        sampler=sampler,
        negative_prompt=negative_prompt,
        windows=settings.windows,
        overlap=settings.overlap,
        on_progress=progress.update,
    )
    started = time.perf_counter()
    for rendered in windows:
        records[rendered.window.index].seconds = time.perf_counter() - started
        stitcher.add(rendered.window.index, rendered.frames)
        started = time.perf_counter()
    return records, pipeline.weights_fingerprint


@task(name="render")
def render_video(
    prompt: str,
    prior_path: str,
    out: str,
    num_frames: int,
    fps: int,
    seed: int,
    settings: RenderSettings,
    negative_prompt: str | None = None,
) -> RenderResult:
    """Render ``num_frames`` frames from the first frame at ``prior_path`` into the mp4 ``out``."""
    from magic141.pipeline import fit_image, plan_video
    from magic141.sampler import SamplerConfig

    logger = get_run_logger()
    started = time.perf_counter()
    preset = get_preset(settings.model.preset)
    sampler = SamplerConfig(
        steps=settings.steps,
        guidance_scale=settings.guidance,
        true_cfg_scale=settings.true_cfg,
        flow_shift=preset.flow_shift,
    )
    with PIL.Image.open(prior_path) as image:
        first_frame = fit_image(image, preset.width, preset.height)
    plan = plan_video(preset, num_frames, settings.windows, settings.overlap)
    where = "in this process" if settings.workers == 0 else f"on {settings.workers} Ray worker(s)"
    progress = StageProgress("render", f"Rendering {num_frames} frames in {len(plan)} {settings.windows} windows {where}")
    with VideoWriter(out, preset.width, preset.height, fps, expected_frames=num_frames, preset="veryfast") as writer:
        stitcher = Stitcher(writer, plan)
        if settings.workers == 0:
            records, fingerprint = _render_here(
                settings, sampler, first_frame, prompt, negative_prompt, num_frames, seed, plan, stitcher, progress
            )
        else:
            from tasks.render_pool import PoolConfig, RenderJob, get_pool, render_with_pool

            pool = get_pool(PoolConfig(settings.model, settings.workers, settings.ray_address))
            job = RenderJob(
                key=f"{out}:{seed}", prompt=prompt, negative_prompt=negative_prompt,
                image=np.asarray(first_frame), seed=seed, sampler=sampler,
            )
            records = render_with_pool(
                pool, job, plan, settings.windows, lambda w, frames: stitcher.add(w.index, frames), progress.update
            )
            fingerprint = pool.fingerprint
    info = probe(out)
    if info.frames != num_frames or round(info.fps) != fps:
        os.remove(out)
        raise RuntimeError(
            f"encoded {out} read back as {info.frames} frames at {info.fps} fps, expected {num_frames} at {fps}; "
            f"the file was removed"
        )
    windows = [record.as_dict() for record in records]
    for window in windows:
        logger.info(
            "window %(window_index)d: frames [%(frame_start)d, %(frame_end)d) on %(actor)s (%(node)s, gpu %(gpu_id)s), "
            "%(seconds).2f s, %(attempts)d attempt(s)",
            window,
        )
    return RenderResult(
        out, sha256_file(out), os.path.getsize(out), info.frames, fps, info.width, info.height,
        windows, [window.as_dict() for window in plan], fingerprint, time.perf_counter() - started,
        sum(record.seconds for record in records),
    )


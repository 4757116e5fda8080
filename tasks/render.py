"""Render stage: sample and decode the video's windows and stream them, stitched, into one mp4.

Windows render in this process (``workers`` 0) or on the Ray render pool; either way each decoded
window goes straight into the ffmpeg encode (crossfading overlaps), so memory does not grow with
the video's length. The mp4 appears under its final name only when every frame is in.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import PIL.Image
from prefect import get_run_logger, task

from magic141.presets import get_preset, parse_size
from magic141.utils import sha256_file
from tasks.request import ModelSpec
from tasks.runtime.ffmpeg import VideoWriter, probe
from tasks.runtime.model_cache import video_pipeline
from tasks.runtime.progress import StageProgress
from tasks.runtime.stitch import Stitcher

if TYPE_CHECKING:  # torch, diffusers and ray load when a video is rendered, not at import
    from magic141.executor import WindowExecutor


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
    size: str = "auto"  # one of the preset's sizes as WxH, or auto: the one nearest the first frame's aspect ratio


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


def _executor(settings: RenderSettings) -> WindowExecutor:
    """The model in this process (``workers`` 0), else the Ray render pool of ``workers`` actors."""
    if settings.workers == 0:
        from magic141.executor import LocalExecutor

        return LocalExecutor(video_pipeline(settings.model))
    from tasks.runtime.render_pool import PoolConfig, PoolExecutor, get_pool

    return PoolExecutor(get_pool(PoolConfig(settings.model, settings.workers, settings.ray_address)))


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
    from magic141.executor import RenderJob, render_windows
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
    plan = plan_video(preset, num_frames, settings.windows, settings.overlap)
    where = "in this process" if settings.workers == 0 else f"on {settings.workers} Ray worker(s)"
    progress = StageProgress("render", f"Rendering {num_frames} frames in {len(plan)} {settings.windows} windows {where}")
    executor = _executor(settings)
    with PIL.Image.open(prior_path) as image:  # the VLM reads it as given under the official convention
        size = parse_size(settings.size) or preset.nearest_size(*image.size)
        preset = preset.at_size(size)
        if executor.convention == "official":
            reference = image.convert("RGB")
        else:
            reference = fit_image(image, preset.width, preset.height)
    job = RenderJob(f"{out}:{seed}", prompt, negative_prompt, np.asarray(reference), seed, sampler, size)
    records = []
    with VideoWriter(out, preset.width, preset.height, fps, expected_frames=num_frames, preset="veryfast") as writer:
        stitcher = Stitcher(writer, plan)
        for rendered in render_windows(executor, job, plan, settings.windows, progress.update):
            stitcher.add(rendered.window.index, rendered.frames)
            records.append(rendered.record)
    records.sort(key=lambda record: record.window.index)
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
        windows, [window.as_dict() for window in plan], executor.fingerprint, time.perf_counter() - started,
        sum(record.seconds for record in records),
    )


"""Render stage: sample and decode the video's windows and stream them, stitched, into one mp4.

Windows render in this process (``workers`` 0) or on the Ray render pool; either way each decoded
window goes straight into the ffmpeg encode (crossfading overlaps), so memory does not grow with
the video's length. The mp4 appears under its final name only when every frame is in.
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING

import numpy as np
import PIL.Image
from prefect import get_run_logger, task

from magic141.presets import parse_size
from magic141.utils import sha256_file
from tasks.record import VideoRecord
from tasks.request import GenerateRequest, ModelSpec, RenderSpec
from tasks.runtime.ffmpeg import VideoWriter, probe
from tasks.runtime.model_cache import video_pipeline
from tasks.runtime.progress import StageProgress
from tasks.runtime.stitch import Stitcher

if TYPE_CHECKING:  # torch, diffusers and ray load when a video is rendered, not at import
    from magic141.executor import WindowExecutor


def _executor(model: ModelSpec, render: RenderSpec) -> WindowExecutor:
    """The model in this process (``workers`` 0), else the Ray render pool of ``workers`` actors."""
    if render.workers == 0:
        from magic141.executor import LocalExecutor

        return LocalExecutor(video_pipeline(model))
    from tasks.runtime.render_pool import PoolConfig, PoolExecutor, get_pool

    return PoolExecutor(get_pool(PoolConfig(model, render.workers, render.ray_address)))


@task(name="render")
def render_video(request: GenerateRequest, prior_path: str, out: str) -> VideoRecord:
    """Render the request's frames from the first frame at ``prior_path`` into the mp4 ``out``."""
    from magic141.executor import RenderJob, render_windows
    from magic141.pipeline import fit_image, plan_video
    from magic141.sampler import SamplerConfig

    logger = get_run_logger()
    started = time.perf_counter()
    render = request.render
    num_frames, fps = render.num_frames, render.fps
    preset = request.model.config
    sampler = SamplerConfig(
        steps=render.steps,
        guidance_scale=render.guidance,
        true_cfg_scale=render.true_cfg,
        flow_shift=preset.flow_shift,
    )
    plan = plan_video(preset, num_frames, render.windows, render.overlap)
    where = "in this process" if render.workers == 0 else f"on {render.workers} Ray worker(s)"
    progress = StageProgress("render", f"Rendering {num_frames} frames in {len(plan)} {render.windows} windows {where}")
    executor = _executor(request.model, render)
    with PIL.Image.open(prior_path) as image:  # the VLM reads it as given under the official convention
        size = parse_size(render.size) or preset.nearest_size(*image.size)
        preset = preset.at_size(size)
        if executor.convention == "official":
            reference = image.convert("RGB")
        else:
            reference = fit_image(image, preset.width, preset.height)
    job = RenderJob(f"{out}:{render.seed}", request.prompt.text, request.prompt.negative, np.asarray(reference),
                    render.seed, sampler, size)
    records = []
    with VideoWriter(out, preset.width, preset.height, fps, expected_frames=num_frames, preset="veryfast") as writer:
        stitcher = Stitcher(writer, plan)
        for rendered in render_windows(executor, job, plan, render.windows, progress.update):
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
    return VideoRecord(
        out, sha256_file(out), os.path.getsize(out), info.frames, fps, info.width, info.height,
        windows, [window.as_dict() for window in plan], executor.fingerprint,
        {"render": time.perf_counter() - started, "render_model": sum(record.seconds for record in records)},
    )


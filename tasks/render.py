"""Render stage: sample and decode the video's windows, one ``.npy`` frame file per window."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL.Image
from prefect import get_run_logger, task

from magic141.sampler import SamplerConfig
from tasks.models import video_pipeline
from tasks.progress import StageProgress
from tasks.request import ModelSpec


@dataclass(frozen=True)
class RenderResult:
    """The rendered windows (frame files in stitch order), their layout and the model that made them."""

    window_files: list[str]
    window_layout: list[dict[str, int]]
    width: int
    height: int
    fingerprint: str
    seconds: float
    model_seconds: float


@task(name="render")
def render_video(
    prompt: str,
    prior_path: str,
    num_frames: int,
    seed: int,
    model: ModelSpec,
    steps: int,
    guidance: float,
    work_dir: str,
    true_cfg: float = 1.0,
    negative_prompt: str | None = None,
) -> RenderResult:
    """Generate ``num_frames`` frames from the first frame at ``prior_path``; frames go to ``work_dir``."""
    logger = get_run_logger()
    started = time.perf_counter()
    pipeline = video_pipeline(model)
    sampler = SamplerConfig(
        steps=steps, guidance_scale=guidance, true_cfg_scale=true_cfg, flow_shift=pipeline.preset.flow_shift
    )
    progress = StageProgress("render", f"Sampling {num_frames} frames ({steps} steps per window)")
    with PIL.Image.open(prior_path) as image:
        first_frame = image.convert("RGB")
    files: list[str] = []
    layout: list[dict[str, int]] = []
    model_seconds = 0.0
    windows = iter(
        pipeline(
            first_frame,
            prompt,
            num_frames=num_frames,
            seed=seed,
            sampler=sampler,
            negative_prompt=negative_prompt,
            on_progress=progress.update,
        )
    )
    while True:
        model_started = time.perf_counter()
        rendered = next(windows, None)
        model_seconds += time.perf_counter() - model_started
        if rendered is None:
            break
        path = Path(work_dir) / f"window-{rendered.window.index:05d}.npy"
        np.save(path, rendered.frames)
        files.append(str(path))
        layout.append(rendered.window.as_dict())
        logger.info(
            "window %d: frames %d-%d", rendered.window.index, rendered.window.start, rendered.window.stop - 1
        )
    return RenderResult(
        files,
        layout,
        pipeline.preset.width,
        pipeline.preset.height,
        pipeline.weights_fingerprint,
        time.perf_counter() - started,
        model_seconds,
    )

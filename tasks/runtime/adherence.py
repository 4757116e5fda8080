"""Prompt adherence of a video model on the toy world, read off its frames by simple vision.

Each case is a caption of the held-out or the training combinations, spread over the split
(:func:`magic141.toy_world.evaluation_captions`), and a scene drawn for it. The video's first frame is the scene's own first frame (``first_frame="world"``:
the user-image path) or the text-to-image prior's image for the caption (``"prior"``: the whole text-to-video
factorisation). The video is sampled with the pipeline's windows and stitched as the CLI stitches it, then
:func:`magic141.toy_eval.adherence` reads its colour, shape, background and motion, and
:func:`magic141.metrics.video_metrics` measures it, with first-frame fidelity against the image it started from.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import PIL.Image

from magic141.toy_world import Caption, evaluation_captions, render_frame, sample_scene
from magic141.utils import InputError
from magic141.windows import WINDOW_MODES

if TYPE_CHECKING:
    from magic141.pipeline import Magic141Pipeline
    from magic141.prior import ImagePrior
    from magic141.sampler import SamplerConfig

logger = logging.getLogger(__name__)

SPLITS = ("held-out", "train")
FIRST_FRAMES = ("world", "prior")
SCORES = ("colour", "shape", "background", "motion", "motion_sustained", "first_frame_psnr")
CAPTION_PARTS = ("colour", "shape", "background", "motion")  # each scored by the adherence score of its name


@dataclass(frozen=True)
class AdherenceSettings:
    """One evaluation: which captions, how long the videos are and how they are sampled."""

    split: str = "held-out"
    count: int = 100
    seconds: float | None = None  # None: one window
    windows: str = "chained"
    steps: int | None = None  # None: the preset's
    first_frame: str = "world"
    seed: int = 0
    guidance: float | None = None  # the guidance input; None: the preset's
    true_cfg: float = 1.0  # > 1: classifier-free guidance in two passes, against the empty prompt
    first_frame_anchor: bool | None = None  # None: as the weights' convention says (magic141.sampler)

    def __post_init__(self) -> None:
        if self.split not in SPLITS:
            raise InputError(f"unknown split {self.split!r}; choose one of: {', '.join(SPLITS)}")
        if self.first_frame not in FIRST_FRAMES:
            raise InputError(f"unknown first frame {self.first_frame!r}; choose one of: {', '.join(FIRST_FRAMES)}")
        if self.count < 1:
            raise InputError(f"the case count must be >= 1, got {self.count}")
        if self.windows not in WINDOW_MODES:
            raise InputError(f"unknown window mode {self.windows!r}; choose one of: {', '.join(WINDOW_MODES)}")
        if self.seconds is not None and not self.seconds > 0:
            raise InputError(f"seconds must be > 0, got {self.seconds}")
        if self.true_cfg < 1:
            raise InputError(f"true CFG must be >= 1 (1 disables it), got {self.true_cfg}")


class _Frames:
    """A stitcher's writer that keeps the frames in memory."""

    def __init__(self) -> None:
        self.parts: list[np.ndarray] = []

    def write(self, frames: np.ndarray) -> None:
        self.parts.append(frames)

    def video(self) -> np.ndarray:
        return np.concatenate(self.parts)


def sample_video(pipeline: Magic141Pipeline, image: PIL.Image.Image, prompt: str, num_frames: int, seed: int,
                 sampler: SamplerConfig, windows: str, negative_prompt: str | None = None) -> tuple[np.ndarray, list[int]]:
    """The stitched (F, H, W, 3) video and the frames at which its windows start."""
    from tasks.runtime.stitch import Stitcher

    plan = pipeline.plan(num_frames, windows)
    frames = _Frames()
    stitcher = Stitcher(frames, plan)
    for rendered in pipeline(image, prompt, num_frames=num_frames, seed=seed, sampler=sampler, windows=windows,
                             negative_prompt=negative_prompt):
        stitcher.add(rendered.window.index, rendered.frames)
    return frames.video(), [window.start for window in plan[1:]]


def by_caption_part(cases: list[dict[str, Any]], part: str) -> dict[str, dict[str, float]]:
    """For each word of one caption part (each shape, each motion, ...), its cases and the share of them whose
    video shows it: ``{"square": {"cases": 21, "score": 0.62}, ...}``. A mean over a whole split hides a word
    that is never followed among words that always are."""
    scores: dict[str, list[float]] = {}
    for case in cases:
        scores.setdefault(getattr(Caption.parse(case["caption"]), part), []).append(case[part])
    return {word: {"cases": len(values), "score": float(np.mean(values))} for word, values in sorted(scores.items())}


def evaluate_adherence(
    pipeline: Magic141Pipeline,
    settings: AdherenceSettings,
    prior: ImagePrior | None = None,
    on_case: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Every case's reading and scores, and their means: ``{"settings", "summary", "cases"}``."""
    from magic141.metrics import video_metrics
    from magic141.pipeline import fit_image
    from magic141.sampler import SamplerConfig
    from magic141.toy_eval import adherence

    preset = pipeline.preset
    if settings.first_frame == "prior" and prior is None:
        raise InputError("first frames from the prior need the text-to-image prior; pass one")
    num_frames = preset.window_frames if settings.seconds is None else round(settings.seconds * preset.fps)
    steps, guidance = preset.sampling(settings.steps, settings.guidance)
    sampler = SamplerConfig(steps=steps, guidance_scale=guidance, true_cfg_scale=settings.true_cfg,
                            flow_shift=preset.flow_shift, first_frame_anchor=settings.first_frame_anchor)
    negative = "" if settings.true_cfg > 1 else None
    cases = []
    for index, caption in enumerate(evaluation_captions(settings.split, settings.count)):
        seed = settings.seed * 100_003 + index
        if settings.first_frame == "world":
            scene = sample_scene(caption, preset.width, preset.height, seed)
            image = PIL.Image.fromarray(render_frame(scene, 0.0, preset.width, preset.height))
        else:
            image = fit_image(prior(caption.text, seed=seed), preset.width, preset.height)
        video, boundaries = sample_video(pipeline, image, caption.text, num_frames, seed, sampler, settings.windows,
                                         negative)
        scores = adherence(video, preset.fps, caption).to_dict()
        metrics = video_metrics(video, np.asarray(image.convert("RGB")), boundaries)
        cases.append({"caption": caption.text, "seed": seed, **scores, "flicker": metrics.flicker,
                      "motion_magnitude": metrics.motion, "first_frame_psnr": metrics.first_frame_psnr,
                      "first_frame_ssim": metrics.first_frame_ssim, "seam": metrics.seam})
        if on_case is not None:
            on_case(index + 1, settings.count)
    means = (*SCORES[:-1], "flicker", "motion_magnitude", "first_frame_ssim")
    summary: dict[str, Any] = {name: float(np.mean([case[name] for case in cases])) for name in means}
    summary["first_frame_psnr"] = float(np.median([case["first_frame_psnr"] for case in cases]))
    seams = [case["seam"] for case in cases if case["seam"] is not None]
    summary["seam"] = float(np.mean(seams)) if seams else None
    summary["frames"] = num_frames
    summary["by_caption_part"] = {part: by_caption_part(cases, part) for part in CAPTION_PARTS}
    settings_used = settings.__dict__ | {"steps": sampler.steps, "guidance": sampler.guidance_scale}
    return {"settings": settings_used, "summary": summary, "cases": cases}

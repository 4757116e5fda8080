"""Models held by the worker process: each preset is built or loaded once and reused by every task."""

from __future__ import annotations

import threading
from functools import lru_cache

import torch

from magic141.pipeline import Magic141Pipeline
from magic141.prior import ImagePrior

_build_lock = threading.Lock()


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


@lru_cache(maxsize=2)
def _pipeline(preset: str, device: str) -> Magic141Pipeline:
    return Magic141Pipeline.from_preset(preset, device)


@lru_cache(maxsize=2)
def _prior(preset: str, device: str) -> ImagePrior:
    return ImagePrior.from_preset(preset, device)


def video_pipeline(preset: str) -> Magic141Pipeline:
    """The image-to-video pipeline of ``preset`` on this worker's device, built on first use."""
    with _build_lock:
        return _pipeline(preset, default_device())


def image_prior(preset: str) -> ImagePrior:
    """The text-to-image prior of ``preset`` on this worker's device, built on first use."""
    with _build_lock:
        return _prior(preset, default_device())

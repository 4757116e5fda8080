"""Models held by the worker process: each model spec is built or loaded once and reused by every task."""

from __future__ import annotations

import threading
from functools import lru_cache
from typing import TYPE_CHECKING

from tasks.request import ModelSpec

if TYPE_CHECKING:  # the model libraries load on a model's first use, not at import (a CSV is checked first)
    from magic141.pipeline import Magic141Pipeline
    from magic141.prior import ImagePrior

_build_lock = threading.Lock()


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


@lru_cache(maxsize=2)
def _pipeline(spec: ModelSpec, device: str) -> Magic141Pipeline:
    from magic141.pipeline import Magic141Pipeline

    return Magic141Pipeline.from_preset(
        spec.preset, device, weights=spec.weights, quantize=spec.quantize, low_memory=spec.low_memory
    )


@lru_cache(maxsize=2)
def _prior(spec: ModelSpec, device: str) -> ImagePrior:
    from magic141.prior import ImagePrior
    from magic141.weight_paths import WeightPaths

    if spec.weights is None:
        return ImagePrior.from_preset(spec.preset, device)
    folder = WeightPaths.resolve(spec.weights).prior
    if folder is None:
        raise ValueError(f"weights {spec.weights!r} have no text-to-image prior (prior/); pass --image or add one")
    return ImagePrior.from_pretrained(folder, spec.preset, device)


def video_pipeline(spec: ModelSpec) -> Magic141Pipeline:
    """The image-to-video pipeline of ``spec`` on this worker's device, built on first use."""
    with _build_lock:
        return _pipeline(spec, default_device())


def image_prior(spec: ModelSpec) -> ImagePrior:
    """The text-to-image prior of ``spec`` on this worker's device, built on first use."""
    with _build_lock:
        return _prior(spec, default_device())

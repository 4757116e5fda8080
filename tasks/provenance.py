"""Provenance facts recorded with every video: library versions, the model fingerprint and how the model was made."""

from __future__ import annotations

import hashlib
import re
import subprocess
from functools import lru_cache
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from tasks.runtime.ffmpeg import ffmpeg_exe

PACKAGES = ("magic141", "torch", "diffusers", "transformers", "prefect", "sqlalchemy", "numpy", "pillow")


@lru_cache(maxsize=1)
def library_versions() -> dict[str, str]:
    """Versions of the packages that shape the output, and of the ffmpeg binary that encodes it."""
    versions = {}
    for package in PACKAGES:
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = "not installed"
    banner = subprocess.run([ffmpeg_exe(), "-version"], capture_output=True, text=True, check=False).stdout
    match = re.match(r"ffmpeg version (\S+)", banner)
    versions["ffmpeg"] = match.group(1) if match else "unknown"
    return versions


def combined_fingerprint(video_model: str, prior_model: str | None) -> str:
    """One fingerprint for every model that shaped a video: the I2V model, and the prior model if used."""
    if prior_model is None:
        return video_model
    return hashlib.sha256(f"i2v:{video_model};prior:{prior_model}".encode()).hexdigest()


def model_details(preset_name: str, weights: str | None) -> dict[str, Any]:
    """How the video model of ``preset_name`` (with ``weights``, else the preset's own) was made: its weights'
    source, its prompt format, convention and image-frames layout, and for a distilled student its teacher's
    fingerprint and distillation settings."""
    from magic141.presets import get_preset
    from magic141.weights import (
        WeightPaths,
        read_convention,
        read_distillation,
        read_image_frames,
        read_prompt_format,
    )

    source = weights if weights is not None else get_preset(preset_name).weights_folder
    if source is None:
        return {"weights": None, "prompt_format": None, "convention": None, "image_frames": None,
                "distillation": None}
    transformer = WeightPaths.resolve(source).transformer
    return {"weights": str(source), "prompt_format": read_prompt_format(transformer),
            "convention": read_convention(transformer), "image_frames": read_image_frames(transformer),
            "distillation": read_distillation(transformer)}

"""Provenance facts recorded with every video: library versions and the model fingerprint."""

from __future__ import annotations

import hashlib
import re
import subprocess
from functools import lru_cache
from importlib.metadata import PackageNotFoundError, version

from tasks.ffmpeg import ffmpeg_exe

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

"""Long-video window planning.

A window of T latent frames decodes to ``r * (T - 1) + 1`` pixel frames (r = the VAE's temporal
compression). In chained mode window k+1 is an I2V clip whose first frame is window k's last frame,
so its decoded frame 0 duplicates a frame already kept and is dropped when stitching.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Window:
    """One sampler window and the pixel frames it contributes to the stitched video."""

    index: int
    latent_frames: int  # T: latent frames sampled in this window
    start: int  # index in the stitched video of the first frame kept from this window
    keep: int  # frames kept from this window
    offset: int  # decoded frames skipped at the window's start (the duplicated boundary frame)

    @property
    def stop(self) -> int:
        return self.start + self.keep

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def decoded_frames(latent_frames: int, temporal_ratio: int = 4) -> int:
    """Pixel frames the causal VAE decodes from ``latent_frames`` latents."""
    return temporal_ratio * (latent_frames - 1) + 1


def latent_frames_for(pixel_frames: int, temporal_ratio: int = 4) -> int:
    """The fewest latent frames that decode to at least ``pixel_frames`` frames."""
    return math.ceil((pixel_frames - 1) / temporal_ratio) + 1


def plan_chained(num_frames: int, window_latent_frames: int, temporal_ratio: int = 4) -> list[Window]:
    """Chained windows covering exactly ``num_frames`` frames; the last window is shortened to fit."""
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if window_latent_frames < 2:
        raise ValueError(f"window_latent_frames must be >= 2 to chain windows, got {window_latent_frames}")
    windows: list[Window] = []
    produced = 0
    while produced < num_frames:
        offset = 0 if not windows else 1
        remaining = num_frames - produced
        latents = min(window_latent_frames, latent_frames_for(remaining + offset, temporal_ratio))
        keep = min(decoded_frames(latents, temporal_ratio) - offset, remaining)
        windows.append(Window(len(windows), latents, produced, keep, offset))
        produced += keep
    return windows

"""Long-video window planning.

A window of T latent frames decodes to ``r * (T - 1) + 1`` pixel frames (r = the VAE's temporal
compression). Two modes:

- **chained**: window k+1 is an I2V clip whose first frame is window k's last frame, so its decoded
  frame 0 duplicates a frame already kept and is dropped when stitching (``offset`` 1).
- **parallel** (co-denoising): one latent timeline of ``L`` frames is cut into overlapping windows of
  ``T`` latents with ``overlap`` latents in common; the last window is aligned to the end of the
  timeline. Decoded on its own, latents ``[a, b)`` give the video's frames ``r*a .. r*(b-1)``, so
  neighbours share ``r * (overlap - 1) + 1`` frames, crossfaded when stitching (``blend``). Where
  three windows would share frames (large overlaps, or the aligned last window) a window drops the
  frames its second predecessor still covers, so stitching only ever blends two windows.

Either way the stitched video has exactly the frames asked for: the last window keeps fewer.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from magic141.utils import InputError

WINDOW_MODES = ("chained", "parallel")


@dataclass(frozen=True)
class Window:
    """One sampler window and the pixel frames it contributes to the stitched video."""

    index: int
    latent_start: int  # first latent frame in the video's latent timeline
    latent_stop: int  # one past the last latent frame
    start: int  # frame of the stitched video that the first kept frame lands on
    keep: int  # decoded frames kept, including the ``blend`` frames shared with the previous window
    offset: int = 0  # decoded frames dropped at the window's start (chained: the duplicated boundary)
    blend: int = 0  # kept frames at the start crossfaded with the previous window's last ones

    @property
    def latent_frames(self) -> int:
        return self.latent_stop - self.latent_start

    @property
    def stop(self) -> int:
        """One past the last frame of the stitched video this window covers."""
        return self.start + self.keep

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def decoded_frames(latent_frames: int, temporal_ratio: int = 4) -> int:
    """Pixel frames the causal VAE decodes from ``latent_frames`` latents."""
    return temporal_ratio * (latent_frames - 1) + 1


def latent_frames_for(pixel_frames: int, temporal_ratio: int = 4) -> int:
    """The fewest latent frames that decode to at least ``pixel_frames`` frames."""
    return math.ceil((pixel_frames - 1) / temporal_ratio) + 1


def frames_for(seconds: float, fps: int) -> int:
    """Frames of a ``seconds`` long video at ``fps``: ``round(seconds * fps)``, at least 1."""
    if not (seconds > 0 and math.isfinite(seconds)):
        raise InputError(f"seconds must be a positive number, got {seconds}")
    if fps < 1:
        raise InputError(f"fps must be >= 1, got {fps}")
    return max(1, round(seconds * fps))


def _check(num_frames: int, window_latent_frames: int) -> None:
    if num_frames < 1:
        raise InputError(f"num_frames must be >= 1, got {num_frames}")
    if window_latent_frames < 2:
        raise InputError(f"window_latent_frames must be >= 2 to chain windows, got {window_latent_frames}")


def plan_chained(num_frames: int, window_latent_frames: int, temporal_ratio: int = 4) -> list[Window]:
    """Chained windows covering exactly ``num_frames`` frames; the last window is shortened to fit.

    Latent ranges place the windows on one timeline in which neighbours share their boundary latent.
    """
    _check(num_frames, window_latent_frames)
    windows: list[Window] = []
    produced = 0
    latent_start = 0
    while produced < num_frames:
        offset = 0 if not windows else 1
        remaining = num_frames - produced
        latents = min(window_latent_frames, latent_frames_for(remaining + offset, temporal_ratio))
        keep = min(decoded_frames(latents, temporal_ratio) - offset, remaining)
        windows.append(Window(len(windows), latent_start, latent_start + latents, produced, keep, offset))
        produced += keep
        latent_start += latents - 1
    return windows


def plan_parallel(
    num_frames: int, window_latent_frames: int, overlap_latent_frames: int, temporal_ratio: int = 4
) -> list[Window]:
    """Overlapping co-denoising windows over one latent timeline decoding to ``num_frames`` frames."""
    _check(num_frames, window_latent_frames)
    if not 1 <= overlap_latent_frames < window_latent_frames:
        raise InputError(
            f"overlap must be between 1 and {window_latent_frames - 1} latent frames "
            f"(window {window_latent_frames}), got {overlap_latent_frames}"
        )
    total = latent_frames_for(num_frames, temporal_ratio)
    size = min(window_latent_frames, total)
    stride = window_latent_frames - overlap_latent_frames
    starts = list(range(0, total - size, stride)) + [total - size]
    windows: list[Window] = []
    for index, latent_start in enumerate(starts):
        latent_stop = latent_start + size
        first = temporal_ratio * latent_start
        # At most two windows share a frame: skip what the window before the previous one still covers.
        start = max(first, windows[index - 2].stop) if index >= 2 else first
        stop = min(decoded_frames(latent_stop, temporal_ratio), num_frames)
        blend = windows[index - 1].stop - start if index else 0
        windows.append(Window(index, latent_start, latent_stop, start, stop - start, start - first, blend))
    return windows


def plan_windows(
    mode: str, num_frames: int, window_latent_frames: int, overlap_latent_frames: int, temporal_ratio: int = 4
) -> list[Window]:
    """The windows of ``mode`` (``chained`` or ``parallel``) for a ``num_frames`` video."""
    if mode == "chained":
        return plan_chained(num_frames, window_latent_frames, temporal_ratio)
    if mode == "parallel":
        return plan_parallel(num_frames, window_latent_frames, overlap_latent_frames, temporal_ratio)
    raise InputError(f"unknown window mode {mode!r}; use one of {', '.join(WINDOW_MODES)}")


def _ramp(length: int) -> np.ndarray:
    """Raised-cosine ramp rising over ``length`` frames, strictly between 0 and 1."""
    position = np.arange(1, length + 1, dtype=np.float64) / (length + 1)
    return np.sin(position * math.pi / 2) ** 2


def fusion_weights(windows: list[Window]) -> list[np.ndarray]:
    """Per-window weights over its latent frames, summing to 1 at every latent of the timeline.

    Each window ramps up over its overlap with the previous window and down over its overlap with
    the next one, so predictions hand over smoothly between neighbours.
    """
    total = max(window.latent_stop for window in windows)
    raw: list[np.ndarray] = []
    for k, window in enumerate(windows):
        weight = np.ones(window.latent_frames, dtype=np.float64)
        if k > 0:
            rise = windows[k - 1].latent_stop - window.latent_start
            weight[:rise] *= _ramp(rise)
        if k + 1 < len(windows):
            fall = window.latent_stop - windows[k + 1].latent_start
            weight[window.latent_frames - fall :] *= _ramp(fall)[::-1]
        raw.append(weight)
    norm = np.zeros(total, dtype=np.float64)
    for window, weight in zip(windows, raw):
        norm[window.latent_start : window.latent_stop] += weight
    return [weight / norm[w.latent_start : w.latent_stop] for w, weight in zip(windows, raw)]

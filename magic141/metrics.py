"""Quality metrics of a generated video that need no downloaded model.

- temporal flicker: VBench's formula, ``(255 - mean |f_t - f_{t-1}|) / 255`` over consecutive frames
  (1 is a still video);
- motion magnitude: the mean fraction of pixels that change by more than ``MOTION_THRESHOLD`` of the
  8-bit range between consecutive frames (0 is a still video);
- first-frame fidelity: PSNR (dB) and SSIM of frame 0 against the image the video was asked to start at;
- seam discontinuity: the mean frame difference across each window boundary over the median one inside
  the windows (about 1 when the boundaries cannot be seen; large when the video jumps there).

All take uint8 frames (F, H, W, 3).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from magic141.utils import InputError

MOTION_THRESHOLD = 0.1
_SSIM_C1, _SSIM_C2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2


def _check_frames(frames: np.ndarray) -> np.ndarray:
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise InputError(f"frames must be uint8 (F, H, W, 3), got {frames.dtype} {frames.shape}")
    return frames


def _frame_differences(frames: np.ndarray) -> np.ndarray:
    """Mean absolute difference of each consecutive pair, (F-1,) in 8-bit units."""
    frames = _check_frames(frames).astype(np.float32)
    return np.abs(np.diff(frames, axis=0)).mean(axis=(1, 2, 3))


def temporal_flicker(frames: np.ndarray) -> float:
    """VBench's temporal flickering score in [0, 1]; 1 for fewer than two frames."""
    if len(frames) < 2:
        return 1.0
    return float((255.0 - _frame_differences(frames).mean()) / 255.0)


def motion_magnitude(frames: np.ndarray) -> float:
    """Mean fraction of pixels whose largest channel change between consecutive frames exceeds the threshold."""
    frames = _check_frames(frames).astype(np.int16)
    if len(frames) < 2:
        return 0.0
    changed = np.abs(np.diff(frames, axis=0)).max(axis=-1) > MOTION_THRESHOLD * 255
    return float(changed.mean())


def psnr(image: np.ndarray, reference: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB of two uint8 images of one size; inf when they are equal."""
    if image.shape != reference.shape:
        raise InputError(f"images differ in size: {image.shape} and {reference.shape}")
    mse = float(np.mean((image.astype(np.float64) - reference.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).expand(3, 1, size, size).contiguous()


def ssim(image: np.ndarray, reference: np.ndarray) -> float:
    """Structural similarity (Wang et al. 2004: 11x11 Gaussian window, sigma 1.5), averaged over RGB."""
    if image.shape != reference.shape:
        raise InputError(f"images differ in size: {image.shape} and {reference.shape}")
    a, b = (torch.from_numpy(np.ascontiguousarray(x)).double().permute(2, 0, 1)[None] for x in (image, reference))
    window = _gaussian_window(min(11, *image.shape[:2]))

    def blur(x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, window, groups=3)

    mu_a, mu_b = blur(a), blur(b)
    var_a, var_b = blur(a * a) - mu_a**2, blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    score = ((2 * mu_a * mu_b + _SSIM_C1) * (2 * cov + _SSIM_C2)) / (
        (mu_a**2 + mu_b**2 + _SSIM_C1) * (var_a + var_b + _SSIM_C2)
    )
    return float(score.mean())


def seam_discontinuity(frames: np.ndarray, boundaries: Sequence[int]) -> float | None:
    """Mean difference across the window boundaries over the median difference inside the windows.

    ``boundaries`` are the indices of the frames that start a window after the first; None without any.
    """
    starts = [b for b in boundaries if 0 < b < len(frames)]
    if not starts:
        return None
    differences = _frame_differences(frames)  # differences[i] is between frames i and i + 1
    across = differences[[b - 1 for b in starts]]
    inside = np.delete(differences, [b - 1 for b in starts])
    baseline = float(np.median(inside)) if len(inside) else 0.0
    return float(across.mean() / max(baseline, 1e-3))


@dataclass(frozen=True)
class VideoMetrics:
    """The general metrics of one video, as stored in the catalog."""

    flicker: float
    motion: float
    first_frame_psnr: float | None
    first_frame_ssim: float | None
    seam: float | None

    def to_dict(self) -> dict[str, float | None]:
        return asdict(self)


def video_metrics(
    frames: np.ndarray, first_frame: np.ndarray | None = None, boundaries: Sequence[int] = ()
) -> VideoMetrics:
    """Every metric of ``frames``; first-frame fidelity against ``first_frame`` (H, W, 3) when given."""
    _check_frames(frames)
    fidelity_psnr = fidelity_ssim = None
    if first_frame is not None:
        fidelity_psnr = min(psnr(frames[0], first_frame), 100.0)
        fidelity_ssim = ssim(frames[0], first_frame)
    return VideoMetrics(
        temporal_flicker(frames), motion_magnitude(frames), fidelity_psnr, fidelity_ssim,
        seam_discontinuity(frames, boundaries),
    )

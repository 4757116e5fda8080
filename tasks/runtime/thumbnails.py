"""Contact sheets: a JPEG grid of evenly spaced frames, saved next to its video for dashboards and the catalog."""

from __future__ import annotations

import logging
import math
import os
import subprocess
from pathlib import Path

import numpy as np
import PIL.Image

from magic141.utils import InputError, atomic_file
from tasks.runtime.ffmpeg import ProbeError, ffmpeg_exe, probe

logger = logging.getLogger(__name__)

DEFAULT_FRAMES = 8
DEFAULT_COLUMNS = 4
DEFAULT_TILE_WIDTH = 160
JPEG_QUALITY = 88


def contact_sheet_path(video: str | os.PathLike[str]) -> Path:
    """Where a video's contact sheet goes: ``<stem>.jpg`` beside it."""
    return Path(video).with_suffix(".jpg")


def frame_indices(total: int, count: int) -> list[int]:
    """``count`` frame numbers spread evenly over ``total`` frames, first and last included (the middle one if one)."""
    count = min(count, total)
    if count == 1:
        return [(total - 1) // 2]
    return [round(i * (total - 1) / (count - 1)) for i in range(count)]


def _read_frames(video: Path, indices: list[int], width: int, height: int) -> np.ndarray:
    """The frames at ``indices``, scaled to ``width`` x ``height``, as (N, H, W, 3) uint8."""
    chosen = "+".join(f"eq(n,{index})" for index in indices)
    command = [
        ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-i", str(video),
        "-map", "0:v:0", "-vf", f"select='{chosen}',scale={width}:{height}:flags=area",
        "-fps_mode", "passthrough", "-f", "rawvideo", "-pix_fmt", "rgb24", "pipe:1",
    ]
    try:
        result = subprocess.run(command, capture_output=True, check=False)
    except OSError as exc:
        raise ProbeError(f"cannot read frames of {video.name}: could not run ffmpeg: {exc}") from exc
    frame_bytes = width * height * 3
    if result.returncode != 0 or len(result.stdout) != frame_bytes * len(indices):
        lines = result.stderr.decode("utf-8", "replace").strip().splitlines()
        reason = lines[-1] if lines else f"got {len(result.stdout) // frame_bytes} of {len(indices)} frames"
        raise ProbeError(f"cannot read frames of {video.name}: {reason}")
    return np.frombuffer(result.stdout, np.uint8).reshape(len(indices), height, width, 3)


def write_contact_sheet(
    video: str | os.PathLike[str],
    frames: int = DEFAULT_FRAMES,
    columns: int = DEFAULT_COLUMNS,
    tile_width: int = DEFAULT_TILE_WIDTH,
) -> Path:
    """Write ``<stem>.jpg`` next to ``video``: ``frames`` evenly spaced frames in rows of ``columns``.

    Tiles are ``tile_width`` pixels wide (at most the video's width) and keep the video's aspect
    ratio; a last row that is not full is black on the right. A video shorter than ``frames``
    shows every frame. The sheet appears atomically (written beside it, then renamed), readable
    like any new file (``0644`` under the usual umask), and replaces an older sheet. Raises
    ``ProbeError`` when the video cannot be read.
    """
    for name, value, least in (("frames", frames, 1), ("columns", columns, 1), ("tile_width", tile_width, 2)):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise InputError(f"{name} must be an integer >= {least}, got {value!r}")
    source = Path(video).absolute()
    info = probe(source)
    indices = frame_indices(info.frames, frames)
    width = min(tile_width, info.width)
    height = max(1, round(width * info.height / info.width))
    tiles = _read_frames(source, indices, width, height)
    across = min(columns, len(indices))
    down = math.ceil(len(indices) / across)
    sheet = np.zeros((down * height, across * width, 3), np.uint8)
    for number, tile in enumerate(tiles):
        top, left = (number // across) * height, (number % across) * width
        sheet[top : top + height, left : left + width] = tile
    target = contact_sheet_path(source)
    with atomic_file(target) as out:
        PIL.Image.fromarray(sheet).save(out, format="JPEG", quality=JPEG_QUALITY)
    logger.info("contact sheet of %s: %d frames in a %dx%d grid at %s", source.name, len(indices), across, down, target)
    return target


def write_videos_sheet(
    videos: list[tuple[str, str | os.PathLike[str]]], out: str | os.PathLike[str], frames: int = DEFAULT_FRAMES,
    tile_width: int = DEFAULT_TILE_WIDTH,
) -> Path:
    """Write one PNG of several videos: a row per ``(label, video)``, its label above ``frames`` evenly spaced
    frames from the first to the last (each row at its own video's aspect ratio). Written atomically."""
    import PIL.ImageDraw
    import PIL.ImageFont

    if not videos:
        raise InputError("no videos to put on a contact sheet")
    font = PIL.ImageFont.load_default()
    label_height = 14
    rows = []
    for label, video in videos:
        source = Path(video)
        info = probe(source)
        width = min(tile_width, info.width * 4)
        height = max(1, round(width * info.height / info.width))
        strip = np.concatenate(list(_read_frames(source, frame_indices(info.frames, frames), width, height)), axis=1)
        row = PIL.Image.new("RGB", (strip.shape[1], strip.shape[0] + label_height), "white")
        row.paste(PIL.Image.fromarray(strip), (0, label_height))
        PIL.ImageDraw.Draw(row).text((2, 1), label, fill="black", font=font)
        rows.append(row)
    sheet = PIL.Image.new("RGB", (max(r.width for r in rows), sum(r.height for r in rows)), "white")
    top = 0
    for row in rows:
        sheet.paste(row, (0, top))
        top += row.height
    target = Path(out)
    with atomic_file(target) as handle:
        sheet.save(handle, format="PNG")
    logger.info("contact sheet of %d videos at %s", len(videos), target)
    return target

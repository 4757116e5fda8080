"""Contact sheets read from real encoded videos: grid shape, which frames, atomic output."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import PIL.Image
import pytest

from tasks.runtime.ffmpeg import ProbeError, VideoWriter
from tasks.runtime.thumbnails import frame_indices, write_contact_sheet

STEP = 8


def encode_grey_ramp(path: Path, frames: int, width: int = 64, height: int = 48) -> Path:
    """Frame i is uniformly grey at level 8 * i, so a tile's brightness says which frame it shows."""
    with VideoWriter(path, width, height, 12, crf=0, preset="ultrafast", expected_frames=frames) as writer:
        for index in range(frames):
            writer.write(np.full((height, width, 3), STEP * index, np.uint8))
    return path


def tile_levels(sheet: PIL.Image.Image, across: int, down: int) -> list[float]:
    pixels = np.asarray(sheet.convert("L"), dtype=np.float64)
    height, width = pixels.shape[0] // down, pixels.shape[1] // across
    return [
        pixels[r * height + 2 : (r + 1) * height - 2, c * width + 2 : (c + 1) * width - 2].mean()
        for r in range(down)
        for c in range(across)
    ]


def test_sheet_shows_evenly_spaced_frames_in_a_grid(tmp_path: Path) -> None:
    video = encode_grey_ramp(tmp_path / "ramp.mp4", 30)

    sheet_path = write_contact_sheet(video, frames=8, columns=4, tile_width=32)

    assert sheet_path == tmp_path / "ramp.jpg"
    with PIL.Image.open(sheet_path) as sheet:
        assert (sheet.format, sheet.size) == ("JPEG", (4 * 32, 2 * 24))
        levels = tile_levels(sheet, 4, 2)
    expected = [STEP * index for index in frame_indices(30, 8)]
    assert expected[0] == 0 and expected[-1] == STEP * 29
    assert np.allclose(levels, expected, atol=4), (levels, expected)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ramp.jpg", "ramp.mp4"], "no temporary file is left"


def test_short_video_shows_every_frame_and_a_partial_row_is_black(tmp_path: Path) -> None:
    video = encode_grey_ramp(tmp_path / "short.mp4", 5, width=32, height=32)

    with PIL.Image.open(write_contact_sheet(video, frames=8, columns=3, tile_width=64)) as sheet:
        assert sheet.size == (3 * 32, 2 * 32), "tiles are never wider than the video"
        levels = tile_levels(sheet, 3, 2)
    assert np.allclose(levels[:5], [0, 8, 16, 24, 32], atol=4) and levels[5] < 4


def test_sheet_is_replaced_when_written_again(tmp_path: Path) -> None:
    video = encode_grey_ramp(tmp_path / "v.mp4", 12)
    first = write_contact_sheet(video, frames=1)
    with PIL.Image.open(first) as sheet:
        assert sheet.size == (64, 48) and tile_levels(sheet, 1, 1)[0] == pytest.approx(STEP * 5, abs=4)

    with PIL.Image.open(write_contact_sheet(video, frames=4, columns=2)) as sheet:
        assert sheet.size == (128, 96)


@pytest.mark.parametrize(("umask", "expected"), [(0o022, 0o644), (0o027, 0o640)])
def test_sheet_is_readable_like_the_video_beside_it(tmp_path: Path, umask: int, expected: int) -> None:
    previous = os.umask(umask)
    try:
        video = encode_grey_ramp(tmp_path / "v.mp4", 6)
        sheet = write_contact_sheet(video, frames=2)
    finally:
        os.umask(previous)
    assert stat.S_IMODE(sheet.stat().st_mode) == stat.S_IMODE(video.stat().st_mode) == expected


def test_unreadable_video_is_a_one_line_error_and_writes_nothing(tmp_path: Path) -> None:
    fake = tmp_path / "fake.mp4"
    fake.write_bytes(b"not a video at all" * 50)

    with pytest.raises(ProbeError) as info:
        write_contact_sheet(fake)
    assert "fake.mp4" in str(info.value) and "\n" not in str(info.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fake.mp4"]


@pytest.mark.parametrize(("name", "value"), [("frames", 0), ("columns", 0), ("tile_width", 1)])
def test_bad_layout_is_refused(tmp_path: Path, name: str, value: int) -> None:
    with pytest.raises(ValueError, match=name):
        write_contact_sheet(tmp_path / "any.mp4", **{name: value})


def test_frame_indices_cover_the_video() -> None:
    assert frame_indices(30, 4) == [0, 10, 19, 29]
    assert frame_indices(3, 8) == [0, 1, 2]
    assert frame_indices(9, 1) == [4]

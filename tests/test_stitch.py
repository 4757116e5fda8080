"""The stitcher writes windows in order, whatever order they arrive in, crossfading overlaps."""

from pathlib import Path

import numpy as np
import pytest

from magic141.windows import plan_chained, plan_parallel
from tasks.runtime.ffmpeg import VideoWriter, crossfade, probe
from tasks.runtime.stitch import Stitcher

H, W = 16, 16


class Frames:
    """A VideoWriter stand-in recording what would be encoded (the real encoder is tested in test_ffmpeg)."""

    def __init__(self) -> None:
        self.frames: list[np.ndarray] = []

    def write(self, frames: np.ndarray) -> None:
        self.frames.extend(frames)


def solid(window_index: int, count: int) -> np.ndarray:
    return np.full((count, H, W, 3), 10 + 20 * window_index, dtype=np.uint8)


@pytest.mark.parametrize("order", ["in_order", "reversed", "interleaved"])
def test_parallel_windows_stitch_to_the_exact_length_with_crossfades(order: str):
    plan = plan_parallel(150, 9, 3)
    sink = Frames()
    stitcher = Stitcher(sink, plan)
    indices = list(range(len(plan)))
    if order == "reversed":
        indices.reverse()
    elif order == "interleaved":
        indices = indices[1::2] + indices[::2]
    for index in indices:
        stitcher.add(index, solid(index, plan[index].keep))
    assert stitcher.done and stitcher.held == 0
    video = np.stack(sink.frames)
    assert video.shape == (150, H, W, 3)
    for previous, current in zip(plan, plan[1:]):
        blended = video[current.start : previous.stop]
        expected = crossfade(solid(previous.index, current.blend), solid(current.index, current.blend))
        assert np.array_equal(blended, expected), f"overlap of windows {previous.index} and {current.index}"
        unshared_end = plan[current.index + 1].start if current.index + 1 < len(plan) else current.stop
        assert (video[previous.stop : unshared_end] == 10 + 20 * current.index).all()


def test_chained_windows_are_concatenated():
    plan = plan_chained(100, 9)
    sink = Frames()
    stitcher = Stitcher(sink, plan)
    for window in plan:
        stitcher.add(window.index, solid(window.index, window.keep))
    video = np.stack(sink.frames)
    assert video.shape[0] == 100
    for window in plan:
        assert (video[window.start : window.stop] == 10 + 20 * window.index).all()


def test_windows_added_twice_or_with_wrong_length_are_refused():
    plan = plan_parallel(100, 9, 2)
    stitcher = Stitcher(Frames(), plan)
    stitcher.add(1, solid(1, plan[1].keep))
    with pytest.raises(ValueError, match="window 1 was already stitched"):
        stitcher.add(1, solid(1, plan[1].keep))
    with pytest.raises(ValueError, match="window 0 has 3 frames, the plan keeps 33"):
        stitcher.add(0, solid(0, 3))
    with pytest.raises(ValueError, match="window 9 is not in the plan"):
        stitcher.add(9, solid(0, 3))


def test_stitched_windows_encode_to_the_planned_frame_count(tmp_path: Path):
    plan = plan_parallel(61, 9, 2)
    out = tmp_path / "v.mp4"
    with VideoWriter(out, W, H, 24, expected_frames=61) as writer:
        stitcher = Stitcher(writer, plan)
        for window in reversed(plan):
            stitcher.add(window.index, solid(window.index, window.keep))
    assert probe(out).frames == 61

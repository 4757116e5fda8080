"""Stitch decoded windows, arriving in any order, into one video stream with crossfaded overlaps."""

from __future__ import annotations

import numpy as np

from magic141.windows import Window
from tasks.runtime.ffmpeg import VideoWriter, crossfade


class Stitcher:
    """Writes each window's frames to ``writer`` in plan order as soon as its predecessors are in.

    A window's first ``blend`` frames are crossfaded with the previous window's last ones; frames that
    the next window will blend with are held back until it arrives. Windows that arrive early wait in
    memory, so what is held is bounded by how many windows are in flight, not by the video's length.
    """

    def __init__(self, writer: VideoWriter, plan: list[Window]) -> None:
        self._writer = writer
        self._plan = plan
        self._early: dict[int, np.ndarray] = {}
        self._next = 0
        self._tail = np.empty((0,), dtype=np.uint8)

    @property
    def done(self) -> bool:
        return self._next == len(self._plan)

    @property
    def held(self) -> int:
        """Windows received but not yet written."""
        return len(self._early)

    def add(self, index: int, frames: np.ndarray) -> None:
        """Accept window ``index``'s kept frames (keep, H, W, 3) uint8 and write what is ready."""
        if not 0 <= index < len(self._plan):
            raise ValueError(f"window {index} is not in the plan of {len(self._plan)} windows")
        if index < self._next or index in self._early:
            raise ValueError(f"window {index} was already stitched; each window is added once")
        expected = self._plan[index].keep
        if frames.shape[0] != expected:
            raise ValueError(f"window {index} has {frames.shape[0]} frames, the plan keeps {expected}")
        self._early[index] = frames
        while self._next in self._early:
            self._write(self._plan[self._next], self._early.pop(self._next))
            self._next += 1

    def _write(self, window: Window, frames: np.ndarray) -> None:
        if window.blend:
            self._writer.write(crossfade(self._tail, frames[: window.blend]))
            frames = frames[window.blend :]
        hold = self._plan[window.index + 1].blend if window.index + 1 < len(self._plan) else 0
        self._writer.write(frames[: frames.shape[0] - hold])
        self._tail = frames[frames.shape[0] - hold :].copy()

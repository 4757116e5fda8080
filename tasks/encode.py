"""Encode stage: stream the rendered windows into one H.264 mp4 (temporary name, then renamed)."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import numpy as np
from prefect import get_run_logger, task

from tasks.ffmpeg import VideoWriter, probe, sha256_file
from tasks.progress import StageProgress


@dataclass(frozen=True)
class EncodeResult:
    """The finished video file and what ffmpeg reads back from it."""

    path: str
    sha256: str
    bytes: int
    frames: int
    fps: int
    width: int
    height: int
    seconds: float


@task(name="encode")
def encode_video(window_files: list[str], out: str, fps: int, width: int, height: int, num_frames: int) -> EncodeResult:
    """Write the frames of ``window_files`` in order to ``out``; exactly ``num_frames`` frames or nothing."""
    logger = get_run_logger()
    started = time.perf_counter()
    progress = StageProgress("encode", f"Encoding {num_frames} frames")
    with VideoWriter(out, width, height, fps, expected_frames=num_frames, preset="veryfast") as writer:
        for path in window_files:
            writer.write(np.load(path, allow_pickle=False))
            progress.update(writer.frames_written, num_frames)
    info = probe(out)
    if info.frames != num_frames or round(info.fps) != fps:
        os.remove(out)
        raise RuntimeError(f"encoded {out} read back as {info.frames} frames at {info.fps} fps, "
                           f"expected {num_frames} at {fps}; the file was removed")
    logger.info("encoded %s: %d frames at %d fps, %dx%d", out, info.frames, fps, info.width, info.height)
    return EncodeResult(
        out, sha256_file(out), os.path.getsize(out), info.frames, fps, info.width, info.height,
        time.perf_counter() - started,
    )

"""ffmpeg runtime of the pipeline: H.264 encoding, probing, crossfades and checksums.

Everything here drives the ffmpeg binary shipped with ``imageio-ffmpeg`` through
argument lists (never a shell). Encoded videos are written to a temporary file
next to the destination and atomically renamed into place only once ffmpeg has
succeeded and the frame count is right, so a partial or wrong video never
appears at the destination path.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Final

import imageio_ffmpeg
import numpy as np

from magic141.utils import atomic_path

logger = logging.getLogger(__name__)

PRESETS: Final[frozenset[str]] = frozenset(
    {"ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow"}
)
_COLOR_FILTER: Final[str] = (
    "scale=out_color_matrix=bt709:out_range=tv:flags=bicubic+accurate_rnd+full_chroma_int+bitexact,"
    "format=yuv420p,"
    "setparams=range=tv:colorspace=bt709:color_primaries=bt709:color_trc=bt709"
)
_STDERR_TAIL: Final[int] = 64 * 1024

_STREAM_RE: Final[re.Pattern[str]] = re.compile(
    r"^\s*Stream #0:\d+\S*: Video: (?P<codec>[\w-]+)[^,]*, (?P<pix_fmt>\w+)(?:\([^)]*\))?, "
    r"(?P<width>\d+)x(?P<height>\d+)(?P<rest>.*)$",
    re.MULTILINE,
)
_FPS_RE: Final[re.Pattern[str]] = re.compile(r"(?P<value>\d+(?:\.\d+)?)(?P<k>k?) (?P<kind>fps|tbr)\b")
_DURATION_RE: Final[re.Pattern[str]] = re.compile(r"Duration: (?P<h>\d+):(?P<m>\d{2}):(?P<s>\d{2}(?:\.\d+)?)")
_FRAME_RE: Final[re.Pattern[str]] = re.compile(r"^frame=\s*(\d+)\s*$", re.MULTILINE)


class EncodeError(RuntimeError):
    """Encoding failed; nothing was written to the destination."""


class ProbeError(RuntimeError):
    """A file could not be read as a video."""


@dataclass(frozen=True)
class VideoInfo:
    """Properties of the first video stream of a file."""

    codec: str
    pix_fmt: str
    width: int
    height: int
    fps: float
    frames: int
    duration_s: float


def ffmpeg_exe() -> str:
    """Path of the ffmpeg binary (``IMAGEIO_FFMPEG_EXE`` overrides the bundled one)."""
    return imageio_ffmpeg.get_ffmpeg_exe()


def _last_line(text: str) -> str:
    """Last non-empty line of ``text``, or a placeholder."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "<no stderr output>"


def _positive_int(name: str, value: object) -> int:
    """``value`` as a positive int, or ValueError."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


class VideoWriter:
    """Stream RGB uint8 frames into one ffmpeg process producing an H.264/yuv420p mp4.

    RGB is converted with the BT.709 matrix (limited range) and tagged as BT.709.
    Use as a context manager; frames go to ``.<name>.<random>.part.mp4`` beside
    ``path`` and are renamed onto ``path`` only when the block exits cleanly,
    ffmpeg succeeded and (if given) exactly ``expected_frames`` were written.
    Otherwise the temporary file is removed and ``path`` is left untouched.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        width: int,
        height: int,
        fps: int,
        *,
        crf: int = 18,
        preset: str = "medium",
        expected_frames: int | None = None,
        threads: int = 1,
    ) -> None:
        """Validate settings; ffmpeg starts on ``__enter__``."""
        self.path = Path(path).absolute()
        self.width = _positive_int("width", width)
        self.height = _positive_int("height", height)
        if self.width % 2 or self.height % 2:
            raise ValueError(
                f"width and height must be even for yuv420p, got {self.width}x{self.height}"
            )
        self.fps = _positive_int("fps", fps)
        if isinstance(crf, bool) or not isinstance(crf, (int, np.integer)) or not 0 <= crf <= 51:
            raise ValueError(f"crf must be an integer in [0, 51], got {crf!r}")
        self.crf = int(crf)
        if preset not in PRESETS:
            raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {preset!r}")
        self.preset = preset
        self.expected_frames = (
            None if expected_frames is None else _positive_int("expected_frames", expected_frames)
        )
        self.threads = _positive_int("threads", threads)
        self.frames_written = 0
        self._frame_shape = (self.height, self.width, 3)
        self._tmp: Path | None = None
        self._publish: contextlib.ExitStack | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._stderr: IO[bytes] | None = None

    def __enter__(self) -> VideoWriter:
        """Start ffmpeg writing to a fresh temporary file beside the destination."""
        if self._proc is not None:
            raise RuntimeError("VideoWriter is already open")
        self.frames_written = 0
        self._publish = contextlib.ExitStack()
        self._tmp = self._publish.enter_context(atomic_path(self.path))
        self._stderr = tempfile.TemporaryFile()
        cmd = self._command(self._tmp)
        logger.debug("starting ffmpeg: %s", cmd)
        try:
            self._proc = subprocess.Popen(
                cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=self._stderr
            )
        except OSError as exc:
            self._cleanup()
            raise EncodeError(f"could not start ffmpeg: {exc}") from exc
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Finalize on success; on an exception discard the output and let it propagate."""
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def write(self, frames: np.ndarray) -> None:
        """Append one frame (H, W, 3) or a batch (N, H, W, 3) of RGB uint8 frames."""
        if self._proc is None or self._proc.stdin is None:
            raise RuntimeError("VideoWriter is not open; use it as a context manager")
        if not isinstance(frames, np.ndarray) or frames.dtype != np.uint8:
            raise ValueError(
                f"frames must be a uint8 ndarray of shape {self._frame_shape} or "
                f"(N, {self.height}, {self.width}, 3), got "
                f"{type(frames).__name__} of dtype {getattr(frames, 'dtype', None)}"
            )
        if frames.shape == self._frame_shape:
            count = 1
        elif frames.ndim == 4 and frames.shape[1:] == self._frame_shape:
            count = frames.shape[0]
        else:
            raise ValueError(
                f"frames must have shape {self._frame_shape} or "
                f"(N, {self.height}, {self.width}, 3), got {frames.shape}"
            )
        if count == 0:
            return
        try:
            self._proc.stdin.write(memoryview(np.ascontiguousarray(frames)).cast("B"))
        except OSError as exc:
            message = self._failure_message(f"ffmpeg stopped accepting frames ({exc})")
            self.abort()
            raise EncodeError(message) from exc
        self.frames_written += count

    def close(self) -> Path:
        """Finish encoding, fsync and atomically move the file onto the destination."""
        proc, tmp = self._proc, self._tmp
        if proc is None or tmp is None:
            raise RuntimeError("VideoWriter is not open")
        if self.frames_written == 0 or (
            self.expected_frames is not None and self.frames_written != self.expected_frames
        ):
            expected = self.expected_frames if self.expected_frames is not None else "at least 1"
            self.abort()
            raise EncodeError(
                f"wrote {self.frames_written} frames to {self.path.name}, expected {expected}; "
                "output discarded"
            )
        try:
            if proc.stdin is not None:
                proc.stdin.close()
        except OSError:
            pass
        returncode = proc.wait()
        if returncode != 0:
            message = self._failure_message(f"ffmpeg exited with code {returncode}")
            self.abort()
            raise EncodeError(message)
        publish, self._publish, self._tmp = self._publish, None, None
        try:
            publish.close()  # fsync, rename onto the destination, fsync the folder
        except OSError as exc:
            self._cleanup()
            raise EncodeError(f"could not finalize {self.path}: {exc}") from exc
        self._cleanup()
        logger.info(
            "encoded %d frames at %d fps (%dx%d) to %s",
            self.frames_written, self.fps, self.width, self.height, self.path,
        )
        return self.path

    def abort(self) -> None:
        """Stop ffmpeg and delete the temporary file; the destination is untouched."""
        if self._tmp is not None:
            logger.warning("discarding partial encode of %s", self.path)
        self._cleanup()

    def _command(self, tmp: Path) -> list[str]:
        """ffmpeg argument list encoding rgb24 from stdin into ``tmp``."""
        return [
            ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-y",
            "-f", "rawvideo", "-pix_fmt", "rgb24",
            "-s", f"{self.width}x{self.height}", "-framerate", str(self.fps),
            "-i", "pipe:0",
            "-an", "-map", "0:v:0",
            "-vf", _COLOR_FILTER,
            "-c:v", "libx264", "-preset", self.preset, "-crf", str(self.crf),
            "-pix_fmt", "yuv420p", "-threads", str(self.threads),
            "-fflags", "+bitexact", "-flags:v", "+bitexact", "-map_metadata", "-1",
            "-movflags", "+faststart", "-f", "mp4", str(tmp),
        ]

    def _failure_message(self, what: str) -> str:
        """One-line error message with ffmpeg's last stderr line."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        tail = ""
        if self._stderr is not None:
            self._stderr.flush()
            size = self._stderr.seek(0, os.SEEK_END)
            self._stderr.seek(max(0, size - _STDERR_TAIL))
            tail = self._stderr.read().decode("utf-8", "replace")
        if tail.strip():
            logger.debug("ffmpeg stderr for %s:\n%s", self.path, tail)
        return f"encoding {self.path.name} failed: {what}: {_last_line(tail)}"

    def _cleanup(self) -> None:
        """Release the process, the stderr capture and any temporary file."""
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.poll() is None:
                proc.kill()
            if proc.stdin is not None:
                try:
                    proc.stdin.close()
                except OSError:
                    pass
            proc.wait()
        stderr, self._stderr = self._stderr, None
        if stderr is not None:
            stderr.close()
        self._tmp = None
        publish, self._publish = self._publish, None
        if publish is not None:
            publish.__exit__(EncodeError, EncodeError(f"encode of {self.path.name} abandoned"), None)


def crossfade(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Blend equal stacks (N, H, W, 3) uint8: ``out[i] = a*(1-w) + b*w``, ``w = (i+1)/(N+1)``."""
    if a.shape != b.shape:
        raise ValueError(f"crossfade needs equal shapes, got {a.shape} and {b.shape}")
    if a.ndim != 4 or a.shape[-1] != 3 or a.dtype != np.uint8 or b.dtype != np.uint8:
        raise ValueError(
            f"crossfade needs uint8 stacks of shape (N, H, W, 3), got {a.shape} "
            f"{a.dtype} and {b.dtype}"
        )
    n = a.shape[0]
    out = np.empty_like(a)
    for i in range(n):
        w = (i + 1) / (n + 1)
        blend = a[i] * (1.0 - w) + b[i] * w
        np.clip(np.rint(blend), 0, 255, out=blend)
        out[i] = blend.astype(np.uint8)
    return out


def _parse_fps(rest: str) -> float:
    """Frame rate from a stream line's tail, preferring the average rate over tbr."""
    rates = {m["kind"]: float(m["value"]) * (1000.0 if m["k"] else 1.0) for m in _FPS_RE.finditer(rest)}
    fps = rates.get("fps") or rates.get("tbr")
    if not fps:
        raise ValueError("no frame rate on the video stream line")
    return fps


def probe(path: str | os.PathLike[str]) -> VideoInfo:
    """Describe the first video stream of ``path``; frames are counted exactly by demuxing."""
    src = Path(path).absolute()
    if not src.is_file():
        raise ProbeError(f"cannot probe {src}: not a file")
    cmd = [
        ffmpeg_exe(), "-hide_banner", "-nostdin", "-i", str(src),
        "-map", "0:v:0", "-c", "copy", "-f", "null", "-",
        "-progress", "pipe:1", "-nostats",
    ]
    try:
        result = subprocess.run(cmd, capture_output=True, check=False)
    except OSError as exc:
        raise ProbeError(f"cannot probe {src.name}: could not run ffmpeg: {exc}") from exc
    stderr = result.stderr.decode("utf-8", "replace")
    stdout = result.stdout.decode("utf-8", "replace")
    if result.returncode != 0:
        raise ProbeError(f"cannot probe {src.name}: not a readable video: {_last_line(stderr)}")
    stream = _STREAM_RE.search(stderr)
    frames = _FRAME_RE.findall(stdout)
    if stream is None or not frames:
        raise ProbeError(f"cannot probe {src.name}: no video stream information in ffmpeg output")
    try:
        fps = _parse_fps(stream["rest"])
    except ValueError as exc:
        raise ProbeError(f"cannot probe {src.name}: {exc}") from exc
    count = int(frames[-1])
    duration = _DURATION_RE.search(stderr)
    duration_s = (
        int(duration["h"]) * 3600 + int(duration["m"]) * 60 + float(duration["s"])
        if duration
        else count / fps
    )
    return VideoInfo(
        codec=stream["codec"],
        pix_fmt=stream["pix_fmt"],
        width=int(stream["width"]),
        height=int(stream["height"]),
        fps=fps,
        frames=count,
        duration_s=duration_s,
    )

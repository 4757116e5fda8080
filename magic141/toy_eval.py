"""Prompt adherence in the toy world, read off the frames by simple vision.

The background is the median of the frame's outer ring of pixels (objects never touch the border);
the object is the largest connected patch of pixels far from it (a decoder's stray pixels, at a corner
or in a halo apart from the object, are not the object). Its colour and the background are the nearest colours of the
world's palette; its shape comes from its outline (a triangle is narrow at the top, a square fills
its bounding box, a circle fills about pi/4 of it); its motion from the track of its centre and the
change of its size over a second.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from magic141.toy_world import BACKGROUNDS, COLOURS, Caption

OBJECT_DISTANCE = 60.0  # 8-bit RGB distance from the background that makes a pixel part of the object
MIN_OBJECT_PIXELS = 6
MOVE_FRACTION = 0.08  # of the frame's extent per second, below which an object stands still
SIZE_CHANGE = 1.15  # ratio of linear size over a second that counts as growing or shrinking


def _nearest(colour: np.ndarray, palette: dict[str, tuple[int, int, int]]) -> str:
    names = list(palette)
    distances = [float(np.linalg.norm(colour - np.asarray(palette[n], np.float32))) for n in names]
    return names[int(np.argmin(distances))]


@dataclass(frozen=True)
class FrameReading:
    """What one frame shows: background, and the object's colour, shape, centre and size (None: no object)."""

    background: str
    colour: str | None
    shape: str | None
    centre: tuple[float, float] | None
    size: float  # square root of the object's area in pixels


def read_frame(frame: np.ndarray) -> FrameReading:
    """Read one (H, W, 3) uint8 frame."""
    pixels = frame.astype(np.float32)
    ring = np.concatenate([pixels[0], pixels[-1], pixels[1:-1, 0], pixels[1:-1, -1]])
    background_rgb = np.median(ring, axis=0)
    background = _nearest(background_rgb, BACKGROUNDS)
    distance = np.linalg.norm(pixels - background_rgb, axis=-1)
    mask = _largest_component(distance > OBJECT_DISTANCE)
    if mask.sum() < MIN_OBJECT_PIXELS:
        return FrameReading(background, None, None, None, 0.0)
    core = distance > max(OBJECT_DISTANCE, 0.6 * float(distance[mask].max()))
    colour = _nearest(np.median(pixels[core], axis=0), COLOURS)
    ys, xs = np.nonzero(mask)
    centre = (float(xs.mean()), float(ys.mean()))
    return FrameReading(background, colour, _shape(mask, ys, xs), centre, float(np.sqrt(mask.sum())))


def _largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 4-connected patch of ``mask`` (H, W) bool, as a mask of the same shape."""
    labels = np.zeros(mask.shape, np.int32)
    label, best, best_size = 0, 0, 0
    height, width = mask.shape
    for start in zip(*np.nonzero(mask)):
        if labels[start]:
            continue
        label += 1
        labels[start] = label
        stack, size = [start], 0
        while stack:
            y, x = stack.pop()
            size += 1
            for ny, nx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                if 0 <= ny < height and 0 <= nx < width and mask[ny, nx] and not labels[ny, nx]:
                    labels[ny, nx] = label
                    stack.append((ny, nx))
        if size > best_size:
            best, best_size = label, size
    return labels == best if best else mask


def _shape(mask: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> str:
    top, bottom, left, right = ys.min(), ys.max(), xs.min(), xs.max()
    box = mask[top : bottom + 1, left : right + 1]
    rows = box.sum(axis=1).astype(np.float32)
    height = len(rows)
    upper = rows[: max(1, height // 3)].mean()
    lower = rows[height - max(1, height // 3) :].mean()
    if upper < 0.5 * lower:
        return "triangle"
    fill = box.mean()
    return "square" if fill > 0.88 else "circle"


def _majority(values: list[str | None]) -> str | None:
    known = [v for v in values if v is not None]
    if not known:
        return None
    names, counts = np.unique(known, return_counts=True)
    return str(names[int(np.argmax(counts))])


def read_motion(readings: list[FrameReading], seconds: float, width: int, height: int) -> str | None:
    """The motion of the caption grammar that best explains the readings spanning ``seconds``.

    Distances are path lengths (a bounce inside the span does not cancel the motion); the direction is
    the sign of the net change.
    """
    tracked = [r for r in readings if r.centre is not None]
    if len(tracked) < 2 or seconds <= 0:
        return None
    # Four points a second: finer tracks add up the sub-pixel jitter of the centre and the size.
    stride = max(1, round((len(readings) - 1) / seconds / 4))
    tracked = tracked[::stride] if (len(tracked) - 1) % stride == 0 else [*tracked[::stride], tracked[-1]]
    xs = np.array([r.centre[0] for r in tracked]) / width
    ys = np.array([r.centre[1] for r in tracked]) / height
    sizes = np.log(np.maximum([r.size for r in tracked], 1e-6))
    path_x, path_y = np.abs(np.diff(xs)).sum() / seconds, np.abs(np.diff(ys)).sum() / seconds
    if max(path_x, path_y) >= MOVE_FRACTION:
        if path_x >= path_y:
            return "moving right" if xs[-1] >= xs[0] else "moving left"
        return "moving down" if ys[-1] >= ys[0] else "moving up"
    if np.abs(np.diff(sizes)).sum() / seconds >= np.log(SIZE_CHANGE):
        return "growing" if sizes[-1] >= sizes[0] else "shrinking"
    return "standing still"


@dataclass(frozen=True)
class VideoReading:
    """What a whole video shows, and the motion of each of its whole seconds."""

    colour: str | None
    shape: str | None
    background: str
    motion: str | None  # over the first second
    motions: tuple[str | None, ...]  # over each whole second

    def caption(self) -> Caption | None:
        if None in (self.colour, self.shape, self.motion):
            return None
        return Caption(self.colour, self.shape, self.motion, self.background)


def read_video(frames: np.ndarray, fps: float) -> VideoReading:
    """Read a (F, H, W, 3) uint8 video recorded at ``fps``."""
    readings = [read_frame(frame) for frame in frames]
    height, width = frames.shape[1:3]
    second = max(1, round(fps))

    def motion_of(start: int) -> str | None:
        span = readings[start : start + second + 1]
        return read_motion(span, (len(span) - 1) / fps, width, height)

    motions = tuple(motion_of(start) for start in range(0, len(frames) - second, second))
    return VideoReading(
        _majority([r.colour for r in readings]),
        _majority([r.shape for r in readings]),
        _majority([r.background for r in readings]) or readings[0].background,
        motions[0] if motions else motion_of(0),
        motions,
    )


def _same_axis(expected: str, seen: str | None) -> bool:
    """A later second of a video keeps the caption's kind of motion: bounces reverse a direction and an
    oscillating size, so left and right (up and down, growing and shrinking) are the same kind."""
    kinds = ({"moving left", "moving right"}, {"moving up", "moving down"}, {"growing", "shrinking"})
    return seen == expected or any(expected in kind and seen in kind for kind in kinds)


@dataclass(frozen=True)
class Adherence:
    """Whether a video shows each part of its caption."""

    colour: bool
    shape: bool
    background: bool
    motion: bool  # direction over the first second
    motion_sustained: float  # fraction of the whole seconds that keep the caption's kind of motion

    def to_dict(self) -> dict[str, float]:
        return {k: float(v) for k, v in self.__dict__.items()}


def adherence(frames: np.ndarray, fps: float, caption: Caption) -> Adherence:
    """How well ``frames`` follow ``caption``."""
    seen = read_video(frames, fps)
    sustained = [_same_axis(caption.motion, m) for m in seen.motions]
    return Adherence(
        seen.colour == caption.colour,
        seen.shape == caption.shape,
        seen.background == caption.background,
        seen.motion == caption.motion,
        float(np.mean(sustained)) if sustained else float(seen.motion == caption.motion),
    )

"""The toy world: videos of one object on a plain background, generated from a seed, with their captions.

Every caption follows one grammar, the language the ``toy`` preset understands::

    a {colour} {shape} {motion} on a {background} background

Objects move at a steady speed of about a third of the frame per second and bounce off the borders;
growing and shrinking objects oscillate between a small and a large size. No object reaches a border
in its first second. Start position, size and speed are jittered per video.

A fixed fifth of the (colour, shape, motion, background) combinations is held out of training, so
evaluations on them measure compositional generalisation. Rendering is plain numpy, supersampled
for smooth edges: the same (caption, seed) always gives the same frames, on any machine.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np

from magic141.utils import InputError

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 230),
    "yellow": (240, 210, 30),
}
SHAPES = ("circle", "square", "triangle")
BACKGROUNDS: dict[str, tuple[int, int, int]] = {"black": (0, 0, 0), "white": (255, 255, 255), "grey": (128, 128, 128)}
MOTIONS = ("moving left", "moving right", "moving up", "moving down", "growing", "shrinking", "standing still")
# Every word of the grammar, which the toy preset's tokenizers keep whole.
WORDS = tuple(sorted({*"a on background".split(), *COLOURS, *SHAPES, *BACKGROUNDS, *" ".join(MOTIONS).split()}))
# Unit displacement per second of each translating motion, in (x, y) image coordinates (y grows downwards).
DIRECTIONS: dict[str, tuple[int, int]] = {
    "moving left": (-1, 0),
    "moving right": (1, 0),
    "moving up": (0, -1),
    "moving down": (0, 1),
}

HELD_OUT_FRACTION = 0.2
SPLIT_SEED = 141  # fixed: the held-out combinations never change with a dataset's seed
SPEED = 1 / 3  # of the frame's extent along the motion, per second
SIZE_RANGE = (0.16, 0.24)  # an object's half-extent at rest, as a fraction of the frame's smaller side
GROW_RANGE = (0.10, 0.28)  # the half-extents a growing or shrinking object oscillates between
GROW_PERIOD_S = 3.0  # seconds from small to large and back
SUPERSAMPLE = 4

_CAPTION = re.compile(
    rf"a ({'|'.join(COLOURS)}) ({'|'.join(SHAPES)}) ({'|'.join(MOTIONS)}) on a ({'|'.join(BACKGROUNDS)}) background"
)


@dataclass(frozen=True, order=True)
class Caption:
    """One sentence of the toy world's grammar."""

    colour: str
    shape: str
    motion: str
    background: str

    def __post_init__(self) -> None:
        for field, value, known in (
            ("colour", self.colour, COLOURS),
            ("shape", self.shape, SHAPES),
            ("motion", self.motion, MOTIONS),
            ("background", self.background, BACKGROUNDS),
        ):
            if value not in known:
                raise InputError(f"unknown {field} {value!r}; the toy world knows: {', '.join(known)}")

    @property
    def text(self) -> str:
        return f"a {self.colour} {self.shape} {self.motion} on a {self.background} background"

    @classmethod
    def parse(cls, text: str) -> Caption:
        """The caption a sentence of the grammar spells; ``ValueError`` naming the grammar otherwise."""
        match = _CAPTION.fullmatch(" ".join(text.lower().split()))
        if match is None:
            raise InputError(
                f"{text!r} is not a toy-world caption; write 'a {{colour}} {{shape}} {{motion}} on a {{background}} "
                f"background', e.g. 'a red circle moving left on a black background'"
            )
        return cls(*match.groups())

    @classmethod
    def find(cls, text: str) -> Caption | None:
        """The caption of ``text`` if it is one, else None."""
        try:
            return cls.parse(text)
        except ValueError:
            return None


def all_captions() -> list[Caption]:
    """Every caption of the grammar, in a fixed order."""
    return [Caption(*combo) for combo in itertools.product(COLOURS, SHAPES, MOTIONS, BACKGROUNDS)]


@cache
def held_out_captions() -> frozenset[Caption]:
    """The fixed fifth of the combinations that no training run sees."""
    captions = all_captions()
    order = np.random.default_rng(SPLIT_SEED).permutation(len(captions))
    return frozenset(captions[i] for i in order[: round(HELD_OUT_FRACTION * len(captions))])


def split_captions(split: str) -> list[Caption]:
    """``train`` or ``held-out`` captions, in the grammar's order."""
    if split not in ("train", "held-out"):
        raise InputError(f"unknown split {split!r}; choose train or held-out")
    held = held_out_captions()
    return [c for c in all_captions() if (c in held) == (split == "held-out")]


@dataclass(frozen=True)
class Scene:
    """Everything that varies between two videos of one caption, in pixels and seconds."""

    caption: Caption
    x: float  # centre at t = 0
    y: float
    size: float  # half-extent at t = 0
    speed: float  # px per second (translation) or half-extent px per second (growing, shrinking)


def sample_scene(caption: Caption, width: int, height: int, seed: int, jitter: bool = True) -> Scene:
    """A scene of ``caption`` drawn from ``seed``: jittered start, size and speed, clear of the borders for 1 s.
    Without ``jitter`` only the start varies: the object has the middle size and the world's exact speed."""
    rng = np.random.default_rng([seed, *(ord(c) for c in caption.text)])

    def draw(low: float, high: float) -> float:
        return float(rng.uniform(low, high)) if jitter else (low + high) / 2

    side = min(width, height)
    if caption.motion in ("growing", "shrinking"):
        small, large = GROW_RANGE[0] * side, GROW_RANGE[1] * side
        # Start in the lower (growing) or upper (shrinking) part of the range: a second of change fits.
        span = large - small
        size = draw(small, small + 0.35 * span)
        if caption.motion == "shrinking":
            size = large - (size - small)
        speed = draw(0.8, 1.2) * 2 * span / GROW_PERIOD_S
        margin = large + 1
        return Scene(caption, rng.uniform(margin, width - margin), rng.uniform(margin, height - margin), size, speed)
    size = draw(*SIZE_RANGE) * side
    dx, dy = DIRECTIONS.get(caption.motion, (0, 0))
    extent = width if dx else height
    speed = 0.0 if caption.motion == "standing still" else draw(0.85, 1.15) * SPEED * extent
    # Start where one second of travel stays inside the frame.
    xs = _start_range(width, size, dx * speed)
    ys = _start_range(height, size, dy * speed)
    return Scene(caption, rng.uniform(*xs), rng.uniform(*ys), size, speed)


def _start_range(extent: int, size: float, travel: float) -> tuple[float, float]:
    low, high = size + 1 + max(0.0, -travel), extent - size - 1 - max(0.0, travel)
    if low > high:
        raise InputError(f"a frame of {extent} px is too small for the toy world's objects")
    return low, high


def _bounce(start: float, travel: float, low: float, high: float) -> float:
    """Position after ``travel`` from ``start`` inside [low, high], reflected at both ends."""
    span = high - low
    if span <= 0:
        return low
    phase = (start - low + travel) % (2 * span)
    return low + (phase if phase <= span else 2 * span - phase)


def scene_state(scene: Scene, t: float, width: int, height: int) -> tuple[float, float, float]:
    """Centre x, centre y and half-extent at time ``t`` seconds."""
    motion = scene.caption.motion
    if motion in ("growing", "shrinking"):
        side = min(width, height)
        sign = 1.0 if motion == "growing" else -1.0
        size = _bounce(scene.size, sign * scene.speed * t, GROW_RANGE[0] * side, GROW_RANGE[1] * side)
        return scene.x, scene.y, size
    dx, dy = DIRECTIONS.get(motion, (0, 0))
    x = _bounce(scene.x, dx * scene.speed * t, scene.size + 1, width - scene.size - 1)
    y = _bounce(scene.y, dy * scene.speed * t, scene.size + 1, height - scene.size - 1)
    return x, y, scene.size


def _coverage(shape: str, x: float, y: float, size: float, width: int, height: int) -> np.ndarray:
    """Fraction of each pixel the shape covers, (H, W) float32, from a supersampled inside test."""
    n = SUPERSAMPLE
    ys = (np.arange(height * n) + 0.5) / n
    xs = (np.arange(width * n) + 0.5) / n
    u, v = xs[None, :] - x, ys[:, None] - y
    if shape == "circle":
        inside = u * u + v * v <= size * size
    elif shape == "square":
        inside = (np.abs(u) <= size) & (np.abs(v) <= size)
    else:  # an upright isosceles triangle in the square of half-extent ``size``
        inside = (v <= size) & (v >= -size) & (np.abs(u) <= (v + size) / 2)
    return inside.reshape(height, n, width, n).mean(axis=(1, 3), dtype=np.float32)


def render_frame(scene: Scene, t: float, width: int, height: int) -> np.ndarray:
    """The frame at ``t`` seconds, (H, W, 3) uint8."""
    x, y, size = scene_state(scene, t, width, height)
    alpha = _coverage(scene.caption.shape, x, y, size, width, height)[..., None]
    colour = np.asarray(COLOURS[scene.caption.colour], np.float32)
    background = np.asarray(BACKGROUNDS[scene.caption.background], np.float32)
    return np.rint(alpha * colour + (1 - alpha) * background).astype(np.uint8)


def render_video(scene: Scene, frames: int, fps: float, width: int, height: int, start: float = 0.0) -> np.ndarray:
    """``frames`` frames at ``fps`` from ``start`` seconds on, (F, H, W, 3) uint8."""
    return np.stack([render_frame(scene, start + i / fps, width, height) for i in range(frames)])


@dataclass(frozen=True)
class Sample:
    """One training or evaluation example of the world."""

    caption: Caption
    seed: int
    video: np.ndarray  # (F, H, W, 3) uint8


def evaluation_captions(split: str, count: int) -> list[Caption]:
    """The captions of ``count`` evaluation cases of ``split``, spread evenly over the split in the grammar's order
    (a prefix of it would be one colour's captions), each as often as the count allows."""
    captions = split_captions(split)
    return [captions[index * len(captions) // count] for index in range(count)]


def sample(index: int, split: str, seed: int, frames: int, fps: float, width: int, height: int) -> Sample:
    """Example ``index`` of ``split`` for a dataset seeded ``seed``: its caption cycles through the split
    in a seeded order, and its scene is drawn from (seed, index)."""
    captions = split_captions(split)
    order = np.random.default_rng([seed, index // len(captions)]).permutation(len(captions))
    caption = captions[order[index % len(captions)]]
    scene_seed = int(np.random.SeedSequence([seed, index]).generate_state(1)[0])
    scene = sample_scene(caption, width, height, scene_seed)
    return Sample(caption, scene_seed, render_video(scene, frames, fps, width, height))


def write_corpus(folder: Path | str, count: int, split: str, seed: int, width: int = 64, height: int = 48) -> list[Path]:
    """Write ``count`` first frames of ``split`` videos as PNG images named by their caption, for a retrieval
    index over the toy world; return their paths."""
    import PIL.Image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for index in range(count):
        example = sample(index, split, seed, 1, 8, width, height)
        path = folder / f"{index:04d}-{example.caption.text.replace(' ', '-')}.png"
        PIL.Image.fromarray(example.video[0]).save(path)
        written.append(path)
    return written

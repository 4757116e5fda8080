"""The checks of single request fields, each raising one :class:`~magic141.utils.InputError` line.

The request's parts (:mod:`tasks.request.parts`) call them where they are built; nothing else does.
"""

from __future__ import annotations

import math
import os
import re
import tempfile
import unicodedata
from collections.abc import Callable
from pathlib import Path

import PIL.Image

from magic141.presets import Preset, parse_size
from magic141.utils import InputError, first_line
from magic141.windows import WINDOW_MODES

MAX_SECONDS = 600.0
MAX_STEPS = 100
FPS_RANGE = (1, 120)
QUANTIZATION_LEVELS = ("int8", "int4")
MAX_WORKERS = 256
MAX_PROMPT_CHARS = 10_000
# Images over this many pixels are refused before they are decoded (a decompression bomb is a few kB).
MAX_IMAGE_PIXELS_ENV = "MAGIC141_MAX_IMAGE_PIXELS"
DEFAULT_MAX_IMAGE_PIXELS = 64_000_000
_ESCAPE_SEQUENCE = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]"  # CSI: colours, cursor movement
    r"|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?"  # OSC: window titles, hyperlinks
    r"|\x1b[PX^_][^\x1b]*(?:\x1b\\)?"  # DCS, SOS, PM, APC strings
    r"|\x1b[ -/]*[0-~]?"  # any other escape
    r"|\x9b[0-?]*[ -/]*[@-~]"  # 8-bit CSI
)
_BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def collect(*checks: Callable[[], object]) -> None:
    """Run every check; when some fail, raise one :class:`InputError` naming all their problems, joined by ``; ``."""
    problems: list[InputError] = []
    for check in checks:
        try:
            check()
        except InputError as exc:
            problems.append(exc)
    if problems:
        raise InputError("; ".join(str(problem) for problem in problems),
                         in_csv="; ".join(problem.in_csv for problem in problems))


def printable_text(text: str) -> str:
    """``text`` without terminal escape sequences, control characters and bidirectional overrides.

    Line breaks and tabs stay. What comes from a CSV or the catalog goes through this before it is
    stored, shown on a terminal or encoded.
    """
    text = _ESCAPE_SEQUENCE.sub("", text)
    return "".join(
        char for char in text
        if char in "\n\t" or (unicodedata.category(char) != "Cc" and char not in _BIDI_CONTROLS)
    )


def clean_prompt(prompt: object, what: str = "prompt") -> str:
    """The prompt as it is stored and encoded (:func:`printable_text`); ``InputError`` when no text is left
    or it is longer than :data:`MAX_PROMPT_CHARS`."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise InputError(f"{what} is empty; give a text describing the video")
    cleaned = printable_text(prompt)
    if not cleaned.strip():
        raise InputError(
            f"{what} has no printable text (only control characters or escape sequences); give a text describing "
            f"the video"
        )
    if len(cleaned) > MAX_PROMPT_CHARS:
        raise InputError(f"{what} is {len(cleaned):,} characters; at most {MAX_PROMPT_CHARS:,}; shorten it")
    return cleaned


def max_image_pixels() -> int:
    """The pixel limit of input images: ``$MAGIC141_MAX_IMAGE_PIXELS``, else 64 million."""
    text = os.environ.get(MAX_IMAGE_PIXELS_ENV)
    if not text:
        return DEFAULT_MAX_IMAGE_PIXELS
    try:
        limit = int(text)
    except ValueError:
        limit = 0
    if limit < 1:
        raise InputError(f"{MAX_IMAGE_PIXELS_ENV}={text!r} is not a positive whole number of pixels, e.g. 64000000")
    return limit


def check_seconds(seconds: float) -> None:
    """Raise ``InputError`` unless ``seconds`` is a video length the pipeline accepts."""
    if not math.isfinite(seconds) or seconds <= 0:
        raise InputError(f"seconds must be > 0, got {seconds}")
    if seconds > MAX_SECONDS:
        raise InputError(f"seconds must be at most {MAX_SECONDS:g}, got {seconds}; split longer videos")


def check_fps(fps: int) -> None:
    """Raise ``InputError`` unless ``fps`` is in :data:`FPS_RANGE`."""
    low, high = FPS_RANGE
    if not low <= fps <= high:
        raise InputError(f"fps must be between {low} and {high}, got {fps}")


def check_duration(seconds: float, fps: int) -> None:
    """Raise ``InputError`` unless ``seconds`` and ``fps`` are in range and make at least one frame."""
    check_seconds(seconds)
    check_fps(fps)
    if round(seconds * fps) < 1:
        raise InputError(f"{seconds} s at {fps} fps is less than one frame; raise seconds or fps")


def check_steps(steps: int) -> None:
    """Raise ``InputError`` unless ``steps`` is a usable sampler step count."""
    if not 1 <= steps <= MAX_STEPS:
        raise InputError(f"steps must be between 1 and {MAX_STEPS}, got {steps}")


def check_guidance(guidance: float) -> None:
    """Raise ``InputError`` unless the embedded guidance scale is a finite number >= 0."""
    if not math.isfinite(guidance) or guidance < 0:
        raise InputError(f"guidance must be a number >= 0, got {guidance}")


def check_true_cfg(true_cfg: float) -> None:
    """Raise ``InputError`` unless the true CFG scale is a finite number >= 1 (1 disables it)."""
    if not math.isfinite(true_cfg) or true_cfg < 1:
        raise InputError(f"true CFG scale must be >= 1 (1 disables it), got {true_cfg}")


def check_seed(seed: int) -> None:
    """Raise ``InputError`` unless ``seed`` fits the unsigned 63-bit range every backend stores."""
    if seed < 0 or seed >= 2**63:
        raise InputError(f"seed must be between 0 and 2**63-1, got {seed}")


def check_windows(mode: str) -> None:
    """Raise ``InputError`` unless ``mode`` is a long-video window mode."""
    if mode not in WINDOW_MODES:
        raise InputError(f"unknown window mode {mode!r}; use one of: {', '.join(WINDOW_MODES)}",
                         in_csv=f"windows {mode!r} is not one of {', '.join(WINDOW_MODES)}")


def check_workers(workers: int) -> None:
    """Raise ``InputError`` unless ``workers`` Ray render actors (0: in process) is a pool size the pipeline takes."""
    if not 0 <= workers <= MAX_WORKERS:
        raise InputError(f"workers must be between 0 and {MAX_WORKERS}, got {workers}")


def check_ray_address(ray_address: str | None, workers: int) -> None:
    """A Ray cluster's address needs render actors to place on it."""
    if ray_address is not None and workers == 0:
        raise InputError("--ray-address renders on a Ray cluster; give --workers N (N >= 1) as well")


def normal_size(size: str) -> str:
    """``"auto"``, or ``size`` as ``WxH`` (``"48X64"`` -> ``"48x64"``); ``InputError`` for other text."""
    parsed = parse_size(size)
    return "auto" if parsed is None else f"{parsed[0]}x{parsed[1]}"


def check_size(size: str, preset: Preset) -> None:
    """Raise ``InputError`` unless ``size`` is ``auto`` or one of the sizes ``preset`` renders (listing them)."""
    parsed = parse_size(size)
    if parsed is not None:
        preset.check_size(parsed)


def check_overlap(overlap: int, window_latent_frames: int) -> None:
    """Raise ``InputError`` unless parallel windows of ``window_latent_frames`` latents can share ``overlap``."""
    if not 1 <= overlap < window_latent_frames:
        raise InputError(f"overlap must be between 1 and {window_latent_frames - 1} latent frames, got {overlap}")


def _gpu_visible() -> bool:
    import torch

    return torch.cuda.is_available()


def check_low_memory(low_memory: bool, workers: int, ray_address: str | None) -> None:
    """Low-memory rendering on this machine (in process, or on a local Ray pool) needs a GPU here; the
    actors of a Ray cluster (``ray_address`` or ``$RAY_ADDRESS`` with workers) check their own."""
    on_cluster = workers > 0 and bool(ray_address or os.environ.get("RAY_ADDRESS"))
    if low_memory and not on_cluster and not _gpu_visible():
        raise InputError(
            "--low-memory offloads models between the CPU and a GPU, and no GPU is visible; drop it or run on a GPU"
        )


def check_image(path: str) -> None:
    """Raise ``InputError`` unless ``path`` is a readable, decodable image file within the pixel limit."""
    file = Path(path)
    if not file.exists():
        raise InputError(f"image {path!r} does not exist; give the path of a PNG/JPEG/WebP file")
    if not file.is_file():
        raise InputError(f"image {path!r} is not a file; give the path of a PNG/JPEG/WebP file")
    limit = max_image_pixels()
    try:
        with PIL.Image.open(file) as image:
            width, height = image.size  # from the header: nothing is decoded yet
            if width * height > limit:
                raise InputError(
                    f"image {path!r} is {width}x{height} ({width * height:,} pixels), over the limit of {limit:,} "
                    f"({MAX_IMAGE_PIXELS_ENV}); give a smaller image"
                )
            image.load()
    except PermissionError:
        raise InputError(f"image {path!r} is not readable (permission denied); check its permissions") from None
    except PIL.Image.DecompressionBombError as exc:  # Pillow's own limit, for headers it checks at open
        reason = " ".join(str(exc).split())
        raise InputError(
            f"image {path!r} is too large to decode ({reason}); at most {limit:,} pixels ({MAX_IMAGE_PIXELS_ENV}); "
            f"give a smaller image"
        ) from None
    except (PIL.UnidentifiedImageError, OSError, SyntaxError) as exc:
        reason = first_line(exc)
        raise InputError(f"image {path!r} is not a readable image ({reason}); give a PNG/JPEG/WebP file") from None


def check_index_dir(index_dir: str) -> str:
    """Return the absolute path of ``index_dir``; raise ``InputError`` unless it holds a published retrieval index."""
    folder = Path(index_dir).absolute()
    if not folder.is_dir():
        raise InputError(
            f"index folder {index_dir!r} does not exist; build one with `magic141 index build CORPUS --index-dir "
            f"{folder}` or give another --index-dir"
        )
    from retrieval_index import store

    store.open_current(folder)
    return str(folder)


def prior_image_path(out: Path) -> Path:
    """Where a generated first frame is kept, beside its video."""
    return out.with_suffix(".prior.png")


def check_mp4(path: str) -> None:
    """Raise ``InputError`` unless ``path`` names an mp4 file."""
    if Path(path).suffix.lower() != ".mp4":
        raise InputError(f"output {path!r} must end in .mp4")


def check_output_free(path: str, create_folder: bool = False) -> None:
    """Raise ``InputError`` unless an mp4 (and its prior image) can be created at ``path`` without replacing
    anything; with ``create_folder`` its folder may be missing, to be created when the video is made."""
    out = Path(path)
    for existing in (out, prior_image_path(out)):
        if existing.exists():
            raise InputError(f"output {str(existing)!r} already exists; choose another --out or remove the file")
    folder = out.parent
    if create_folder and not folder.exists() and folder.parent.is_dir():
        return
    if not folder.exists():
        raise InputError(f"output folder {str(folder)!r} does not exist; create it first")
    if not folder.is_dir():
        raise InputError(f"output folder {str(folder)!r} is not a folder")
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".magic141-probe-"):
            pass
    except OSError as exc:
        raise InputError(f"output folder {str(folder)!r} is not writable ({exc.strerror}); choose another --out") from None

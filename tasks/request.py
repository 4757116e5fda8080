"""A generation request and its validation: every bad input becomes one precise ``ValueError`` line."""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
import unicodedata
from dataclasses import dataclass, field, replace
from pathlib import Path

import PIL.Image
from pydantic import SecretStr

from magic141.presets import default_preset_name, get_preset, parse_size
from magic141.utils import first_line
from magic141.windows import WINDOW_MODES
from tasks.prior_policy import DEFAULT_STRENGTH, DEFAULT_THRESHOLD, check_prior_mode, check_prior_settings

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


@dataclass(frozen=True)
class ModelSpec:
    """Which model to run: a preset (geometry, sampler defaults; its own weights unless ``weights`` is set)."""

    preset: str = field(default_factory=default_preset_name)
    weights: str | None = None
    quantize: str | None = None
    low_memory: bool = False


@dataclass(frozen=True)
class GenerateRequest:
    """One video to generate. Paths are absolute after :func:`validate_request`."""

    prompt: str
    out: str
    catalog_url: str | SecretStr  # a SecretStr when it carries a password (tasks.catalog.hide_password)
    image: str | None = None
    seconds: float = 5.0
    fps: int | None = None  # None: the preset's frame rate
    seed: int = 0
    steps: int | None = None  # None: the preset's sampler steps
    guidance: float | None = None
    true_cfg: float = 1.0
    negative_prompt: str | None = None
    preset: str = field(default_factory=default_preset_name)
    weights: str | None = None
    quantize: str | None = None
    low_memory: bool = False
    windows: str = "chained"
    overlap: int | None = None  # latents shared by parallel windows; None: the preset's
    size: str = "auto"  # WxH, one of the preset's sizes; auto: the one nearest the first frame's aspect ratio
    workers: int = 0  # Ray render actors (one per GPU); 0 renders in this process
    ray_address: str | None = None
    prior: str | None = None  # auto, user, retrieve or generate; None: the image if given, else text-to-image
    index_dir: str | None = None  # retrieval index folder for the auto and retrieve priors
    prior_threshold: float = DEFAULT_THRESHOLD  # auto: cosine score from which the best match is used as it is
    prior_strength: float = DEFAULT_STRENGTH  # auto: img2img strength from the best match below the threshold

    @property
    def num_frames(self) -> int:
        return round(self.seconds * self.fps)

    @property
    def model(self) -> ModelSpec:
        return ModelSpec(self.preset, self.weights, self.quantize, self.low_memory)


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
    """The prompt as it is stored and encoded (:func:`printable_text`); ``ValueError`` when no text is left
    or it is longer than :data:`MAX_PROMPT_CHARS`."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError(f"{what} is empty; give a text describing the video")
    cleaned = printable_text(prompt)
    if not cleaned.strip():
        raise ValueError(
            f"{what} has no printable text (only control characters or escape sequences); give a text describing "
            f"the video"
        )
    if len(cleaned) > MAX_PROMPT_CHARS:
        raise ValueError(f"{what} is {len(cleaned):,} characters; at most {MAX_PROMPT_CHARS:,}; shorten it")
    return cleaned


def check_prompt(prompt: object) -> None:
    """Raise ``ValueError`` unless ``prompt`` carries printable text within the length limit (:func:`clean_prompt`)."""
    clean_prompt(prompt)


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
        raise ValueError(f"{MAX_IMAGE_PIXELS_ENV}={text!r} is not a positive whole number of pixels, e.g. 64000000")
    return limit


def check_seconds(seconds: float) -> None:
    """Raise ``ValueError`` unless ``seconds`` is a video length the pipeline accepts."""
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"seconds must be > 0, got {seconds}")
    if seconds > MAX_SECONDS:
        raise ValueError(f"seconds must be at most {MAX_SECONDS:g}, got {seconds}; split longer videos")


def check_fps(fps: int) -> None:
    """Raise ``ValueError`` unless ``fps`` is in :data:`FPS_RANGE`."""
    low, high = FPS_RANGE
    if not low <= fps <= high:
        raise ValueError(f"fps must be between {low} and {high}, got {fps}")


def check_duration(seconds: float, fps: int) -> None:
    """Raise ``ValueError`` unless ``seconds`` and ``fps`` are in range and make at least one frame."""
    check_seconds(seconds)
    check_fps(fps)
    if round(seconds * fps) < 1:
        raise ValueError(f"{seconds} s at {fps} fps is less than one frame; raise seconds or fps")


def check_steps(steps: int) -> None:
    """Raise ``ValueError`` unless ``steps`` is a usable sampler step count."""
    if not 1 <= steps <= MAX_STEPS:
        raise ValueError(f"steps must be between 1 and {MAX_STEPS}, got {steps}")


def check_guidance(guidance: float) -> None:
    """Raise ``ValueError`` unless the embedded guidance scale is a finite number >= 0."""
    if not math.isfinite(guidance) or guidance < 0:
        raise ValueError(f"guidance must be a number >= 0, got {guidance}")


def check_seed(seed: int) -> None:
    """Raise ``ValueError`` unless ``seed`` fits the unsigned 63-bit range every backend stores."""
    if seed < 0 or seed >= 2**63:
        raise ValueError(f"seed must be between 0 and 2**63-1, got {seed}")


def check_windows(mode: str) -> None:
    """Raise ``ValueError`` unless ``mode`` is a long-video window mode."""
    if mode not in WINDOW_MODES:
        raise ValueError(f"unknown window mode {mode!r}; use one of: {', '.join(WINDOW_MODES)}")


def check_render(request: GenerateRequest, window_latent_frames: int) -> None:
    """Raise ``ValueError`` unless the window mode, overlap and pool size can render ``request``."""
    check_windows(request.windows)
    if request.overlap is not None:
        if request.windows != "parallel":
            raise ValueError("--overlap applies to parallel windows; add --windows parallel or drop --overlap")
        if not 1 <= request.overlap < window_latent_frames:
            raise ValueError(
                f"overlap must be between 1 and {window_latent_frames - 1} latent frames, got {request.overlap}"
            )
    check_workers(request.workers)
    if request.ray_address is not None and request.workers == 0:
        raise ValueError("--ray-address renders on a Ray cluster; give --workers N (N >= 1) as well")


def check_size(size: str, preset_name: str) -> str:
    """``"auto"``, or ``size`` as ``WxH`` when the preset renders it; else ``ValueError`` listing the sizes it does."""
    parsed = parse_size(size)
    if parsed is None:
        return "auto"
    width, height = get_preset(preset_name).check_size(parsed)
    return f"{width}x{height}"


def check_workers(workers: int) -> None:
    """Raise ``ValueError`` unless ``workers`` Ray render actors (0: in process) is a pool size the pipeline takes."""
    if not 0 <= workers <= MAX_WORKERS:
        raise ValueError(f"workers must be between 0 and {MAX_WORKERS}, got {workers}")


def check_image(path: str) -> None:
    """Raise ``ValueError`` unless ``path`` is a readable, decodable image file."""
    file = Path(path)
    if not file.exists():
        raise ValueError(f"image {path!r} does not exist; give the path of a PNG/JPEG/WebP file")
    if not file.is_file():
        raise ValueError(f"image {path!r} is not a file; give the path of a PNG/JPEG/WebP file")
    limit = max_image_pixels()
    try:
        with PIL.Image.open(file) as image:
            width, height = image.size  # from the header: nothing is decoded yet
            if width * height > limit:
                raise ValueError(
                    f"image {path!r} is {width}x{height} ({width * height:,} pixels), over the limit of {limit:,} "
                    f"({MAX_IMAGE_PIXELS_ENV}); give a smaller image"
                )
            image.load()
    except PermissionError:
        raise ValueError(f"image {path!r} is not readable (permission denied); check its permissions") from None
    except PIL.Image.DecompressionBombError as exc:  # Pillow's own limit, for headers it checks at open
        reason = " ".join(str(exc).split())
        raise ValueError(
            f"image {path!r} is too large to decode ({reason}); at most {limit:,} pixels ({MAX_IMAGE_PIXELS_ENV}); "
            f"give a smaller image"
        ) from None
    except (PIL.UnidentifiedImageError, OSError, SyntaxError) as exc:
        reason = first_line(exc)
        raise ValueError(f"image {path!r} is not a readable image ({reason}); give a PNG/JPEG/WebP file") from None


def check_index_dir(index_dir: str) -> str:
    """Return the absolute path of ``index_dir``; raise ``ValueError`` unless it holds a published retrieval index."""
    folder = Path(index_dir).absolute()
    if not folder.is_dir():
        raise ValueError(
            f"index folder {index_dir!r} does not exist; build one with `magic141 index build CORPUS --index-dir "
            f"{folder}` or give another --index-dir"
        )
    from retrieval_index import store

    store.open_current(folder)
    return str(folder)


def _prior_source(prior: str) -> str:
    return "the retrieval index" if prior == "retrieve" else "the text-to-image model"


def check_prior(
    prior: str | None,
    *,
    image: str | None,
    index_dir: str | None,
    threshold: float = DEFAULT_THRESHOLD,
    strength: float = DEFAULT_STRENGTH,
) -> str | None:
    """Check the first-frame options; return the absolute index folder when the prior will search it, else None.

    ``retrieve`` needs a configured, built index; ``user`` needs ``--image``; ``retrieve`` and
    ``generate`` refuse an ``--image`` they would ignore. An index given with another prior (or
    with an image, which ``auto`` then uses) is not searched, so it is not checked either.
    """
    if prior is None:
        return None
    check_prior_mode(prior)
    check_prior_settings(threshold, strength)
    if prior == "user" and image is None:
        raise ValueError("--prior user takes the first frame from --image; give --image PATH or choose another --prior")
    if prior in ("retrieve", "generate") and image is not None:
        raise ValueError(
            f"--prior {prior} takes the first frame from {_prior_source(prior)} and would ignore --image; "
            f"drop --image, or keep it with --prior user"
        )
    if prior == "retrieve" and index_dir is None:
        raise ValueError(
            "--prior retrieve needs a retrieval index and none is configured; pass --index-dir DIR (or set "
            "MAGIC141_INDEX_DIR) to an index built with `magic141 index build`, or choose --prior generate"
        )
    if prior in ("auto", "retrieve") and image is None and index_dir is not None:
        return check_index_dir(index_dir)
    return None


def needs_text_to_image(request: GenerateRequest) -> bool:
    """Whether the text-to-image model may make the first frame of ``request``."""
    if request.image is not None:
        return False
    return request.prior in (None, "auto", "generate")


def prior_image_path(out: Path) -> Path:
    """Where a generated first frame is kept, beside its video."""
    return out.with_suffix(".prior.png")


def check_output(path: str) -> None:
    """Raise ``ValueError`` unless an mp4 (and its prior image) can be created at ``path`` without replacing anything."""
    out = Path(path)
    if out.suffix.lower() != ".mp4":
        raise ValueError(f"output {path!r} must end in .mp4")
    for existing in (out, prior_image_path(out)):
        if existing.exists():
            raise ValueError(f"output {str(existing)!r} already exists; choose another --out or remove the file")
    folder = out.parent
    if not folder.exists():
        raise ValueError(f"output folder {str(folder)!r} does not exist; create it first")
    if not folder.is_dir():
        raise ValueError(f"output folder {str(folder)!r} is not a folder")
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".magic141-probe-"):
            pass
    except OSError as exc:
        raise ValueError(f"output folder {str(folder)!r} is not writable ({exc.strerror}); choose another --out") from None


def _gpu_visible() -> bool:
    import torch

    return torch.cuda.is_available()


def check_model(model: ModelSpec) -> ModelSpec:
    """Raise ``ValueError`` for an unknown preset, a missing weights folder or an unknown quantization
    level; return ``model`` with its weights path absolute (the preset's own folder when none is given)."""
    preset = get_preset(model.preset)
    weights = None if preset.weights_folder is None else str(preset.weights_folder)
    if model.weights is not None:
        from magic141.weight_paths import WeightPaths

        WeightPaths.resolve(model.weights)
        weights = os.path.abspath(model.weights)
    if model.quantize is not None and model.quantize not in QUANTIZATION_LEVELS:
        raise ValueError(f"unknown quantization level {model.quantize!r}; choose one of: {', '.join(QUANTIZATION_LEVELS)}")
    return replace(model, weights=weights)


def check_low_memory(low_memory: bool, workers: int, ray_address: str | None) -> None:
    """Low-memory rendering on this machine (in process, or on a local Ray pool) needs a GPU here; the
    actors of a Ray cluster (``ray_address`` or ``$RAY_ADDRESS`` with workers) check their own."""
    on_cluster = workers > 0 and bool(ray_address or os.environ.get("RAY_ADDRESS"))
    if low_memory and not on_cluster and not _gpu_visible():
        raise ValueError(
            "--low-memory offloads models between the CPU and a GPU, and no GPU is visible; drop it or run on a GPU"
        )


def has_guidance_input(model: ModelSpec) -> bool:
    """Whether the transformer of ``model`` takes the guidance scale as an input (a guidance embedding, as CFG
    distillation trains it): converted official weights have none, and a guidance scale would do nothing."""
    preset = get_preset(model.preset)
    weights = model.weights if model.weights is not None else preset.weights_folder
    if weights is None:
        return preset.transformer.guidance_embeds
    from magic141.weight_paths import WeightPaths

    config = Path(WeightPaths.resolve(weights).transformer) / "config.json"
    try:
        return bool(json.loads(config.read_text()).get("guidance_embeds", False))
    except (OSError, ValueError):
        return False  # loading the weights says what is wrong with them


def check_guidance_input(guidance: float | None, model: ModelSpec) -> None:
    """Refuse a guidance scale other than the preset's for a transformer without a guidance input."""
    default = get_preset(model.preset).guidance_scale
    if guidance is not None and guidance != default and not has_guidance_input(model):
        raise ValueError(
            f"guidance {guidance:g} would do nothing: this model's transformer takes no guidance scale (no guidance "
            "embedding); leave guidance out, or guide with true CFG (--true-cfg and --negative-prompt)"
        )


def validate_request(request: GenerateRequest, check_out: bool = True) -> GenerateRequest:
    """Check every field; return the request with absolute paths and the preset's defaults filled in
    (frame rate, steps, guidance).

    ``check_out=False`` leaves the output path to the caller (``check_output``), for a caller that
    creates the output folder only once everything else is known to be valid.
    """
    prompt = clean_prompt(request.prompt)
    negative_prompt = None if not request.negative_prompt else clean_prompt(request.negative_prompt, "negative prompt")
    preset = get_preset(request.preset)
    request = replace(request, fps=preset.fps if request.fps is None else request.fps,
                      steps=preset.steps if request.steps is None else request.steps)
    check_duration(request.seconds, request.fps)
    check_steps(request.steps)
    check_render(request, preset.window_latent_frames)
    size = check_size(request.size, request.preset)
    guidance = preset.guidance_scale if request.guidance is None else request.guidance
    check_guidance(guidance)
    if not math.isfinite(request.true_cfg) or request.true_cfg < 1:
        raise ValueError(f"true CFG scale must be >= 1 (1 disables it), got {request.true_cfg}")
    if request.true_cfg > 1 and not negative_prompt:
        raise ValueError("true CFG needs a negative prompt; pass --negative-prompt")
    check_seed(request.seed)
    model = check_model(request.model)
    check_guidance_input(request.guidance, model)
    check_low_memory(request.low_memory, request.workers, request.ray_address)
    if model.weights is not None and needs_text_to_image(request):
        from magic141.weight_paths import WeightPaths

        if WeightPaths.resolve(model.weights).prior is None:
            raise ValueError(f"weights {model.weights!r} have no text-to-image prior (prior/); pass --image or add one")
    image = None
    if request.image is not None:
        check_image(request.image)
        image = os.path.abspath(request.image)
    index_dir = check_prior(request.prior, image=image, index_dir=request.index_dir,
                            threshold=request.prior_threshold, strength=request.prior_strength)
    if check_out:
        check_output(request.out)
    return replace(
        request, prompt=prompt, negative_prompt=negative_prompt, image=image, out=os.path.abspath(request.out),
        guidance=guidance, weights=model.weights, index_dir=index_dir, size=size,
    )

"""A generation request: frozen parts (prompt, model, render, prior, output), each checked once where it is built.

``generate``, ``bulk`` rows, the service and the library build the same :class:`GenerateRequest`:

- :class:`ModelSpec` resolves its preset and weights folder;
- :class:`PromptSpec` keeps the printable text of the prompt and negative prompt;
- :meth:`RenderSpec.resolve` fills the preset's defaults (frame rate, steps, guidance) in the one place they
  come from and checks the render against the model;
- :meth:`PriorSpec.choose` picks the first frame's source and checks the image and index it uses;
- :class:`OutputSpec` names the mp4 and the catalog row, and checks that nothing would be replaced.

Every problem is an :class:`~magic141.utils.InputError`: one line, exit status 2, never retried. A part's
``__post_init__`` checks what needs nothing outside it; what needs the model or the disk is checked by the
constructor function that reads user input (:meth:`RenderSpec.resolve`, :meth:`PriorSpec.choose`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from magic141.presets import Preset, default_preset_name, get_preset
from magic141.utils import InputError
from tasks.prior_policy import DEFAULT_STRENGTH, DEFAULT_THRESHOLD, PRIOR_MODES, check_prior_settings
from tasks.request.checks import (
    QUANTIZATION_LEVELS,
    check_duration,
    check_fps,
    check_guidance,
    check_image,
    check_index_dir,
    check_low_memory,
    check_mp4,
    check_output_free,
    check_overlap,
    check_ray_address,
    check_seconds,
    check_seed,
    check_size,
    check_steps,
    check_true_cfg,
    check_windows,
    check_workers,
    clean_prompt,
    collect,
    normal_size,
)

DEFAULT_SECONDS = 5.0


def _set(part: object, **values: Any) -> None:
    """Normalise fields of a frozen part while it is built."""
    for name, value in values.items():
        object.__setattr__(part, name, value)


@dataclass(frozen=True)
class ModelSpec:
    """Which model to run: a preset (geometry, sampler defaults; its own weights unless ``weights`` is set).

    ``weights`` becomes an absolute path, the preset's own folder when none is given (None for a preset of
    random weights); a missing or incomplete folder, an unknown preset or quantization level is refused.
    """

    preset: str = field(default_factory=default_preset_name)
    weights: str | None = None
    quantize: str | None = None
    low_memory: bool = False

    def __post_init__(self) -> None:
        preset = get_preset(self.preset)
        weights = None if preset.weights_folder is None else str(preset.weights_folder)
        if self.weights is not None:
            from magic141.weight_paths import WeightPaths

            WeightPaths.resolve(self.weights)
            weights = os.path.abspath(self.weights)
        if self.quantize is not None and self.quantize not in QUANTIZATION_LEVELS:
            raise InputError(
                f"unknown quantization level {self.quantize!r}; choose one of: {', '.join(QUANTIZATION_LEVELS)}"
            )
        _set(self, weights=weights)

    @property
    def config(self) -> Preset:
        return get_preset(self.preset)

    @cached_property
    def guidance_input(self) -> bool:
        """Whether the transformer takes the guidance scale as an input (a guidance embedding, as CFG distillation
        trains it): converted official weights have none, and a guidance scale would do nothing."""
        if self.weights is None:
            return self.config.transformer.guidance_embeds
        from magic141.weight_paths import WeightPaths

        config = Path(WeightPaths.resolve(self.weights).transformer) / "config.json"
        try:
            return bool(json.loads(config.read_text()).get("guidance_embeds", False))
        except (OSError, ValueError):
            return False  # loading the weights says what is wrong with them

    @cached_property
    def text_to_image(self) -> bool:
        """Whether the model can make first frames from text: random preset weights can, a folder needs ``prior/``."""
        if self.weights is None:
            return True
        from magic141.weight_paths import WeightPaths

        return WeightPaths.resolve(self.weights).prior is not None


@dataclass(frozen=True)
class PromptSpec:
    """What the video shows, and what it should not (the negative prompt of true CFG), as printable text."""

    text: str
    negative: str | None = None

    def __post_init__(self) -> None:
        cleaned: dict[str, str | None] = {"negative": None}

        def text() -> None:
            cleaned["text"] = clean_prompt(self.text)

        def negative() -> None:
            if self.negative:
                cleaned["negative"] = clean_prompt(self.negative, "negative prompt")

        collect(text, negative)
        _set(self, **cleaned)


@dataclass(frozen=True)
class RenderSpec:
    """How the video is sampled and where: length, seed, sampler, windows, size and the Ray pool.

    Build it with :meth:`resolve`, which fills the preset's defaults; fields here are all resolved.
    """

    seconds: float
    fps: int
    seed: int
    steps: int
    guidance: float
    true_cfg: float = 1.0
    windows: str = "chained"
    overlap: int | None = None  # latents shared by parallel windows; None: the preset's
    size: str = "auto"  # WxH, one of the preset's sizes; auto: the one nearest the first frame's aspect ratio
    workers: int = 0  # Ray render actors (one per GPU); 0 renders in this process
    ray_address: str | None = None

    def __post_init__(self) -> None:
        def duration() -> None:
            collect(lambda: check_seconds(self.seconds), lambda: check_fps(self.fps))
            check_duration(self.seconds, self.fps)

        def size() -> None:
            _set(self, size=normal_size(self.size))

        def overlap() -> None:
            if self.overlap is not None and self.windows != "parallel":
                raise InputError("--overlap applies to parallel windows; add --windows parallel or drop --overlap")

        collect(
            duration, lambda: check_seed(self.seed), lambda: check_steps(self.steps),
            lambda: check_guidance(self.guidance), lambda: check_true_cfg(self.true_cfg),
            lambda: check_windows(self.windows), overlap, size, lambda: check_workers(self.workers),
            lambda: check_ray_address(self.ray_address, self.workers),
        )

    @property
    def num_frames(self) -> int:
        return round(self.seconds * self.fps)

    @classmethod
    def resolve(
        cls,
        model: ModelSpec,
        *,
        seconds: float = DEFAULT_SECONDS,
        fps: int | None = None,
        seed: int = 0,
        steps: int | None = None,
        guidance: float | None = None,
        true_cfg: float = 1.0,
        windows: str = "chained",
        overlap: int | None = None,
        size: str = "auto",
        workers: int = 0,
        ray_address: str | None = None,
    ) -> RenderSpec:
        """The render of ``model``: the preset's frame rate, steps and guidance where none is given (the one place
        these defaults are resolved), checked against the model (overlap, size, guidance input, low memory)."""
        preset = model.config
        built: list[RenderSpec] = []

        def guidance_input() -> None:
            if guidance is not None and guidance != preset.guidance_scale and not model.guidance_input:
                raise InputError(
                    f"guidance {guidance:g} would do nothing: this model's transformer takes no guidance scale (no "
                    "guidance embedding); leave guidance out, or guide with true CFG (--true-cfg and --negative-prompt)",
                    in_csv=f"guidance {guidance:g} would do nothing: the model's transformer takes no guidance scale (no "
                    "guidance embedding); empty the guidance cell",
                )

        def render() -> None:
            built.append(cls(seconds, preset.fps if fps is None else fps, seed, *preset.sampling(steps, guidance),
                             true_cfg, windows, overlap, size, workers, ray_address))

        def fits_preset() -> None:
            if built:
                check_size(built[0].size, preset)
                if overlap is not None:
                    check_overlap(overlap, preset.window_latent_frames)

        collect(render, guidance_input, fits_preset, lambda: check_low_memory(model.low_memory, workers, ray_address))
        return built[0]


def _prior_source(mode: str) -> str:
    return "the retrieval index" if mode == "retrieve" else "the text-to-image model"


@dataclass(frozen=True)
class PriorSpec:
    """Where the first frame comes from (:mod:`tasks.prior_policy`): ``mode`` and what it uses.

    ``image`` is the user's first frame; ``index_dir`` the retrieval index, kept only when the mode searches
    it (``auto`` or ``retrieve`` without an image); ``threshold`` and ``strength`` are ``auto``'s settings.
    """

    mode: str = "auto"
    image: str | None = None
    index_dir: str | None = None
    threshold: float = DEFAULT_THRESHOLD
    strength: float = DEFAULT_STRENGTH

    def __post_init__(self) -> None:
        collect(self._check_mode, lambda: check_prior_settings(self.threshold, self.strength))
        searched = self.mode in ("auto", "retrieve") and self.image is None
        _set(
            self, image=None if self.image is None else os.path.abspath(self.image),
            index_dir=os.path.abspath(self.index_dir) if searched and self.index_dir is not None else None,
        )

    def _check_mode(self) -> None:
        if self.mode not in PRIOR_MODES:
            raise InputError(f"prior {self.mode!r} is not one of {', '.join(PRIOR_MODES)}; choose one of them",
                             in_csv=f"prior {self.mode!r} is not one of {', '.join(PRIOR_MODES)}")
        if self.mode == "user" and self.image is None:
            raise InputError(
                "--prior user takes the first frame from --image; give --image PATH or choose another --prior",
                in_csv="prior 'user' needs an image; fill the image cell or choose another prior",
            )
        if self.mode in ("retrieve", "generate") and self.image is not None:
            raise InputError(
                f"--prior {self.mode} takes the first frame from {_prior_source(self.mode)} and would ignore --image; "
                f"drop --image, or keep it with --prior user",
                in_csv=f"an image is given but prior {self.mode!r} would ignore it; empty the image cell or set prior "
                f"to user",
            )
        if self.mode == "retrieve" and self.index_dir is None:
            raise InputError(
                "--prior retrieve needs a retrieval index and none is configured; pass --index-dir DIR (or set "
                "MAGIC141_INDEX_DIR) to an index built with `magic141 index build`, or choose --prior generate",
                in_csv="prior 'retrieve' needs a retrieval index and none is configured; pass --index-dir DIR (or set "
                "MAGIC141_INDEX_DIR) to an index built with `magic141 index build`, or set prior to auto or generate",
            )

    @classmethod
    def choose(
        cls,
        model: ModelSpec,
        mode: str | None = None,
        image: str | None = None,
        index_dir: str | None = None,
        threshold: float = DEFAULT_THRESHOLD,
        strength: float = DEFAULT_STRENGTH,
        *,
        index_checked: bool = False,
    ) -> PriorSpec:
        """The first frame's source: ``mode``, by default the image when one is given, else text-to-image.

        The image must decode within the pixel limit, a searched index must be published (unless
        ``index_checked``: a batch checks its index once), and a mode that may generate needs a model
        with a text-to-image prior.
        """
        chosen = mode or ("user" if image is not None else "generate")
        built: list[PriorSpec] = []

        def text_to_image() -> None:
            if built and built[0].may_generate() and not model.text_to_image:
                raise InputError(
                    f"weights {model.weights!r} have no text-to-image prior (prior/); pass --image or add one",
                    in_csv=f"prior {chosen!r} may make the first frame with the text-to-image model, and the weights "
                    f"have none (prior/); fill the image cell or add a prior/ folder to the weights",
                )

        def index() -> None:
            if built and built[0].index_dir is not None and not index_checked:
                check_index_dir(built[0].index_dir)

        collect(
            lambda: built.append(cls(chosen, image, index_dir, threshold, strength)),
            lambda: image is None or check_image(image),
            index,
            text_to_image,
        )
        return built[0]

    def may_generate(self) -> bool:
        """Whether the text-to-image model may make the first frame."""
        return self.image is None and self.mode in ("auto", "generate")

    def settings(self) -> dict[str, float | str] | None:
        """What of this prior shapes the video beyond the mode (part of a bulk row's content key)."""
        if self.mode != "auto":
            return None
        return {
            "threshold": self.threshold,
            "strength": self.strength,
            "retrieval": "index" if self.index_dir is not None else "none",
        }


@dataclass(frozen=True)
class OutputSpec:
    """Where the video goes: the mp4 ``path`` (absolute), the catalog, and how it is published.

    An output of its own (no ``content_key``) must not replace a file; with ``create_folder`` its folder may
    be missing and is made with the video. A bulk row's ``content_key`` makes recording idempotent instead,
    and links it to ``batch_id``; ``thumbnail`` writes a contact sheet beside the video; ``gpu_limit`` names
    the Prefect global concurrency limit a render holds a slot of (None: no limit).
    """

    path: str
    catalog_url: str | SecretStr  # a SecretStr when it carries a password (tasks.catalog.hide_password)
    content_key: str | None = None
    batch_id: str | None = None
    thumbnail: bool = False
    gpu_limit: str | None = None
    create_folder: bool = False

    def __post_init__(self) -> None:
        check_mp4(self.path)
        _set(self, path=os.path.abspath(self.path))
        if self.content_key is None:
            check_output_free(self.path, self.create_folder)

    @property
    def url(self) -> str:
        """The catalog URL itself (``catalog_url`` keeps a password out of run parameters as a ``SecretStr``)."""
        return self.catalog_url if isinstance(self.catalog_url, str) else self.catalog_url.get_secret_value()


@dataclass(frozen=True)
class GenerateRequest:
    """One video to generate: its prompt, model, render, prior and output, each checked where it was built."""

    prompt: PromptSpec
    model: ModelSpec
    render: RenderSpec
    prior: PriorSpec
    output: OutputSpec

    def __post_init__(self) -> None:
        if self.render.true_cfg > 1 and not self.prompt.negative:
            raise InputError("true CFG needs a negative prompt; pass --negative-prompt")

    @classmethod
    def from_options(
        cls,
        prompt: str,
        out: str,
        catalog_url: str | SecretStr,
        *,
        image: str | None = None,
        negative_prompt: str | None = None,
        preset: str | None = None,
        weights: str | None = None,
        quantize: str | None = None,
        low_memory: bool = False,
        prior: str | None = None,
        index_dir: str | None = None,
        prior_threshold: float = DEFAULT_THRESHOLD,
        prior_strength: float = DEFAULT_STRENGTH,
        create_folder: bool = False,
        **render: Any,
    ) -> GenerateRequest:
        """The request of the ``generate`` command's options (``render``: those of :meth:`RenderSpec.resolve`).

        Every part is built, and one :class:`InputError` names the problems of all of them (the render and
        the prior are checked against the model, so only once it is valid).
        """
        parts: dict[str, Any] = {}

        def build(name: str, make: Any) -> Any:
            def run() -> None:
                if name in ("render", "prior") and "model" not in parts:
                    return
                parts[name] = make()
            return run

        collect(
            build("prompt", lambda: PromptSpec(prompt, negative_prompt)),
            build("model", lambda: ModelSpec(preset or default_preset_name(), weights, quantize, low_memory)),
            build("render", lambda: RenderSpec.resolve(parts["model"], **render)),
            build("prior", lambda: PriorSpec.choose(parts["model"], prior, image, index_dir, prior_threshold,
                                                    prior_strength)),
            build("output", lambda: OutputSpec(out, catalog_url, create_folder=create_folder)),
        )
        return cls(**parts)

"""Where a video's first frame comes from (paper Eq. 1-3): a pure decision, recorded with the video.

Modes a prompt row may ask for:

- ``user``: the row's own image.
- ``retrieve``: the best match of the retrieval index, used as it is.
- ``generate``: the text-to-image prior from the prompt alone.
- ``auto``: the row's image if it has one; else the best match when its cosine score reaches
  ``threshold``; else the text-to-image prior conditioned on the matches: img2img from the best
  match at ``strength``, or the matches as image prompts when the pipeline has an image-prompt
  adapter; with no index or no usable match, the text-to-image prior alone.

A match is usable while its file still holds the content the index recorded; the caller checks
that (I/O) and passes the others as ``stale``: they are never used, and ``retrieve`` with no
usable match is refused.

:func:`decide_prior` does no I/O. Its :attr:`PriorDecision.details` is what goes into the
catalog's ``videos.prior_details``: the mode asked, the chosen source, the conditioning, the
threshold and strength in force, every usable match (path, sha256, score, index row), best first,
and the stale matches left out, each with its problem.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from magic141.utils import InputError

PRIOR_MODES = ("auto", "user", "retrieve", "generate")
DEFAULT_THRESHOLD = 0.3
DEFAULT_STRENGTH = 0.6

Source = Literal["user", "retrieve", "generate"]
Conditioning = Literal["none", "img2img", "image_prompt"]


class RetrievalMatch(Protocol):
    """One corpus image found for a prompt (the shape of ``retrieval_index.Match``)."""

    @property
    def path(self) -> Path: ...

    @property
    def sha256(self) -> str: ...

    @property
    def score(self) -> float: ...

    @property
    def row(self) -> int: ...


@dataclass(frozen=True)
class PriorDecision:
    """What the prior stage does for one video.

    ``image`` is the first frame itself for ``user`` and ``retrieve``. For ``generate``,
    ``conditioning`` says how the text-to-image prior uses the matches: ``img2img`` starts from
    ``init_image`` at ``strength``; ``image_prompt`` passes ``reference_images`` to the
    pipeline's image-prompt adapter; ``none`` is text alone.
    """

    source: Source
    conditioning: Conditioning
    details: dict[str, Any]
    image: Path | None = None
    init_image: Path | None = None
    strength: float | None = None
    reference_images: tuple[Path, ...] = field(default=())


@dataclass(frozen=True)
class StaleMatch:
    """A match whose file is missing or no longer holds the content the index recorded."""

    match: RetrievalMatch
    problem: str


def _match_record(match: RetrievalMatch) -> dict[str, Any]:
    return {"path": str(match.path), "sha256": match.sha256, "score": float(match.score), "row": int(match.row)}


def _stale_record(stale: StaleMatch) -> dict[str, Any]:
    return {**_match_record(stale.match), "problem": stale.problem}


def _stale_summary(stale: Sequence[StaleMatch]) -> str:
    first = f"{stale[0].match.path}: {stale[0].problem}"
    if len(stale) == 1:
        return f"its one match is missing or changed since the index was built ({first})"
    return f"all {len(stale)} matches are missing or changed since the index was built (first: {first})"


def check_prior_mode(mode: str) -> None:
    """Raise ``ValueError`` unless ``mode`` is one of :data:`PRIOR_MODES`."""
    if mode not in PRIOR_MODES:
        raise InputError(f"prior {mode!r} is not one of {', '.join(PRIOR_MODES)}; choose one of them")


def check_prior_settings(threshold: float, strength: float) -> None:
    """Raise ``ValueError`` unless the ``auto`` threshold is a cosine score and the img2img strength is in (0, 1]."""
    if not math.isfinite(threshold) or not -1.0 <= threshold <= 1.0:
        raise InputError(f"retrieval threshold must be a cosine score in [-1, 1], got {threshold}")
    if not math.isfinite(strength) or not 0.0 < strength <= 1.0:
        raise InputError(f"img2img strength must be in (0, 1], got {strength}")


def _ranked(matches: Sequence[RetrievalMatch]) -> list[RetrievalMatch]:
    for match in matches:
        if not math.isfinite(match.score):
            raise InputError(f"retrieval match {str(match.path)!r} has score {match.score}; rebuild the index")
    return sorted(matches, key=lambda match: -match.score)


def decide_prior(
    mode: str,
    *,
    image: str | Path | None = None,
    matches: Sequence[RetrievalMatch] | None = None,
    threshold: float = DEFAULT_THRESHOLD,
    strength: float = DEFAULT_STRENGTH,
    image_prompt_adapter: bool = False,
    stale: Sequence[StaleMatch] = (),
) -> PriorDecision:
    """Choose the first-frame source for one video.

    ``matches`` is the retrieval index's answer for the prompt (any order; ranked here by score),
    or ``None`` when no index is configured. ``image_prompt_adapter`` says the text-to-image
    pipeline takes image prompts; without one, ``auto`` conditions through img2img. ``stale`` are
    the index's matches for the prompt whose files are missing or changed: recorded, never used.
    Raises ``ValueError`` with one line when the mode cannot be honoured.
    """
    check_prior_mode(mode)
    check_prior_settings(threshold, strength)
    ranked = [] if matches is None else _ranked(matches)
    details: dict[str, Any] = {
        "mode": mode,
        "threshold": threshold,
        "matches": [_match_record(match) for match in ranked],
    }
    if stale:
        details["stale_matches"] = [_stale_record(item) for item in stale]

    def decided(source: Source, conditioning: Conditioning, reason: str, **chosen: Any) -> PriorDecision:
        used_strength = chosen.get("strength")
        details.update(source=source, conditioning=conditioning, strength=used_strength, reason=reason)
        return PriorDecision(source, conditioning, details, **chosen)

    if mode == "user" or (mode == "auto" and image is not None):
        if image is None:
            raise InputError("prior 'user' needs an image; give the row an image or choose another prior")
        return decided("user", "none", "the row gives its own image", image=Path(image))
    if image is not None:
        raise InputError(f"prior {mode!r} would ignore the given image; drop the image or choose prior 'user'")
    if mode == "generate":
        return decided("generate", "none", "prior 'generate' asked")
    if mode == "retrieve":
        if matches is None:
            raise InputError(
                "prior 'retrieve' needs a retrieval index and none is configured; "
                "give an index folder (--index-dir) or choose prior 'generate'"
            )
        if not ranked and stale:
            raise InputError(
                f"prior 'retrieve' found no usable match in the retrieval index: {_stale_summary(stale)}; "
                f"rebuild the index (magic141 index build) or choose prior 'generate'"
            )
        if not ranked:
            raise InputError(
                "prior 'retrieve' found no match in the retrieval index; "
                "add images to the corpus or choose prior 'generate'"
            )
        return decided("retrieve", "none", "prior 'retrieve' asked: best match used", image=Path(ranked[0].path))
    if matches is None:
        return decided("generate", "none", "no retrieval index configured")
    if not ranked and stale:
        return decided("generate", "none", f"no usable match: {_stale_summary(stale)}")
    if not ranked:
        return decided("generate", "none", "the retrieval index found no match")
    best = ranked[0]
    if best.score >= threshold:
        return decided(
            "retrieve", "none", f"best match score {best.score:.4f} >= threshold {threshold:g}", image=Path(best.path)
        )
    below = f"best match score {best.score:.4f} < threshold {threshold:g}"
    if image_prompt_adapter:
        return decided(
            "generate", "image_prompt", f"{below}: matches used as image prompts",
            reference_images=tuple(Path(match.path) for match in ranked),
        )
    return decided(
        "generate", "img2img", f"{below}: img2img from the best match", init_image=Path(best.path), strength=strength
    )

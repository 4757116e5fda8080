"""Prior stage: the first frame of the video, by the prior policy (user image, retrieval, text-to-image, img2img).

The decision itself is :func:`tasks.prior_policy.decide_prior` (pure); this task gathers its inputs
(the retrieval index's matches for the prompt, each checked against its file: a file that is
missing or whose sha256 differs from the one the index recorded is left out, with a warning) and
carries it out.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import PIL.Image
from prefect import get_run_logger, task

from magic141.utils import sha256_file
from tasks.prior_policy import RetrievalMatch, StaleMatch, decide_prior
from tasks.request import GenerateRequest
from tasks.runtime.model_cache import image_prior
from tasks.runtime.publish import PRIOR_FILE

RETRIEVAL_K = 5


@dataclass(frozen=True)
class PriorResult:
    """Where the first frame comes from: ``source`` is ``user``, ``retrieve`` or ``generate``.

    ``details`` is the policy decision as recorded in the catalog (``videos.prior_details``).
    """

    source: str
    path: str
    sha256: str
    seconds: float
    model_seconds: float
    fingerprint: str | None = None
    details: dict[str, Any] | None = None


def _matches(prompt: str, index_dir: str) -> list[Any]:
    from retrieval_index import open_index

    return open_index(index_dir).search_text(prompt, RETRIEVAL_K)


def _problem(match: RetrievalMatch) -> str | None:
    """Why a match's file cannot stand for the indexed image (missing, unreadable, changed), or None."""
    try:
        actual = sha256_file(Path(match.path))
    except FileNotFoundError:
        return "file not found"
    except OSError as exc:
        return f"unreadable: {' '.join(str(exc).split()) or type(exc).__name__}"
    if actual != match.sha256:
        return f"content changed since the index was built (sha256 {actual}, indexed {match.sha256})"
    return None


def _checked(
    matches: list[RetrievalMatch], log: logging.Logger | logging.LoggerAdapter
) -> tuple[list[RetrievalMatch], list[StaleMatch]]:
    """The matches whose files still hold the indexed content, and the others with their problem."""
    usable: list[RetrievalMatch] = []
    stale: list[StaleMatch] = []
    for match in matches:
        problem = _problem(match)
        if problem is None:
            usable.append(match)
        else:
            log.warning("retrieval match %s left out: %s; rebuild the index to drop it", match.path, problem)
            stale.append(StaleMatch(match, problem))
    return usable, stale


@task(name="prior")
def prepare_prior(request: GenerateRequest, work_dir: str) -> PriorResult:
    """Choose and make the first frame of ``request``; a generated one is saved as :data:`PRIOR_FILE` in ``work_dir``."""
    run_logger = get_run_logger()
    started = time.perf_counter()
    prior, prompt, seed = request.prior, request.prompt.text, request.render.seed
    searched = prior.index_dir is not None
    matches, stale = _checked(_matches(prompt, prior.index_dir), run_logger) if searched else (None, [])
    decision = decide_prior(
        prior.mode, image=prior.image, matches=matches, threshold=prior.threshold, strength=prior.strength, stale=stale
    )
    run_logger.info("prior: %s", decision.details["reason"])
    if decision.image is not None:
        path = str(decision.image)
        return PriorResult(
            decision.source, path, sha256_file(path), time.perf_counter() - started, 0.0, details=decision.details
        )
    model = image_prior(request.model)
    negative_prompt = request.prompt.negative
    model_started = time.perf_counter()
    if decision.conditioning == "img2img" and decision.init_image is not None and decision.strength is not None:
        with PIL.Image.open(decision.init_image) as init:
            picture = model.from_image(init.convert("RGB"), prompt, seed, decision.strength, negative_prompt)
    else:
        picture = model(prompt, seed=seed, negative_prompt=negative_prompt)
    model_seconds = time.perf_counter() - model_started
    path = Path(work_dir) / PRIOR_FILE
    picture.save(path)
    run_logger.info(
        "prior: generated %dx%d image with the %s text-to-image model (%s)", *picture.size, request.model.preset,
        decision.conditioning,
    )
    return PriorResult(
        "generate", str(path), sha256_file(path), time.perf_counter() - started, model_seconds,
        model.weights_fingerprint, decision.details,
    )

"""Prior stage: the first frame of the video, from the user's image or the text-to-image model."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from prefect import get_run_logger, task

from tasks.ffmpeg import sha256_file
from tasks.models import image_prior
from tasks.request import ModelSpec


@dataclass(frozen=True)
class PriorResult:
    """Where the first frame comes from: ``source`` is ``user`` or ``generate``."""

    source: str
    path: str
    sha256: str
    seconds: float
    model_seconds: float
    fingerprint: str | None = None


@task(name="prior")
def prepare_prior(
    prompt: str,
    seed: int,
    model: ModelSpec,
    work_dir: str,
    image: str | None = None,
    negative_prompt: str | None = None,
) -> PriorResult:
    """Use ``image`` as the first frame, or generate one from ``prompt`` and save it as PNG in ``work_dir``."""
    logger = get_run_logger()
    started = time.perf_counter()
    if image is not None:
        logger.info("prior: user image %s", image)
        return PriorResult("user", image, sha256_file(image), time.perf_counter() - started, 0.0)
    prior = image_prior(model)
    model_started = time.perf_counter()
    picture = prior(prompt, seed=seed, negative_prompt=negative_prompt)
    model_seconds = time.perf_counter() - model_started
    path = Path(work_dir) / "prior.png"
    picture.save(path)
    logger.info("prior: generated %dx%d image with the %s text-to-image model", *picture.size, model.preset)
    return PriorResult(
        "generate", str(path), sha256_file(path), time.perf_counter() - started, model_seconds,
        prior.weights_fingerprint,
    )

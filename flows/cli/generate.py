"""``magic141 generate``: one video from a prompt (and optionally a first-frame image), catalogued."""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer

from flows.cli.common import (
    DEFAULT_OUT_DIR,
    UserError,
    prefect_api,
    print_fields,
    progress_bars,
    quiet_model_libraries,
    stdout,
)
from magic141.presets import default_preset_name
from magic141.utils import one_line
from tasks.catalog import CatalogError, default_catalog_url, open_catalog, redact, resolve_catalog_url
from tasks.prior_policy import DEFAULT_STRENGTH, DEFAULT_THRESHOLD
from tasks.request import GenerateRequest, check_output, check_prior, validate_request


def _slug(text: str, limit: int = 40) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:limit].strip("-")
    return slug or "video"


def default_output(prompt: str, seed: int) -> Path:
    """``out/<prompt-slug>-s<seed>.mp4``, numbered if taken (``out/`` is created once the request is valid)."""
    stem = f"{_slug(prompt)}-s{seed}"
    candidate = DEFAULT_OUT_DIR / f"{stem}.mp4"
    number = 1
    while candidate.exists() or candidate.with_suffix(".prior.png").exists():
        candidate = DEFAULT_OUT_DIR / f"{stem}-{number}.mp4"
        number += 1
    return candidate


def _check_prior_options(
    prior: str | None, image: Path | None, index_dir: Path | None, threshold: float | None, strength: float | None
) -> None:
    """Refuse bad first-frame options before anything (even the default output folder) is created."""
    for flag, value in (("--prior-threshold", threshold), ("--prior-strength", strength)):
        if value is not None and prior != "auto":
            raise UserError(f"{flag} applies to --prior auto; add --prior auto or drop {flag}")
    try:
        check_prior(
            prior, image=None if image is None else str(image), index_dir=None if index_dir is None else str(index_dir),
            threshold=DEFAULT_THRESHOLD if threshold is None else threshold,
            strength=DEFAULT_STRENGTH if strength is None else strength,
        )
    except ValueError as exc:
        raise UserError(one_line(exc)) from None


def _checked(request: GenerateRequest, default_out: bool) -> GenerateRequest:
    """The validated request, its catalog reachable; with ``default_out`` the default output folder is created last.

    The catalog is opened before that folder is created, except the default catalog, which lives in it.
    """
    catalog_in_new_folder = (
        default_out and not DEFAULT_OUT_DIR.exists()
        and request.catalog_url == default_catalog_url(DEFAULT_OUT_DIR.absolute())
    )
    try:
        request = validate_request(request, check_out=not default_out)
        if not catalog_in_new_folder:
            open_catalog(request.catalog_url, wait_s=0).close()
        if default_out:
            DEFAULT_OUT_DIR.mkdir(exist_ok=True)
            check_output(request.out)
        if catalog_in_new_folder:
            open_catalog(request.catalog_url, wait_s=0).close()
    except (ValueError, CatalogError) as exc:
        raise UserError(str(exc)) from None
    return request


def generate(
    prompt: Annotated[str, typer.Option(help="What the video shows.")],
    image: Annotated[Path | None, typer.Option(help="First frame; without it the text-to-image prior makes one.")] = None,
    seconds: Annotated[float, typer.Option(help="Video length in seconds (at most 600).")] = 5.0,
    fps: Annotated[int | None, typer.Option(help="Frames per second, 1-120 (default: the preset's, 8 for toy).")] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed; random if omitted, always recorded.")] = None,
    steps: Annotated[int | None, typer.Option(help="Sampler steps per window (default: the preset's).")] = None,
    guidance: Annotated[float | None, typer.Option(help="Embedded guidance scale w (preset default).")] = None,
    true_cfg: Annotated[float, typer.Option(help="True CFG scale for non-distilled weights (needs --negative-prompt).")] = 1.0,
    negative_prompt: Annotated[str | None, typer.Option(help="What the video should not show.")] = None,
    preset: Annotated[str | None, typer.Option(envvar="MAGIC141_PRESET", help="Model preset: video geometry, sampler defaults and, without --weights, its own weights (toy: trained, tiny: random).")] = None,
    weights: Annotated[Path | None, typer.Option(help="Weights folder (transformer/, vae/, ...) or a JSON file naming each component's folder.")] = None,
    quantize: Annotated[str | None, typer.Option(help="Quantize transformer and text encoder weights on the fly: int8 or int4.")] = None,
    low_memory: Annotated[bool, typer.Option("--low-memory", help="Keep each model on the GPU only while it runs.")] = False,
    windows: Annotated[str, typer.Option(help="Long-video windows: chained (each starts at the last frame) or parallel (co-denoised).")] = "chained",
    size: Annotated[str, typer.Option(help="Video size WxH, one of the preset's (tiny and toy: 64x48, 48x64); auto: the one nearest the first frame's aspect ratio.")] = "auto",
    overlap: Annotated[int | None, typer.Option(help="Latent frames shared by neighbouring parallel windows (preset default).")] = None,
    workers: Annotated[int, typer.Option(help="Ray render actors, one per GPU; 0 renders in this process.")] = 0,
    ray_address: Annotated[str | None, typer.Option(envvar="RAY_ADDRESS", help="Ray cluster to render on (default: a local Ray instance).")] = None,
    prior: Annotated[str | None, typer.Option(help="First frame: auto, user, retrieve or generate (default: user with --image, else generate).")] = None,
    index_dir: Annotated[Path | None, typer.Option(envvar="MAGIC141_INDEX_DIR", help="Retrieval index searched by --prior auto and retrieve.")] = None,
    prior_threshold: Annotated[float | None, typer.Option(help=f"--prior auto: cosine score from which the best match is used as it is ({DEFAULT_THRESHOLD}).")] = None,
    prior_strength: Annotated[float | None, typer.Option(help=f"--prior auto: img2img strength from the best match below the threshold ({DEFAULT_STRENGTH}).")] = None,
    out: Annotated[Path | None, typer.Option(help="Output .mp4 (default: out/<prompt>-s<seed>.mp4).")] = None,
    catalog: Annotated[str | None, typer.Option(help="Catalog URL (default: $MAGIC141_CATALOG_URL or sqlite in the output folder).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Generate one video from a prompt (and optionally a first-frame image), and catalogue it."""
    seed = secrets.randbelow(2**31) if seed is None else seed
    _check_prior_options(prior, image, index_dir, prior_threshold, prior_strength)
    out_path = out if out is not None else default_output(prompt, seed)
    request = _checked(
        GenerateRequest(
            prompt=prompt,
            out=str(out_path),
            catalog_url=resolve_catalog_url(catalog, out_path.absolute().parent),
            image=None if image is None else str(image),
            seconds=seconds,
            fps=fps,
            seed=seed,
            steps=steps,
            guidance=guidance,
            true_cfg=true_cfg,
            negative_prompt=negative_prompt,
            preset=preset or default_preset_name(),
            weights=None if weights is None else str(weights),
            quantize=quantize,
            low_memory=low_memory,
            windows=windows,
            overlap=overlap,
            size=size,
            workers=workers,
            ray_address=ray_address,
            prior=prior,
            index_dir=None if index_dir is None else str(index_dir),
            prior_threshold=DEFAULT_THRESHOLD if prior_threshold is None else prior_threshold,
            prior_strength=DEFAULT_STRENGTH if prior_strength is None else prior_strength,
        ),
        default_out=out is None,
    )
    quiet_model_libraries(ray=request.workers > 0)
    from flows.generate import generate as generate_flow
    from tasks.catalog import hide_password

    with prefect_api(), progress_bars():
        try:
            result = generate_flow(replace(request, catalog_url=hide_password(request.catalog_url)))
        finally:
            if request.workers:
                from tasks.runtime.render_pool import shutdown_pools

                shutdown_pools()
    summary = {
        "id": result.video_id,
        "video": result.path,
        "sha256": result.sha256,
        "frames": result.frames,
        "fps": result.fps,
        "size": f"{result.width}x{result.height}",
        "seed": request.seed,
        "prior": result.prior_source,
        "catalog": redact(result.catalog_url),
    }
    if as_json:
        stdout.print_json(json.dumps(summary))
        return
    print_fields(summary.items(), 8)

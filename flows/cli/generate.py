"""``magic141 generate``: one video from a prompt (and optionally a first-frame image), catalogued."""

from __future__ import annotations

import json
import re
import secrets
from pathlib import Path
from typing import Annotated

import typer

from flows.cli.common import (
    DEFAULT_OUT_DIR,
    bad_input_from_flow,
    prefect_api,
    print_fields,
    progress_bars,
    quiet_model_libraries,
    stdout,
)
from magic141.utils import InputError
from tasks.catalog import CatalogError, default_catalog_url, hide_password, open_catalog, redact, resolve_catalog_url
from tasks.prior_policy import DEFAULT_STRENGTH, DEFAULT_THRESHOLD
from tasks.request import GenerateRequest


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


def _check_prior_options(prior: str | None, threshold: float | None, strength: float | None) -> None:
    """The options of ``--prior auto`` are refused with another prior."""
    for flag, value in (("--prior-threshold", threshold), ("--prior-strength", strength)):
        if value is not None and prior != "auto":
            raise InputError(f"{flag} applies to --prior auto; add --prior auto or drop {flag}")


def _check_catalog(url: str, in_new_folder: bool) -> None:
    """Reach the catalog before any work; one in the default output folder still to be made is created with it."""
    if in_new_folder:
        return
    try:
        open_catalog(url, wait_s=0).close()
    except CatalogError as exc:
        raise InputError(str(exc)) from None


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
    _check_prior_options(prior, prior_threshold, prior_strength)
    out_path = out if out is not None else default_output(prompt, seed)
    catalog_url = resolve_catalog_url(catalog, out_path.absolute().parent)
    request = GenerateRequest.from_options(
        prompt,
        str(out_path),
        hide_password(catalog_url),  # run parameters never hold a password
        image=None if image is None else str(image),
        negative_prompt=negative_prompt,
        preset=preset,
        weights=None if weights is None else str(weights),
        quantize=quantize,
        low_memory=low_memory,
        prior=prior,
        index_dir=None if index_dir is None else str(index_dir),
        prior_threshold=DEFAULT_THRESHOLD if prior_threshold is None else prior_threshold,
        prior_strength=DEFAULT_STRENGTH if prior_strength is None else prior_strength,
        create_folder=out is None,
        seconds=seconds,
        fps=fps,
        seed=seed,
        steps=steps,
        guidance=guidance,
        true_cfg=true_cfg,
        windows=windows,
        overlap=overlap,
        size=size,
        workers=workers,
        ray_address=ray_address,
    )
    _check_catalog(catalog_url, out is None and not DEFAULT_OUT_DIR.exists()
                   and catalog_url == default_catalog_url(DEFAULT_OUT_DIR.absolute()))
    quiet_model_libraries(ray=request.render.workers > 0)
    from flows.generate import generate as generate_flow

    with prefect_api(), bad_input_from_flow(InputError), progress_bars():
        try:
            result = generate_flow(request)
        finally:
            if request.render.workers:
                from tasks.runtime.render_pool import shutdown_pools

                shutdown_pools()
    summary = {
        "id": result.video_id,
        "video": result.path,
        "sha256": result.sha256,
        "frames": result.frames,
        "fps": result.fps,
        "size": f"{result.width}x{result.height}",
        "seed": request.render.seed,
        "prior": result.prior_source,
        "catalog": redact(catalog_url),
    }
    if as_json:
        stdout.print_json(json.dumps(summary))
        return
    print_fields(summary.items(), 8)

"""The ``magic141`` command line: generate videos and read the catalog."""

from __future__ import annotations

import json
import re
import secrets
import sys
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from flows.cli_bulk import bulk
from flows.cli_catalog_ext import check_export, check_row_status, export_catalog, print_batch_rows
from flows.cli_common import (
    UserError,
    cell,
    configure_cli,
    prefect_api,
    print_fields,
    progress_bars,
    quiet_model_libraries,
    stderr,
    stdout,
)
from flows.cli_evaluate import evaluate
from flows.cli_index import index_app
from flows.cli_train import train_app
from magic141.presets import default_preset_name
from magic141.utils import one_line
from tasks.catalog import (
    CATALOG_URL_ENV,
    CatalogError,
    default_catalog_url,
    open_catalog,
    redact,
    resolve_catalog_url,
)
from tasks.ffmpeg import ProbeError
from tasks.prior_policy import DEFAULT_STRENGTH, DEFAULT_THRESHOLD
from tasks.request import (
    QUANTIZATION_LEVELS,
    GenerateRequest,
    check_output,
    check_prior,
    printable_text,
    validate_request,
)
from tasks.services import ServiceStartError

DEFAULT_OUT_DIR = Path("out")

app = typer.Typer(help="Magic 1-For-1 video generation pipeline.", no_args_is_help=True, add_completion=False)
catalog_app = typer.Typer(help="Read the provenance catalog.", no_args_is_help=True)
app.add_typer(catalog_app, name="catalog")
model_app = typer.Typer(help="Convert, quantize and inspect model weights.", no_args_is_help=True)
app.add_typer(model_app, name="model")
app.add_typer(index_app, name="index")
app.add_typer(train_app, name="train")
app.command("bulk")(bulk)
app.command("evaluate")(evaluate)
# Exit status of a command whose own services (Prefect's temporary server, a local Ray) did not start: try again
# later or run the service separately (sysexits' EX_TEMPFAIL).
EXIT_SERVICE_START = 75


@app.callback()
def _options(
    verbose: Annotated[bool, typer.Option(
        "--verbose", "-v", help="Also show the libraries' warnings, progress bars and Prefect's run log lines."
    )] = False,
) -> None:
    """Magic 1-For-1 video generation pipeline."""
    configure_cli(verbose)


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


@app.command()
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
    if not prompt.strip():
        raise UserError("prompt is empty; give a text describing the video")
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
                from tasks.render_pool import shutdown_pools

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


def _missing_sqlite_file(url: str) -> bool:
    """Whether ``url`` names a SQLite file that does not exist (a malformed URL is left to ``open_catalog``)."""
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        return False
    database = parsed.database
    return parsed.get_backend_name() == "sqlite" and database not in (None, "", ":memory:") and not Path(database).exists()


def _open(catalog: str | None) -> Any:
    """The catalog the read-only commands read; a SQLite catalog file that does not exist is refused, not created."""
    url = resolve_catalog_url(catalog, DEFAULT_OUT_DIR.absolute())
    if _missing_sqlite_file(url):
        raise UserError(f"catalog {redact(url)} does not exist; check --catalog or ${CATALOG_URL_ENV}")
    try:
        return open_catalog(url, wait_s=0)
    except CatalogError as exc:
        raise UserError(str(exc)) from None


CatalogOption = Annotated[
    str | None, typer.Option("--catalog", help="Catalog URL (default: $MAGIC141_CATALOG_URL or out/catalog.db).")
]


@catalog_app.command("list")
def catalog_list(
    catalog: CatalogOption = None,
    limit: Annotated[int, typer.Option(help="Newest N videos (or batch rows with --status).")] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON array of rows.")] = False,
    status: Annotated[
        str | None,
        typer.Option(help="List bulk batch rows with this status instead: pending, done, skipped, failed or rejected."),
    ] = None,
) -> None:
    """List catalogued videos, newest first; with --status, the bulk batch rows in that state."""
    if status is not None:
        check_row_status(status)
        with _open(catalog) as store:
            print_batch_rows(store, status, limit, as_json)
        return
    with _open(catalog) as store:
        rows = store.list_videos(limit=limit)
    if as_json:
        stdout.print_json(json.dumps(rows))
        return
    table = Table("id", "created", "prompt", "frames", "fps", "size", "prior", "output")
    for row in rows:
        table.add_row(
            row["id"][:12],
            row["created_at"][:19],
            cell(row["prompt"][:40]),
            str(row["frames"]),
            str(row["fps"]),
            f"{row['width']}x{row['height']}",
            row["prior_source"],
            cell(row["output_path"]),
        )
    stdout.print(table)


@catalog_app.command("sheet")
def catalog_sheet(
    out: Annotated[Path, typer.Option(help="The PNG to write.")],
    catalog: CatalogOption = None,
    limit: Annotated[int, typer.Option(help="Newest N videos, shown oldest first.")] = 20,
    frames: Annotated[int, typer.Option(help="Frames shown per video, first to last.")] = 8,
) -> None:
    """Write one contact sheet of the newest videos: a row of frames per video, under its prompt."""
    from tasks.thumbnails import write_videos_sheet

    if limit < 1 or frames < 1:
        raise UserError(f"--limit and --frames must be >= 1, got {limit} and {frames}")
    if not out.absolute().parent.is_dir():
        raise UserError(f"folder {str(out.absolute().parent)!r} does not exist; create it or choose another --out")
    with _open(catalog) as store:
        rows = store.list_videos(limit=limit)
    videos = [(f"{printable_text(row['prompt'])[:90]} ({row['prior_source']} first frame, {row['frames']} frames)",
               row["output_path"]) for row in reversed(rows) if Path(row["output_path"]).is_file()]
    try:
        stdout.print(str(write_videos_sheet(videos, out, frames)))
    except (ValueError, ProbeError) as exc:
        raise UserError(one_line(exc)) from None


@catalog_app.command("show")
def catalog_show(
    video_id: Annotated[str, typer.Argument(metavar="ID", help="Video id or a unique prefix of it.")],
    catalog: CatalogOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="The row as JSON.")] = False,
) -> None:
    """Show every recorded field of one video, and its windows."""
    with _open(catalog) as store:
        try:
            row = store.get_video(video_id)
        except CatalogError as exc:
            raise UserError(str(exc)) from None
        windows = store.video_windows(row["id"])
    if as_json:
        stdout.print_json(json.dumps({**row, "windows": windows}))
        return
    print_fields(
        ((key, json.dumps(value) if isinstance(value, (dict, list)) else value) for key, value in row.items()), 20
    )
    table = Table("window", "frames", "latents", "actor", "node", "gpu", "seconds", "attempts")
    for window in windows:
        table.add_row(
            str(window["window_index"]),
            f"{window['frame_start']}-{window['frame_end'] - 1}",
            f"{window['latent_start']}-{window['latent_end'] - 1}",
            cell(window["actor"]),
            cell(window["node"]),
            cell(window["gpu_id"] or "-"),
            f"{window['seconds']:.2f}",
            str(window["attempts"]),
        )
    stdout.print(table)


@catalog_app.command("export")
def catalog_export(
    catalog: CatalogOption = None,
    export_format: Annotated[str, typer.Option("--format", help="jsonl: one JSON object per video.")] = "jsonl",
    out: Annotated[Path | None, typer.Option(help="Write to this file (replaced atomically) instead of stdout.")] = None,
) -> None:
    """Export every video with its windows and the batch row that made it."""
    check_export(export_format, out)
    with _open(catalog) as store:
        export_catalog(store, out)


def _user_errors(action: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return action(*args, **kwargs)
    except (ValueError, OSError) as exc:
        raise UserError(one_line(exc)) from None


@model_app.command("convert")
def model_convert(
    official: Annotated[Path, typer.Option(help="Official Magic 1-For-1 transformer checkpoint (.pth or .safetensors).")],
    out: Annotated[Path, typer.Option(help="New folder for the converted transformer (diffusers layout, safetensors).")],
    rope_axes: Annotated[str | None, typer.Option(
        help="Rotary split T,H,W of the attention head, for heads not 128 wide (HunyuanVideo's is 16,56,56)."
    )] = None,
    keep_guidance: Annotated[bool, typer.Option(
        "--keep-guidance", help="Keep a checkpoint's guidance_in tensors as a guidance embedding (dropped by default, "
        "as the official model class drops them)."
    )] = False,
) -> None:
    """Convert the official transformer checkpoint to diffusers' HunyuanVideo layout."""
    quiet_model_libraries()
    from magic141.convert import convert_official_checkpoint

    axes = None
    if rope_axes is not None:
        try:
            axes = tuple(int(part) for part in rope_axes.split(","))
        except ValueError:
            raise UserError(f"--rope-axes {rope_axes!r} is not three integers T,H,W such as 16,56,56") from None
    written, guidance = _user_errors(convert_official_checkpoint, official, out, rope_axes_dim=axes,
                                     keep_guidance=keep_guidance)
    stdout.print(f"converted transformer written to {written}", highlight=False, soft_wrap=True, markup=False)
    if guidance is not None:
        stdout.print(f"the checkpoint {guidance}", highlight=False, soft_wrap=True, markup=False)


@model_app.command("quantize")
def model_quantize(
    weights: Annotated[Path, typer.Option(help="Weights folder or JSON file to quantize.")],
    out: Annotated[Path, typer.Option(help="New folder for the pre-quantized weights.")],
    level: Annotated[str, typer.Option(help="int8 (as in the paper) or int4.")] = "int8",
) -> None:
    """Save weights with the transformer and text encoders pre-quantized (they load without re-quantizing)."""
    quiet_model_libraries()
    from magic141.weights import quantize_weights_folder

    written = _user_errors(quantize_weights_folder, weights, out, level)
    stdout.print(f"{level} weights written to {written}", highlight=False, soft_wrap=True, markup=False)


@model_app.command("report")
def model_report_command(
    preset: Annotated[str, typer.Option(help="Preset to report (random weights; full-size presets from shapes only).")] = "tiny",
    weights: Annotated[Path | None, typer.Option(help="Report these weights instead of the preset's random ones.")] = None,
    quantize: Annotated[str | None, typer.Option(help="Also report int8 / int4 quantized sizes.")] = None,
    probe: Annotated[bool, typer.Option("--probe", help="Measure the quantized transformer's output error and peak memory.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Per component: parameters, dtype, weight bytes (and quantized bytes with --quantize)."""
    from magic141.presets import get_preset

    preset_config = _user_errors(get_preset, preset)
    if quantize is not None and quantize not in QUANTIZATION_LEVELS:
        raise UserError(f"unknown quantization level {quantize!r}; choose one of: {', '.join(QUANTIZATION_LEVELS)}")
    quiet_model_libraries()
    from magic141.report import model_report

    report = _user_errors(model_report, preset_config, weights, quantize, probe)
    if as_json:
        stdout.print_json(json.dumps(report))
        return
    table = Table("component", "parameters", "dtype", "weight bytes", "quantized bytes", "ratio")
    for entry in report["components"]:
        table.add_row(
            entry["component"],
            f"{entry['parameters']:,}",
            entry["dtype"],
            f"{entry['weight_bytes']:,}",
            f"{entry['quantized_weight_bytes']:,}" if "quantized" in entry else "-",
            f"{entry['quantized_ratio']:.3f}" if "quantized" in entry else "-",
        )
    stdout.print(table)
    if "probe" in report:
        stdout.print_json(json.dumps(report["probe"]))


def main(argv: list[str] | None = None) -> int:
    """Entry point: one line on stderr and a non-zero status for every user error, no traceback."""
    command = typer.main.get_command(app)
    try:
        status = command.main(args=argv, prog_name="magic141", standalone_mode=False)
    except UserError as exc:
        stderr.print(f"magic141: error: {exc}", highlight=False, markup=False, soft_wrap=True)
        return 2
    except ServiceStartError as exc:
        stderr.print(f"magic141: error: {exc}", highlight=False, markup=False, soft_wrap=True)
        return EXIT_SERVICE_START
    except typer.Exit as exc:
        return exc.exit_code
    except typer.TyperException as exc:  # usage errors: unknown option, value of the wrong type, ...
        stderr.print(f"magic141: error: {exc.format_message()}", highlight=False, markup=False, soft_wrap=True)
        return 2
    except typer.Abort:
        stderr.print("magic141: aborted", highlight=False)
        return 130
    except Exception as exc:  # the flow run already logged the traceback
        stderr.print(f"magic141: error: {one_line(exc)}", highlight=False, markup=False, soft_wrap=True)
        return 1
    return status if isinstance(status, int) else 0


if __name__ == "__main__":
    sys.exit(main())

"""``magic141 evaluate``: prompt adherence of a video model on the toy world, as a table and a JSON file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from flows.cli.common import quiet_model_libraries, stderr, stdout
from magic141.utils import InputError, one_line
from tasks.runtime.adherence import AdherenceSettings

ROWS = (("colour", "colour", "%"), ("shape", "shape", "%"), ("background", "background", "%"),
        ("motion direction (1st second)", "motion", "%"), ("motion kept (every second)", "motion_sustained", "%"),
        ("first-frame PSNR (median)", "first_frame_psnr", "dB"), ("first-frame SSIM", "first_frame_ssim", ""),
        ("temporal flicker", "flicker", ""), ("motion magnitude", "motion_magnitude", ""),
        ("seam discontinuity", "seam", ""))


def evaluate(
    preset: Annotated[str | None, typer.Option(envvar="MAGIC141_PRESET", help="Model preset (default: toy, its trained weights).")] = None,
    weights: Annotated[Path | None, typer.Option(help="Weights folder to evaluate instead of the preset's own.")] = None,
    split: Annotated[str, typer.Option(help="Captions: held-out (combinations never trained on) or train.")] = "held-out",
    count: Annotated[int, typer.Option(help="Videos, cycling through the split's captions with new scenes.")] = 100,
    seconds: Annotated[float | None, typer.Option(help="Video length (default: one window).")] = None,
    windows: Annotated[str, typer.Option(help="Long-video windows: chained or parallel.")] = "chained",
    steps: Annotated[int | None, typer.Option(help="Sampler steps per window (default: the preset's).")] = None,
    first_frame: Annotated[str, typer.Option(help="world: the scene's own first frame (a user image); prior: the text-to-image prior's.")] = "world",
    seed: Annotated[int, typer.Option(help="Seed of the scenes and the sampler noise.")] = 0,
    guidance: Annotated[float | None, typer.Option(help="Guidance scale, a model input (default: the preset's).")] = None,
    true_cfg: Annotated[
        float, typer.Option(help="True CFG scale against the empty prompt, two passes per step (for teachers); 1: none.")
    ] = 1.0,
    out: Annotated[Path | None, typer.Option(help="Write every case and the summary to this JSON file.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Sample toy-world captions and read colour, shape, background and motion off the frames (no model needed)."""
    from magic141.presets import default_preset_name
    from tasks.request import ModelSpec, check_steps
    from tasks.request.checks import check_guidance

    try:
        settings = AdherenceSettings(split, count, seconds, windows, steps, first_frame, seed, guidance, true_cfg)
        if steps is not None:
            check_steps(steps)
        if guidance is not None:
            check_guidance(guidance)
        model = ModelSpec(preset or default_preset_name(), None if weights is None else str(weights))
        if out is not None and not out.absolute().parent.is_dir():
            raise InputError(f"folder {str(out.absolute().parent)!r} does not exist; create it or choose another --out")
    except ValueError as exc:
        raise InputError(one_line(exc)) from None
    quiet_model_libraries()
    from magic141.pipeline import Magic141Pipeline
    from magic141.prior import ImagePrior
    from tasks.runtime.adherence import evaluate_adherence

    pipeline = Magic141Pipeline.from_preset(model.preset, weights=model.weights)
    prior = None
    if first_frame == "prior":
        prior = ImagePrior.from_preset(model.preset) if weights is None else ImagePrior.from_pretrained(
            Path(model.weights) / "prior", model.preset)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TimeRemainingColumn())
    with Progress(*columns, console=stderr, transient=True) as progress:
        bar = progress.add_task(f"evaluate {split}", total=count)
        try:
            result = evaluate_adherence(pipeline, settings, prior, lambda done, total: progress.update(bar, completed=done))
        except ValueError as exc:
            raise InputError(one_line(exc)) from None
    result["model"] = {"preset": model.preset, "weights": model.weights, "fingerprint": pipeline.weights_fingerprint}
    if out is not None:
        partial = out.with_name(out.name + ".partial")
        partial.write_text(json.dumps(result, indent=2) + "\n")
        partial.replace(out)
    summary = result["summary"]
    if as_json:
        stdout.print_json(json.dumps({"model": result["model"], "settings": result["settings"], "summary": summary}))
        return
    cfg = f", true CFG {true_cfg:g}" if true_cfg > 1 else ""
    table = Table("score", "value", title=f"{split} captions, {count} videos of {summary['frames']} frames, "
                                          f"{windows} windows, {result['settings']['steps']} steps, guidance "
                                          f"{result['settings']['guidance']:g}{cfg}, first frame: {first_frame}")
    for label, key, unit in ROWS:
        value = summary[key]
        text = "-" if value is None else f"{100 * value:.1f}%" if unit == "%" else f"{value:.2f}{' ' + unit if unit else ''}"
        table.add_row(label, text)
    stdout.print(table)
    words = Table("caption part", "word", "videos showing it", title="by caption word")
    for part, scores in summary["by_caption_part"].items():
        for word, score in scores.items():
            shown = round(score["score"] * score["cases"])
            words.add_row(part, word, f"{shown}/{score['cases']} ({100 * score['score']:.0f}%)")
    stdout.print(words)

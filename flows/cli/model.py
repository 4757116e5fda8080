"""``magic141 model``: convert the official checkpoint, pre-quantize weights, report sizes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from flows.cli.common import quiet_model_libraries, stdout
from magic141.utils import InputError, one_line
from tasks.request import QUANTIZATION_LEVELS

model_app = typer.Typer(help="Convert, quantize and inspect model weights.", no_args_is_help=True)


def _user_errors(action: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return action(*args, **kwargs)
    except (ValueError, OSError) as exc:
        raise InputError(one_line(exc)) from None


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
            raise InputError(f"--rope-axes {rope_axes!r} is not three integers T,H,W such as 16,56,56") from None
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
        raise InputError(f"unknown quantization level {quantize!r}; choose one of: {', '.join(QUANTIZATION_LEVELS)}")
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

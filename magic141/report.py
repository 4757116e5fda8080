"""Size and quantization report of a model's components (``magic141 model report``)."""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

import torch

from magic141.components import I2VComponents, build_i2v_components
from magic141.presets import Preset
from magic141.quantization import QUANTIZED_COMPONENTS, parameter_count, quantize_weights, weight_bytes
from magic141.utils import InputError
from magic141.weights import WeightPaths, load_i2v_components


def _dtype(module: torch.nn.Module) -> str:
    dtypes = sorted({str(p.dtype).removeprefix("torch.") for p in module.parameters()})
    return "/".join(dtypes)


def _describe(name: str, module: torch.nn.Module, quantize: str | None) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "component": name,
        "parameters": parameter_count(module),
        "dtype": _dtype(module),
        "weight_bytes": weight_bytes(module),
    }
    if quantize is not None and name in QUANTIZED_COMPONENTS:
        quantized = quantize_weights(copy.deepcopy(module), quantize)
        entry["quantized"] = quantize
        entry["quantized_weight_bytes"] = weight_bytes(quantized)
        entry["quantized_ratio"] = entry["quantized_weight_bytes"] / entry["weight_bytes"]
    return entry


def preset_components(preset: Preset, on_meta: bool) -> dict[str, torch.nn.Module]:
    """A preset's modules, bf16 but the float32 VAE: random weights, or shapes only (meta device) for big presets."""
    return build_i2v_components(preset, "meta" if on_meta else "cpu", torch.bfloat16).modules()


@torch.no_grad()
def probe_transformer(module: torch.nn.Module, quantize: str, seed: int = 0) -> dict[str, float]:
    """Relative output error of the quantized transformer against the original on a random input, and peak memory."""
    config = module.config
    device = next(module.parameters()).device
    generator = torch.Generator("cpu").manual_seed(seed)
    inputs = {
        "hidden_states": torch.randn(1, config.in_channels, 3, 8, 8, generator=generator),
        "timestep": torch.tensor([500.0]),
        "encoder_hidden_states": torch.randn(1, 16, config.text_embed_dim, generator=generator),
        "encoder_attention_mask": torch.ones(1, 16),
        "pooled_projections": torch.randn(1, config.pooled_projection_dim, generator=generator),
        "guidance": torch.tensor([6000.0]) if config.guidance_embeds else None,
    }
    dtype = next(module.parameters()).dtype
    inputs = {k: v.to(device, dtype) if v is not None and v.is_floating_point() else v for k, v in inputs.items()}

    def run(model: torch.nn.Module) -> tuple[torch.Tensor, float, int | None]:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        started = time.perf_counter()
        output = model(**inputs, return_dict=False)[0].float()
        seconds = time.perf_counter() - started
        peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
        return output, seconds, peak

    reference, reference_s, reference_peak = run(module)
    quantized_model = quantize_weights(copy.deepcopy(module), quantize)
    output, quantized_s, quantized_peak = run(quantized_model)
    error = (output - reference).norm() / reference.norm()
    return {
        "relative_output_error": float(error),
        "forward_seconds": reference_s,
        "quantized_forward_seconds": quantized_s,
        "peak_memory_bytes": reference_peak,
        "quantized_peak_memory_bytes": quantized_peak,
    }


def model_report(
    preset: Preset, weights: str | Path | None = None, quantize: str | None = None, probe: bool = False
) -> dict[str, Any]:
    """Per component: parameters, dtype, weight bytes; with ``quantize`` the quantized bytes and ratio.

    Presets too large to materialise here (``full-540p``) are measured on the meta device: shapes,
    counts and byte sizes are exact, but there are no values to probe.
    """
    on_meta = weights is None and preset.name != "tiny"
    if weights is not None:
        loaded: I2VComponents = load_i2v_components(WeightPaths.resolve(weights), preset.flow_shift, torch.bfloat16)
        modules = loaded.modules()
    else:
        modules = preset_components(preset, on_meta)
    report: dict[str, Any] = {
        "preset": preset.name,
        "weights": str(weights) if weights is not None else "random",
        "shapes_only": on_meta,
        "components": [_describe(name, module, quantize) for name, module in modules.items()],
    }
    if probe:
        if on_meta:
            raise InputError(f"--probe needs real weights; preset {preset.name!r} is reported from shapes only")
        if quantize is None:
            raise InputError("--probe compares the quantized transformer with the original; pass --quantize")
        report["probe"] = probe_transformer(modules["transformer"], quantize)
    return report

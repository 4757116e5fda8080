"""Full-size Magic 1-For-1 on one GPU with random weights: DiT step, VAE decode, memory, TFLOP/s, diffusers side by side.

Nothing is downloaded: every component of the preset (DiT, VAE, LLaVA VLM, CLIP text) is built
directly on the device with seeded random weights, and the prompt is a random embedding of the real
sequence length (VLM image tokens in front of the text tokens). One window of the preset is measured:

1. bf16: resident weight bytes, one DiT forward (one sampler step: the guidance is embedded, so one
   pass per step), achieved TFLOP/s against the FLOPs of that forward counted below from the
   architecture, one VAE decode of the window, and the whole window (image latent, ``--steps``
   steps, decode) with its peak device memory and the seconds of video it makes per wall second;
2. the same window rendered by diffusers' ``HunyuanVideoImageToVideoPipeline`` on the same weights,
   noise and embeddings in the same run: wall-time ratio and the largest pixel difference;
3. int8 (optimum-quanto weight-only on the transformer and both text encoders, as in the paper):
   the same figures again;
4. with ``--low-memory``: the int8 window with each model on the GPU only while it runs.

Run on a CUDA machine: ``python bench/model_gpu.py`` (full-540p, about 45 GB of bf16 weights).
``--preset tiny --device cpu`` runs every measurement in seconds anywhere; the test suite does so to
keep this script working.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import statistics
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import PIL.Image
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import write_section  # noqa: E402

from magic141.components import I2VComponents, build_i2v_components  # noqa: E402
from magic141.pipeline import Magic141Pipeline  # noqa: E402
from magic141.presets import Preset, TextEncoderConfig, TransformerConfig, get_preset  # noqa: E402
from magic141.quantization import QUANTIZED_COMPONENTS, quantize_weights, weight_bytes  # noqa: E402
from magic141.sampler import PromptEmbeddings, SamplerConfig, denoise, sample_window  # noqa: E402
from magic141.windows import Window  # noqa: E402

logger = logging.getLogger("bench.model_gpu")

# diffusers' I2V prompt encoder keeps every 2nd VLM image token, and crops the chat template around
# the user prompt so that ``max_sequence_length - 4`` text positions remain.
IMAGE_EMBED_INTERLEAVE = 2
TEMPLATE_TOKENS_CROPPED = 4


# -- counted FLOPs ----------------------------------------------------------------------------------


def _linear(rows: int, fan_in: int, fan_out: int) -> int:
    return 2 * rows * fan_in * fan_out


def _attention(tokens: int, dim: int) -> int:
    """Q @ K^T and weights @ V over ``tokens`` tokens of total width ``dim`` (all heads)."""
    return 4 * tokens * tokens * dim


def transformer_flops(
    t: TransformerConfig, text: TextEncoderConfig, frames: int, height: int, width: int, text_tokens: int
) -> dict[str, int]:
    """Multiply-add FLOPs (2 per MAC) of one forward of diffusers' HunyuanVideo DiT, batch 1, by part.

    ``frames``, ``height`` and ``width`` are the latent's; every projection and attention product
    is counted (padded text tokens included: the attention mask does not skip them). Element-wise
    work (norms, RoPE, activations, softmax) is not.
    """
    d = t.hidden_size
    mlp = int(d * t.mlp_ratio)
    patch = t.patch_size_t * t.patch_size**2
    image_tokens = (frames // t.patch_size_t) * (height // t.patch_size) * (width // t.patch_size)
    tokens = image_tokens + text_tokens

    def embedder(fan_in: int) -> int:  # a two-layer MLP on one vector
        return _linear(1, fan_in, d) + _linear(1, d, d)

    conditioning = embedder(256) + embedder(text.clip_hidden_size) + (embedder(256) if t.guidance_embeds else 0)
    context = embedder(256) + embedder(text.llm_hidden_size) + _linear(text_tokens, text.llm_hidden_size, d)
    refiner = (
        _linear(1, d, 2 * d)
        + 4 * _linear(text_tokens, d, d)
        + _attention(text_tokens, d)
        + _linear(text_tokens, d, mlp)
        + _linear(text_tokens, mlp, d)
    )
    double = (
        2 * _linear(1, d, 6 * d)
        + 4 * _linear(tokens, d, d)
        + _attention(tokens, d)
        + _linear(tokens, d, mlp)
        + _linear(tokens, mlp, d)
    )
    single = (
        _linear(1, d, 3 * d)
        + 3 * _linear(tokens, d, d)
        + _linear(tokens, d, mlp)
        + _linear(tokens, d + mlp, d)
        + _attention(tokens, d)
    )
    parts = {
        "patch_embed": _linear(image_tokens, t.in_channels * patch, d),
        "conditioning": conditioning + context,
        "token_refiner": t.num_refiner_layers * refiner,
        "double_blocks": t.num_layers * double,
        "single_blocks": t.num_single_layers * single,
        "final_layer": _linear(1, d, 2 * d) + _linear(image_tokens, d, patch * t.latent_channels),
    }
    parts["total"] = sum(parts.values())
    return parts


def prompt_tokens(text: TextEncoderConfig) -> int:
    """Length of the prompt embedding the I2V encoder gives the DiT: kept image tokens, then text."""
    return math.ceil(text.image_tokens / IMAGE_EMBED_INTERLEAVE) + text.max_sequence_length - TEMPLATE_TOKENS_CROPPED


# -- measuring --------------------------------------------------------------------------------------


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    """Median wall seconds of ``fn`` over ``repeats`` runs after one warm-up run."""
    fn()
    times = []
    for _ in range(repeats):
        synchronize(device)
        started = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


@contextmanager
def peak_memory(device: torch.device) -> Iterator[dict[str, int | None]]:
    """Yields a dict whose ``peak_bytes`` is the device's peak allocation inside the block (CUDA only)."""
    result: dict[str, int | None] = {"peak_bytes": None}
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    yield result
    if device.type == "cuda":
        synchronize(device)
        result["peak_bytes"] = torch.cuda.max_memory_allocated(device)


class Bench:
    """One window of a preset on one device, with everything measured on the same inputs."""

    def __init__(self, preset: Preset, device: torch.device, dtype: torch.dtype, steps: int, repeats: int) -> None:
        self.preset, self.device, self.steps, self.repeats = preset, device, steps, repeats
        started = time.perf_counter()
        self.components: I2VComponents = build_i2v_components(preset, device, dtype)
        self.build_seconds = time.perf_counter() - started
        self.pipe = Magic141Pipeline(self.components, preset, device)
        generator = torch.Generator("cpu").manual_seed(0)
        self.prompt = self._random_prompt(generator)
        pixels = torch.randint(0, 256, (preset.height, preset.width, 3), generator=generator, dtype=torch.uint8)
        self.image = PIL.Image.fromarray(pixels.numpy())
        self.window = Window(
            index=0, latent_start=0, latent_stop=preset.window_latent_frames, start=0, keep=preset.window_frames
        )
        self.noise = self.pipe.noise(seed=0, window=self.window)
        self.sampler = SamplerConfig(steps=steps, guidance_scale=preset.guidance_scale, flow_shift=preset.flow_shift)
        _, _, frames, height, width = self.noise.shape
        self.flops = transformer_flops(preset.transformer, preset.text, frames, height, width, self.prompt.embeds.shape[1])

    def _random_prompt(self, generator: torch.Generator) -> PromptEmbeddings:
        text = self.preset.text
        length = prompt_tokens(text)
        embeds = torch.randn(1, length, text.llm_hidden_size, generator=generator)
        mask = torch.zeros(1, length)
        mask[:, : math.ceil(text.image_tokens / IMAGE_EMBED_INTERLEAVE) + 32] = 1  # image tokens and a short prompt
        pooled = torch.randn(1, text.clip_hidden_size, generator=generator)
        dtype = self.components.transformer.dtype
        return PromptEmbeddings(embeds, mask, pooled).to(self.device, dtype)

    def weight_bytes(self) -> int:
        return sum(weight_bytes(module) for module in self.components.modules().values())

    @torch.no_grad()
    def step_seconds(self) -> float:
        image_latents = self.pipe.encode_image(self.pipe.image_pixels(self.image))
        timestep = torch.tensor(1000.0, device=self.device)
        return median_seconds(
            lambda: denoise(
                self.components.transformer, self.noise, image_latents, timestep, self.prompt, self.sampler.guidance_scale
            ),
            self.device,
            self.repeats,
        )

    @torch.no_grad()
    def decode_seconds(self) -> float:
        return median_seconds(lambda: self.pipe.decode(self.noise), self.device, self.repeats)

    @torch.no_grad()
    def window_video(self, pipe: Magic141Pipeline | None = None) -> torch.Tensor:
        """Our window: first-frame latent, the sampler's steps, decode; (1, 3, F, H, W) in [-1, 1]."""
        pipe = pipe or self.pipe
        image_latents = pipe.encode_image(pipe.image_pixels(self.image))
        latents = sample_window(self.components.transformer, self.noise, image_latents, self.prompt, self.sampler)
        return pipe.decode(latents)

    @torch.no_grad()
    def diffusers_video(self) -> torch.Tensor:
        """The same window through diffusers' I2V pipeline; (1, F - 4, 3, H, W) in [0, 1]."""
        return self.components.diffusers_pipeline()(
            image=self.image,
            prompt_embeds=self.prompt.embeds,
            prompt_attention_mask=self.prompt.attention_mask,
            pooled_prompt_embeds=self.prompt.pooled,
            height=self.preset.height,
            width=self.preset.width,
            num_frames=self.preset.window_frames,
            num_inference_steps=self.steps,
            guidance_scale=self.sampler.guidance_scale,
            latents=self.noise.clone(),
            output_type="pt",
        ).frames

    def timed_window(self, render: Callable[[], torch.Tensor]) -> tuple[torch.Tensor, dict[str, Any]]:
        with peak_memory(self.device) as memory:
            synchronize(self.device)
            started = time.perf_counter()
            video = render()
            synchronize(self.device)
            seconds = time.perf_counter() - started
        return video, {"window_seconds": seconds, "window_peak_bytes": memory["peak_bytes"]}


def level_figures(bench: Bench) -> dict[str, Any]:
    step = bench.step_seconds()
    _, window = bench.timed_window(bench.window_video)
    video_seconds = bench.preset.window_frames / bench.preset.fps
    return {
        "weight_bytes": bench.weight_bytes(),
        "step_seconds": step,
        "tflops": bench.flops["total"] / step / 1e12,
        **window,
        "video_seconds_per_wall_second": video_seconds / window["window_seconds"],
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Every measurement; a section that fails records its error and the others still run."""
    preset = get_preset(args.preset)
    device = torch.device(args.device)
    dtype = torch.bfloat16
    bench = Bench(preset, device, dtype, args.steps, args.repeats)
    results: dict[str, Any] = {
        "preset": preset.name,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "steps": args.steps,
        "window": {"frames": preset.window_frames, "latent": list(bench.noise.shape), "text_tokens": bench.prompt.embeds.shape[1]},
        "build_seconds": bench.build_seconds,
        "flops_per_step": bench.flops,
    }

    def section(name: str, measure: Callable[[], Any]) -> None:
        logger.info("measuring %s", name)
        try:
            results[name] = measure()
        except Exception as error:  # a benchmark reports every section it can, and which ones broke
            logger.error("%s failed:\n%s", name, traceback.format_exc())
            results[name] = {"error": f"{type(error).__name__}: {error}"}

    section("vae_decode_seconds", bench.decode_seconds)  # also warms the decoder up for the windows below
    section("bf16", lambda: level_figures(bench))

    def side_by_side() -> dict[str, Any]:
        ours, ours_time = bench.timed_window(bench.window_video)
        theirs, theirs_time = bench.timed_window(bench.diffusers_video)
        ours = ((ours[:, :, 4:] + 1) / 2).clamp(0, 1).permute(0, 2, 1, 3, 4)  # diffusers drops the image's frames
        return {
            "ours_seconds": ours_time["window_seconds"],
            "diffusers_seconds": theirs_time["window_seconds"],
            "ratio": ours_time["window_seconds"] / theirs_time["window_seconds"],
            "diffusers_peak_bytes": theirs_time["window_peak_bytes"],
            "max_pixel_difference": float((ours.float().cpu() - theirs.float().cpu()).abs().max()),
        }

    if not args.no_diffusers:
        section("diffusers", side_by_side)

    def int8() -> dict[str, Any]:
        for name in QUANTIZED_COMPONENTS:
            quantize_weights(getattr(bench.components, name), "int8")
        if device.type == "cuda":
            torch.cuda.empty_cache()
        return level_figures(bench)

    section("int8", int8)

    def low_memory() -> dict[str, Any]:
        offloaded = Magic141Pipeline(bench.components, preset, device, low_memory=True)
        _, window = bench.timed_window(lambda: bench.window_video(offloaded))
        return window

    if args.low_memory:
        section("int8_low_memory", low_memory)
    return results


# -- report -----------------------------------------------------------------------------------------


def _gb(value: int) -> str:
    return f"{value / 1e9:.4g}"


def _figure(results: dict[str, Any], section: str, key: str, fmt: str | Callable[[Any], str]) -> str:
    entry = results.get(section)
    if not isinstance(entry, dict) or "error" in entry:
        return "failed" if isinstance(entry, dict) else "not run"
    value = entry.get(key)
    if value is None:
        return "n/a"
    return fmt(value) if callable(fmt) else fmt.format(value)


def markdown(results: dict[str, Any], command: str) -> str:
    flops = results["flops_per_step"]
    window = results["window"]
    lines = [
        "## Full-size model on one GPU: DiT step, VAE decode, memory, diffusers side by side",
        "",
        f"`{command}`",
        "",
        f"{results['preset']} with random weights on {results['device']} (torch {results['torch']}): one window of "
        f"{window['frames']} frames, latent {tuple(window['latent'])}, {window['text_tokens']} prompt tokens, "
        f"{results['steps']} steps. Counted FLOPs of one DiT forward: **{flops['total'] / 1e12:.4g} TFLOP** "
        f"(double-stream blocks {flops['double_blocks'] / flops['total']:.0%}, "
        f"single-stream {flops['single_blocks'] / flops['total']:.0%}).",
        "",
        "| weights | weight GB | DiT step s | TFLOP/s | window s | video s per wall s | window peak GB |",
        "|---|---|---|---|---|---|---|",
    ]
    for level in ("bf16", "int8"):
        lines.append(
            f"| {level} | {_figure(results, level, 'weight_bytes', _gb)} | "
            f"{_figure(results, level, 'step_seconds', '{:.3f}')} | {_figure(results, level, 'tflops', '{:.4g}')} | "
            f"{_figure(results, level, 'window_seconds', '{:.2f}')} | "
            f"{_figure(results, level, 'video_seconds_per_wall_second', '{:.2f}')} | "
            f"{_figure(results, level, 'window_peak_bytes', _gb)} |"
        )
    decode = results.get("vae_decode_seconds")
    lines += ["", f"VAE decode of the window: {decode if not isinstance(decode, float) else f'{decode:.2f} s'}."]
    if "diffusers" in results:
        lines.append(
            f"Same window, same weights and noise: magic141 {_figure(results, 'diffusers', 'ours_seconds', '{:.2f}')} s, "
            f"diffusers HunyuanVideoImageToVideoPipeline {_figure(results, 'diffusers', 'diffusers_seconds', '{:.2f}')} s, "
            f"ratio **{_figure(results, 'diffusers', 'ratio', '{:.3f}')}**; largest pixel difference "
            f"{_figure(results, 'diffusers', 'max_pixel_difference', '{:.2e}')}."
        )
    if "int8_low_memory" in results:
        lines.append(
            f"int8 with --low-memory (each model on the GPU only while it runs): window "
            f"{_figure(results, 'int8_low_memory', 'window_seconds', '{:.2f}')} s, peak "
            f"{_figure(results, 'int8_low_memory', 'window_peak_bytes', _gb)} GB."
        )
    failed = [name for name, entry in results.items() if isinstance(entry, dict) and "error" in entry]
    for name in failed:
        lines.append(f"- {name} failed: {results[name]['error']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="full-540p")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per figure, after one warm-up")
    parser.add_argument("--no-diffusers", action="store_true", help="skip the diffusers side-by-side window")
    parser.add_argument("--low-memory", action="store_true", help="also time the int8 window with model offload")
    parser.add_argument("--json", type=Path, help="write every figure here as JSON")
    parser.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md alone")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("no CUDA device is visible; run on a GPU machine, or pass --preset tiny --device cpu")
    results = run(args)
    report = markdown(results, "python bench/model_gpu.py " + " ".join(argv if argv is not None else sys.argv[1:]))
    print(report)
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=1, default=str))
    if not args.no_write:
        write_section(f"model_gpu_{results['preset']}", report)
    return 1 if any(isinstance(entry, dict) and "error" in entry for entry in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())

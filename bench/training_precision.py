"""Training step time in float32 and under bfloat16 autocast, side by side, for each kind of toy stage.

    python bench/training_precision.py [--steps 6] [--no-write]

Each stage's trainee is built as its training command builds it, from the same seed, once per precision; the
two take turns, one optimizer step each (forward, backward, clipping, AdamW), on the same batch, so drift of
the machine falls on both. Reports the median step of each and their ratio: which stages the toy recipe trains
under ``--precision auto`` (tasks.runtime.training.DEFAULTS). Writes the ``training_precision`` section of
BENCHMARKS.md on a machine that computes bfloat16 natively, ``training_precision_emulated`` on one that does not.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_section  # noqa: E402

logger = logging.getLogger("bench.training_precision")


def _stepper(trainee: torch.nn.Module, batch: object, bfloat16: bool) -> Callable[[], None]:
    parameters = [p for p in trainee.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=1e-4, weight_decay=0.0)

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bfloat16):
            output = trainee(batch)
        loss = output[0] if isinstance(output, tuple) else output
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()

    return step


def _cases() -> dict[str, tuple[Callable[[], torch.nn.Module], object]]:
    """Each case: the trainee's builder and one batch of the toy recipe's size."""
    from magic141.components import build_transformer
    from magic141.presets import get_preset
    from magic141.training.prior import PriorStage
    from magic141.training.transformer import FlowBatch, FlowTrainee
    from magic141.training.vae import CLIP_FRAMES, VaeStage
    from tasks.runtime.training import DEFAULTS, PRIOR_AUTOENCODER_STEPS

    preset = get_preset("toy")
    vae = VaeStage(preset.vae, preset.width, preset.height, preset.fps)
    prior = PriorStage(preset, PRIOR_AUTOENCODER_STEPS)
    ratio = preset.vae.spatial_compression_ratio
    latent = (preset.transformer.latent_channels, preset.window_latent_frames, preset.height // ratio,
              preset.width // ratio)
    size = DEFAULTS["i2v"].batch_size
    flow = FlowBatch(torch.randn(size, 2 * latent[0] + 1, *latent[1:]), torch.randn(size, *latent),
                     torch.rand(size) * 1000, torch.randn(size, 40, preset.text.llm_hidden_size), torch.ones(size, 40),
                     torch.randn(size, preset.text.clip_hidden_size))
    clips = {f"vae, {frames}-frame clips": (lambda: vae.build(0), vae.batch(0, CLIP_FRAMES.index(frames),
                                                                                 range(DEFAULTS["vae"].batch_size)))
             for frames in sorted(set(CLIP_FRAMES))}
    return {
        **clips,
        "prior, its UNet": (lambda: prior.build(0),
                            prior.batch(0, PRIOR_AUTOENCODER_STEPS, range(DEFAULTS["prior"].batch_size))),
        "i2v transformer": (lambda: FlowTrainee(build_transformer(preset.transformer, preset.text).train()), flow),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=6, help="timed steps per precision (after one warm-up step)")
    parser.add_argument("--no-write", action="store_true", help="print the section without writing BENCHMARKS.md")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from magic141.training.vae import CLIP_FRAMES

    rows, medians = [], {}
    for name, (build, batch) in _cases().items():
        torch.manual_seed(0)
        steps = {precision: _stepper(build().train(), batch, precision == "bfloat16")
                 for precision in ("float32", "bfloat16")}
        times: dict[str, list[float]] = {precision: [] for precision in steps}
        for index in range(args.steps + 1):
            for precision, step in steps.items():
                started = time.perf_counter()
                step()
                if index:  # the first step of each warms up
                    times[precision].append(time.perf_counter() - started)
        fp32, bf16 = medians[name] = tuple(statistics.median(times[p]) for p in ("float32", "bfloat16"))
        rows.append(f"| {name} | {fp32:.3f} | {bf16:.3f} | **{fp32 / bf16:.2f}x** |")
        logger.info("%s: float32 %.3f s, bfloat16 %.3f s, %.2fx", name, fp32, bf16, fp32 / bf16)
    cycle = [medians[f"vae, {frames}-frame clips"] for frames in CLIP_FRAMES]
    fp32, bf16 = (statistics.mean(step[index] for step in cycle) for index in (0, 1))
    rows.insert(len(set(CLIP_FRAMES)), f"| vae, the recipe's cycle {CLIP_FRAMES} | {fp32:.3f} | {bf16:.3f} | "
                                       f"**{fp32 / bf16:.2f}x** |")
    from magic141.training.loop import native_bfloat16

    # A CPU without native bfloat16 emulates it: its figures go to a section of their own beside the native one's.
    native = native_bfloat16()
    section = "training_precision" if native else "training_precision_emulated"
    body = "\n".join([
        "## Training precision: float32 against bfloat16 autocast, one optimizer step"
        + ("" if native else ", on a CPU without native bfloat16"),
        "",
        f"`python bench/training_precision.py --steps {args.steps}`: median step of each trainee at the toy",
        "recipe's batch, the two precisions taking turns on the same batch (weights and AdamW state float32 in both).",
        "This machine computes bfloat16 " + ("natively (AVX512-BF16 or AMX)." if native else
                                           "only by emulation (no AVX512-BF16 or AMX): `--precision auto` trains "
                                           "in float32 here."),
        "",
        "| stage | float32 s | bfloat16 s | float32 / bfloat16 |",
        "|---|---|---|---|",
        *rows,
    ])
    if args.no_write:
        logger.info("%s", body)
        return
    write_section(section, body)
    logger.info("wrote the %s section of BENCHMARKS.md", section)


if __name__ == "__main__":
    main()

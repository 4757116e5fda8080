"""How much the shipped transformers read their prompt: the flow-matching loss on training windows with their
own captions, with the batch's captions rotated by one, with the empty prompt, and (on the windows whose motion is
a direction) with the opposite direction (``moving left`` for ``moving right``, the rest of the caption kept).

    python bench/text_reading.py [--weights DIR] [--windows 256] [--no-write]

A transformer that reads its text predicts worse with another window's caption; one that ignores the text
scores the same with any. Another caption changes colour, shape and background too, which a first frame shows;
the opposite direction changes only what no frame shows, the motion. Each window keeps its first-frame latent and VLM image tokens: only the text tokens
and the pooled text vector change. The windows are encoded by the weights folder's own VAE and text encoders
(seeded 1,000,003, a cache no training run drew). Writes the ``text_reading`` section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_section  # noqa: E402

logger = logging.getLogger("bench.text_reading")
ROOT = Path(__file__).resolve().parent.parent
WEIGHTS = ROOT / "magic141" / "toy_weights"
CACHE_SEED = 1_000_003
BATCH = 32
OPPOSITE = {"moving left": "moving right", "moving right": "moving left", "moving up": "moving down",
            "moving down": "moving up"}
TRANSFORMERS = (("the default (DMD2 student)", "transformer"), ("CFG-distilled teacher", "teacher/transformer"),
                ("I2V teacher", "i2v/transformer"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", type=Path, default=WEIGHTS, help="toy-preset weights folder")
    parser.add_argument("--windows", type=int, default=256, help="cached windows, in batches of 32")
    parser.add_argument("--no-write", action="store_true", help="print the section without writing BENCHMARKS.md")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    from diffusers import HunyuanVideoTransformer3DModel
    from safetensors.torch import load_file

    from magic141.pipeline import Magic141Pipeline
    from magic141.toy_world import all_captions
    from magic141.training.transformer import FlowTrainee, TransformerStage, build_cache

    captions = all_captions()  # a caption's text states are cached under its position here, plus one
    caption_ids = {caption: number + 1 for number, caption in enumerate(captions)}

    pipeline = Magic141Pipeline.from_preset("toy", weights=args.weights)
    preset = pipeline.preset
    batches = max(1, args.windows // BATCH)
    with tempfile.TemporaryDirectory() as scratch:
        path = build_cache(pipeline.components, preset, batches * BATCH, CACHE_SEED, Path(scratch) / "windows.safetensors")
        cache = load_file(path)
        stage = TransformerStage(preset, "i2v", path, "bench")
        image_tokens = cache["image_tokens"].shape[1]
        rows = []
        for label, folder in TRANSFORMERS:
            if not (args.weights / folder / "config.json").is_file():
                continue
            trainee = FlowTrainee(HunyuanVideoTransformer3DModel.from_pretrained(str(args.weights / folder)).eval())
            losses = {"own": 0.0, "rotated": 0.0, "empty": 0.0, "direction": 0.0, "opposite": 0.0}
            directed = 0
            with torch.no_grad():
                for step in range(batches):
                    batch = stage.batch(0, step, range(step * BATCH, (step + 1) * BATCH))
                    rotated = torch.roll(torch.arange(BATCH), 1)
                    text, mask = batch.text.clone(), batch.text_mask.clone()
                    text[:, image_tokens:], mask[:, image_tokens:] = text[rotated, image_tokens:], mask[rotated, image_tokens:]
                    empty_text, empty_mask = batch.text.clone(), batch.text_mask.clone()
                    empty_text[:, image_tokens:], empty_mask[:, image_tokens:] = cache["text.0"], cache["text_mask.0"]
                    losses["own"] += float(trainee(batch)) / batches
                    losses["rotated"] += float(trainee(dataclasses.replace(
                        batch, text=text, text_mask=mask, pooled=batch.pooled[rotated]))) / batches
                    losses["empty"] += float(trainee(dataclasses.replace(
                        batch, text=empty_text, text_mask=empty_mask, pooled=cache["pooled.0"].expand_as(batch.pooled)))) / batches
                    chosen, opposite = _directed(cache, batch, step, image_tokens, captions, caption_ids)
                    if chosen:
                        own = type(batch)(*(getattr(batch, field.name)[chosen] for field in dataclasses.fields(batch)))
                        text, mask, pooled = own.text.clone(), own.text_mask.clone(), own.pooled.clone()
                        for row, caption in enumerate(opposite):
                            text[row, image_tokens:], mask[row, image_tokens:] = cache[f"text.{caption}"], cache[f"text_mask.{caption}"]
                            pooled[row] = cache[f"pooled.{caption}"]
                        losses["direction"] += float(trainee(own)) * len(chosen)
                        losses["opposite"] += float(trainee(dataclasses.replace(own, text=text, text_mask=mask,
                                                                                pooled=pooled))) * len(chosen)
                        directed += len(chosen)
            losses["direction"] /= max(1, directed)
            losses["opposite"] /= max(1, directed)
            rows.append((label, losses))
            logger.info("%s: %s", label, losses)
        text_std = float(cache["text.1"][cache["text_mask.1"].bool()].std())
        image_std = float(cache["image_tokens"].std())
    lines = [
        "## Text reading: the flow-matching loss with each window's own caption and with another's",
        "",
        f"`python bench/text_reading.py`: {batches * BATCH} training windows of `{args.weights.relative_to(ROOT) if args.weights.is_relative_to(ROOT) else args.weights}`, "
        "each with its own caption, with the caption of the next window in its batch, and with the empty prompt "
        "(the first-frame latent and the VLM image tokens unchanged). A ratio near 1 means the text is not read.",
        "",
        "| transformer | own caption | another's | empty prompt | another's / own | empty / own | opposite direction / own |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [f"| {label} | {loss['own']:.4f} | {loss['rotated']:.4f} | {loss['empty']:.4f} | "
              f"{loss['rotated'] / loss['own']:.3f} | {loss['empty'] / loss['own']:.3f} | "
              f"{loss['opposite'] / loss['direction']:.3f} |" for label, loss in rows]
    lines += ["", "Opposite direction: the windows of a moving-left, -right, -up or -down caption (not dropped to the empty "
              "prompt), their loss with that caption and with the same caption moving the other way."]
    lines += ["", f"Scale of what the transformer reads: text states std {text_std:.3f}, VLM image tokens std "
              f"{image_std:.3f}."]
    report = "\n".join(lines)
    print(report)
    if not args.no_write:
        write_section("text_reading", report)


def _directed(cache, batch, step: int, image_tokens: int, captions, caption_ids) -> tuple[list[int], list[int]]:
    """The rows of ``batch`` whose caption (kept, not dropped to the empty prompt) names a direction, and the
    cached text index of each one's caption moving the opposite way."""
    rows, opposite = [], []
    for row in range(batch.text.shape[0]):
        own = int(cache["captions"][step * BATCH + row])
        caption = captions[own - 1]
        if caption.motion in OPPOSITE and torch.equal(batch.text[row, image_tokens:], cache[f"text.{own}"]):
            rows.append(row)
            opposite.append(caption_ids[dataclasses.replace(caption, motion=OPPOSITE[caption.motion])])
    return rows, opposite


if __name__ == "__main__":
    main()

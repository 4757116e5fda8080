"""The toy world's trained components on held-out and training data, against their untrained builds.

- retrieval: recall@1 over a toy corpus of held-out first frames, for every 'a {colour} {shape}' query and
  its variants naming a background, read off the returned image by simple vision; the trained CLIP
  (shipped in magic141/toy_weights/clip) against the random 'tiny' CLIP, in the same run;
- VAE: PSNR of single frames and 17-frame windows through the shipped VAE against a seeded untrained one;
- the wall time of every shipped stage's training on this machine, from the weights' manifest.

``python bench/toy_world.py [--corpus N]`` writes the 'toy-world' section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import write_section  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
WEIGHTS = ROOT / "magic141" / "toy_weights"


def _recall(clip_model: str, corpus: Path, work: Path) -> dict[str, float]:
    from magic141.training.evaluate import retrieval_queries, retrieval_recall
    from retrieval_index import EmbedderSpec, build_index

    index_dir = work / f"index-{Path(clip_model).name}"
    build_index([corpus], index_dir, EmbedderSpec(clip_model))
    return retrieval_recall(index_dir, retrieval_queries())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", type=int, default=300, help="held-out first frames in the retrieval corpus")
    parser.add_argument("--videos", type=int, default=50, help="videos per split for the VAE")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    import torch
    from diffusers import AutoencoderKLHunyuanVideo

    from magic141.components import build_vae
    from magic141.presets import get_preset
    from magic141.toy_world import write_corpus
    from magic141.training.evaluate import retrieval_queries, vae_psnr

    preset = get_preset("toy")
    lines = ["## Toy world: the trained components against their untrained builds", ""]
    with tempfile.TemporaryDirectory() as work:
        corpus = Path(work) / "corpus"
        write_corpus(corpus, args.corpus, "held-out", seed=1)
        trained = _recall(str(WEIGHTS / "clip"), corpus, Path(work))
        random = _recall("tiny", corpus, Path(work))
    queries = len(retrieval_queries())
    lines += [
        f"Retrieval over {args.corpus} held-out first frames, {queries} queries ('a red circle', "
        "'a red circle on a black background', ...), recall@1 read off the returned image:",
        "",
        "| CLIP | colour | shape | colour and shape | all named words |",
        "|---|---|---|---|---|",
    ]
    for name, scores in (("trained (shipped)", trained), ("random `tiny`", random)):
        lines.append(f"| {name} | {scores['colour']:.3f} | {scores['shape']:.3f} | {scores['colour_and_shape']:.3f} "
                     f"| {scores['all_named']:.3f} |")
    ratio = trained["colour_and_shape"] / max(random["colour_and_shape"], 1e-9)
    lines += ["", f"Trained over random, colour-and-shape recall@1: {ratio:.1f}x.", ""]

    shipped = AutoencoderKLHunyuanVideo.from_pretrained(str(WEIGHTS / "vae")).eval()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        untrained = build_vae(preset.vae).eval()
    lines += ["VAE reconstruction, median PSNR (dB) of single frames (the I2V first frame) and "
              f"{preset.window_frames}-frame windows, {args.videos} videos per split:", "",
              "| VAE | split | image | window |", "|---|---|---|---|"]
    for name, vae in (("trained (shipped)", shipped), ("untrained", untrained)):
        for split in ("held-out", "train"):
            scores = vae_psnr(vae, split, args.videos, preset.window_frames, preset.fps, preset.width, preset.height,
                              seed=10_000)
            lines.append(f"| {name} | {split} | {scores['image_psnr']:.1f} | {scores['clip_psnr']:.1f} |")

    manifest = json.loads((WEIGHTS / "MANIFEST.json").read_text())
    lines += ["", "Training wall time of each shipped stage (its manifest's sessions):", "",
              "| stage | steps | workers | wall |", "|---|---|---|---|"]
    for stage, entry in manifest["stages"].items():
        wall = sum(session["wall_s"] for session in entry["sessions"])
        steps = max(session["to_step"] for session in entry["sessions"])
        workers = ", ".join(sorted({str(session["workers"]) for session in entry["sessions"]}))
        lines.append(f"| {stage} | {steps} | {workers} | {wall / 60:.1f} min |")
    lines += ["", f"Shipped weights: {manifest['total_bytes'] / 1e6:.1f} MB in {len(manifest['files'])} files."]
    write_section("toy-world", "\n".join(lines))
    logging.info("\n".join(lines))


if __name__ == "__main__":
    main()

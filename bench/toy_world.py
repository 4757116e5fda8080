"""The toy world's trained components on held-out and training data, against their untrained builds.

- retrieval: recall@1 over a toy corpus of held-out first frames, for every 'a {colour} {shape}' query and
  its variants naming a background, read off the returned image by simple vision; the trained CLIP
  (shipped in magic141/toy_weights/clip) against the random 'tiny' CLIP, in the same run;
- VAE: PSNR of single frames and 17-frame windows through the shipped VAE against a seeded untrained one,
  and how often simple vision still reads the colour, shape and background of the decoded frames;
- prompt adherence of the shipped default (``magic141 evaluate``, the 4-step DMD2 student) and of its teacher
  (``toy-teacher``) at its 50 steps and at the student's 4: colour, shape, background and motion read off the
  frames, and first-frame PSNR, on held-out and training captions, for one window, and (the default) for 10 s
  videos in both window modes; first frames from the world (a user image) and from the shipped text-to-image
  prior;
- the wall time of every shipped stage's training on this machine, from the weights' manifest.

``python bench/toy_world.py [--corpus N] [--videos N] [--adherence N] [--long N]`` writes the 'toy-world' section of BENCHMARKS.md.
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


def _adherence_lines(preset, count: int, long_count: int) -> list[str]:
    from magic141.pipeline import Magic141Pipeline
    from magic141.presets import get_preset
    from magic141.prior import ImagePrior
    from tasks.runtime.adherence import AdherenceSettings, evaluate_adherence

    teacher = get_preset("toy-teacher")
    pipelines = {"default": Magic141Pipeline.from_preset(preset), "teacher": Magic141Pipeline.from_preset(teacher)}
    prior = ImagePrior.from_preset(preset)
    # (model, first frame, seconds, window mode, steps, videos): the default at its own steps, its teacher at
    # its own (50) and at the default's 4, each from the same cases.
    settings = [("default", "world", None, "chained", None, count), ("teacher", "world", None, "chained", None, count),
                ("teacher", "world", None, "chained", preset.steps, count),
                ("default", "prior", None, "chained", None, count),
                ("default", "world", 10.0, "chained", None, long_count),
                ("default", "world", 10.0, "parallel", None, long_count)]
    lines = [f"Prompt adherence of the shipped default (`magic141 evaluate`; `{preset.name}`, the DMD2 student) and of "
             f"its teacher (`{teacher.name}`, the CFG-distilled model), read off the frames by simple vision, at "
             f"guidance {preset.guidance_scale:g}. First frame 'world': the scene's own first frame, as a user image; "
             "'prior': the shipped text-to-image prior's image for the caption. Motion: direction over the first "
             "second.", "",
             "| split | model | first frame | length | windows | steps | videos | colour | shape | background | motion "
             "| motion kept | first-frame PSNR |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for split in ("held-out", "train"):
        for model, first_frame, seconds, windows, steps, videos in settings:
            result = evaluate_adherence(
                pipelines[model],
                AdherenceSettings(split, videos, seconds, windows, steps, first_frame, seed=3,
                                  guidance=preset.guidance_scale),
                prior)
            summary = result["summary"]
            length = "1 window" if seconds is None else f"{seconds:g} s"
            lines.append(
                f"| {split} | {model} | {first_frame} | {length} ({summary['frames']} frames) | {windows} | "
                f"{result['settings']['steps']} | {videos} | " + " | ".join(
                    f"{100 * summary[key]:.0f}%" for key in ("colour", "shape", "background", "motion",
                                                            "motion_sustained")) +
                f" | {summary['first_frame_psnr']:.1f} dB |")
            logging.info(lines[-1])
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", type=int, default=300, help="held-out first frames in the retrieval corpus")
    parser.add_argument("--videos", type=int, default=50, help="videos per split for the VAE")
    parser.add_argument("--adherence", type=int, default=100, help="one-window videos per split and setting")
    parser.add_argument("--long", type=int, default=30, help="10 s videos per split and window mode")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    import torch
    from diffusers import AutoencoderKLHunyuanVideo

    from magic141.components import build_vae
    from magic141.presets import get_preset
    from magic141.toy_world import Caption, write_corpus
    from magic141.training.evaluate import retrieval_queries, vae_scores

    preset = get_preset("toy")
    lines = ["## Toy world: the trained components against their untrained builds", ""]
    with tempfile.TemporaryDirectory() as work:
        corpus = Path(work) / "corpus"
        shown = [Caption.parse(path.stem.split("-", 1)[1].replace("-", " "))
                 for path in write_corpus(corpus, args.corpus, "held-out", seed=1)]
        trained = _recall(str(WEIGHTS / "clip"), corpus, Path(work))
        random = _recall("tiny", corpus, Path(work))
    queries = retrieval_queries()
    reachable = sum(background is None or any((c.colour, c.shape, c.background) == (colour, shape, background)
                                              for c in shown) for _, colour, shape, background in queries)
    lines += [
        f"Retrieval over {args.corpus} held-out first frames, {len(queries)} queries ('a red circle', "
        "'a red circle on a black background', ...), recall@1 read off the returned image. 'All named words' can "
        f"reach at most {reachable / len(queries):.3f}: for the other queries the corpus has no frame of the named "
        "object on the named background.",
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
              f"{preset.window_frames}-frame windows, {args.videos} videos per split, the share of decoded "
              "window frames whose colour, shape and background simple vision still reads right, and the share of "
              "windows where the decoder draws a blob the video does not have (a frame with 6 or more pixels far "
              "from the background and more than 3 pixels from the object):", "",
              "| VAE | split | image PSNR | window PSNR | colour | shape | background | stray blobs |",
              "|---|---|---|---|---|---|---|---|"]
    for name, vae in (("trained (shipped)", shipped), ("untrained", untrained)):
        for split in ("held-out", "train"):
            scores = vae_scores(vae, split, args.videos, preset.window_frames, preset.fps, preset.width, preset.height,
                                seed=10_000)
            lines.append(f"| {name} | {split} | {scores['image_psnr']:.1f} | {scores['clip_psnr']:.1f} | "
                         + " | ".join(f"{100 * scores[key]:.0f}%" for key in ("colour", "shape", "background",
                                                                              "stray_blobs")) + " |")

    lines += ["", *_adherence_lines(preset, args.adherence, args.long)]

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

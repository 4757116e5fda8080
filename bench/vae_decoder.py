"""A refined VAE decoder against the one it refines, on the same latents.

    python bench/vae_decoder.py --before DIR [--after DIR] [--count 48] [--no-write]

``--before`` is the VAE whose decoder was refined (``final/`` of ``magic141 train vae``; the one
``train vae --refine`` started from), ``--after`` the refined one (default: the shipped ``toy`` VAE). Their
encoders are the same, so the default's sampled latents are the same with either: this samples held-out
cases once per decoder (the scene's first frame as a user image, and the text-to-image prior's), reads them
with the toy-world evaluation, and scores both VAEs' reconstructions (``vae_scores``), side by side.
Writes the ``vae_decoder`` section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_section  # noqa: E402

logger = logging.getLogger("bench.vae_decoder")
WEIGHTS = Path(__file__).resolve().parent.parent / "magic141" / "toy_weights"
SAMPLED = (("colour", "{:.0%}"), ("shape", "{:.0%}"), ("background", "{:.0%}"), ("motion", "{:.0%}"),
           ("motion_magnitude", "{:.3f}"), ("first_frame_psnr", "{:.1f} dB"))
RECONSTRUCTED = (("image_psnr", "{:.1f} dB"), ("clip_psnr", "{:.1f} dB"), ("colour", "{:.0%}"), ("shape", "{:.0%}"),
                 ("stray_blobs", "{:.0%}"))


def _shown(folder: Path) -> str:
    """A folder as the section names it: relative to the repository when inside it."""
    try:
        return str(folder.resolve().relative_to(WEIGHTS.parent.parent))
    except ValueError:
        return str(folder)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", type=Path, required=True, help="the VAE the refinement started from")
    parser.add_argument("--after", type=Path, default=WEIGHTS / "vae", help="the refined VAE (default: shipped)")
    parser.add_argument("--count", type=int, default=48, help="held-out cases per setting")
    parser.add_argument("--no-write", action="store_true", help="print the section without writing BENCHMARKS.md")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    from diffusers import AutoencoderKLHunyuanVideo

    from magic141.components import vae_encoder_fingerprint
    from magic141.pipeline import Magic141Pipeline
    from magic141.prior import ImagePrior
    from magic141.training.evaluate import vae_scores
    from tasks.runtime.adherence import AdherenceSettings, evaluate_adherence

    vaes = {name: AutoencoderKLHunyuanVideo.from_pretrained(str(folder)).eval()
            for name, folder in (("before", args.before), ("after", args.after))}
    if vae_encoder_fingerprint(vaes["before"]) != vae_encoder_fingerprint(vaes["after"]):
        raise SystemExit(f"{args.after} does not refine {args.before}: their encoders differ")
    pipeline = Magic141Pipeline.from_preset("toy")
    prior = ImagePrior.from_preset("toy")
    preset = pipeline.preset
    lines = [
        "## The VAE's decoder refinement: before and after, on the same latents",
        "",
        f"`python bench/vae_decoder.py --before {_shown(args.before)} --after {_shown(args.after)}`: the `toy` "
        f"default ({preset.steps} steps, guidance {preset.guidance_scale:g}) on {args.count} held-out cases, one "
        "window, its latents decoded by the VAE the refinement started from (before) and by the refined one (after; "
        "their encoder is the same, so are the latents):",
        "",
        "| first frame | decoder | " + " | ".join(key.replace("_", " ") for key, _ in SAMPLED) + " |",
        "|---|---|" + "---|" * len(SAMPLED),
    ]
    for first_frame in ("world", "prior"):
        for name, vae in vaes.items():
            pipeline.components.vae = vae
            settings = AdherenceSettings(split="held-out", count=args.count, first_frame=first_frame)
            summary = evaluate_adherence(pipeline, settings, prior)["summary"]
            lines.append(f"| {first_frame} | {name} | " + " | ".join(fmt.format(summary[key]) for key, fmt in SAMPLED)
                         + " |")
            logger.info(lines[-1])
    lines += ["", f"Reconstructions of {args.count} windows per split ({preset.window_frames} frames; stray blobs: "
              "windows with a decoded frame of 6 or more pixels far from the background and from the object):", "",
              "| split | decoder | " + " | ".join(key.replace("_", " ") for key, _ in RECONSTRUCTED) + " |",
              "|---|---|" + "---|" * len(RECONSTRUCTED)]
    for split in ("held-out", "train"):
        for name, vae in vaes.items():
            scores = vae_scores(vae, split, args.count, preset.window_frames, preset.fps, preset.width, preset.height,
                                seed=10_000)
            lines.append(f"| {split} | {name} | " + " | ".join(fmt.format(scores[key]) for key, fmt in RECONSTRUCTED)
                         + " |")
            logger.info(lines[-1])
    report = "\n".join(lines)
    print(report)
    if not args.no_write:
        write_section("vae_decoder", report)


if __name__ == "__main__":
    main()

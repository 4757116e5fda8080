"""The first-frame anchor: the shipped default with and without its first latent frame set to the image's.

    python bench/first_frame_anchor.py [--preset toy] [--count 48] [--long-count 12] [--no-write]

Under the ``diffusers`` convention sampling ends with the first latent frame replaced by the first frame's
own latent (``magic141.sampler.anchored``). This runs the toy-world evaluation (``magic141 evaluate``) of
the same weights, seeds and captions both ways, side by side: held-out and training captions, one window,
and 10 s videos in chained and parallel windows. Writes the ``first_frame_anchor`` section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_section  # noqa: E402

logger = logging.getLogger("bench.first_frame_anchor")

COLUMNS = (("colour", "colour", "{:.0%}"), ("shape", "shape", "{:.0%}"), ("background", "background", "{:.0%}"),
           ("motion", "motion", "{:.0%}"), ("first-frame PSNR", "first_frame_psnr", "{:.1f} dB"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="toy")
    parser.add_argument("--count", type=int, default=48, help="videos per one-window case")
    parser.add_argument("--long-count", type=int, default=12, help="videos per 10 s case")
    parser.add_argument("--no-write", action="store_true", help="print the section without writing BENCHMARKS.md")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    from magic141.pipeline import Magic141Pipeline
    from tasks.runtime.adherence import AdherenceSettings, evaluate_adherence

    pipeline = Magic141Pipeline.from_preset(args.preset)
    cases = [(split, None, "chained", args.count) for split in ("held-out", "train")]
    cases += [("held-out", 10.0, windows, args.long_count) for windows in ("chained", "parallel")]
    lines = [
        f"## The first-frame anchor: the `{args.preset}` default with and without it",
        "",
        f"`python bench/first_frame_anchor.py`: the toy-world evaluation of the same weights ({args.preset}, "
        f"{pipeline.preset.steps} steps, guidance {pipeline.preset.guidance_scale:g}), seeds and captions, "
        "with the first latent frame as sampled and set to the first frame's own latent (the scene's first frame "
        "as a user image):",
        "",
        "| split | length | windows | videos | anchor | " + " | ".join(name for name, _, _ in COLUMNS) + " | s |",
        "|---|---|---|---|---|" + "---|" * len(COLUMNS) + "---|",
    ]
    ratios = []
    for split, seconds, windows, count in cases:
        summaries = {}
        for anchor in (False, True):
            started = time.perf_counter()
            settings = AdherenceSettings(split=split, count=count, seconds=seconds, windows=windows,
                                         first_frame_anchor=anchor)
            summary = evaluate_adherence(pipeline, settings)["summary"]
            summaries[anchor] = summary
            length = "1 window" if seconds is None else f"{seconds:g} s"
            cells = " | ".join(fmt.format(summary[key]) for _, key, fmt in COLUMNS)
            lines.append(f"| {split} | {length} | {windows} | {count} | {'on' if anchor else 'off'} | {cells} "
                         f"| {time.perf_counter() - started:.0f} |")
            logger.info(lines[-1])
        ratios.append((split, seconds, windows, summaries[True]["colour"] - summaries[False]["colour"],
                       summaries[True]["first_frame_psnr"] - summaries[False]["first_frame_psnr"]))
    lines += ["", "Anchor on minus off:", ""]
    lines += [f"- {split}, {'1 window' if seconds is None else f'{seconds:g} s'} {windows}: colour "
              f"{colour * 100:+.0f} points, first-frame PSNR {psnr:+.1f} dB" for split, seconds, windows, colour, psnr in ratios]
    report = "\n".join(lines)
    print(report)
    if not args.no_write:
        write_section("first_frame_anchor", report)


if __name__ == "__main__":
    main()

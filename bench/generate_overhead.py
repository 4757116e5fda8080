"""Wall time of a 5 s tiny-preset ``generate`` split by stage, and the share spent outside the models.

Runs the real flow (ephemeral Prefect API, SQLite catalog, ffmpeg) twice in one process: a cold run
(Prefect server start, model build) and a warm run (a worker that already holds the models). The
model share is the time inside the prior and video pipelines (text encoders, DiT steps, VAE); the
rest is orchestration: Prefect, task hand-offs, stitching, ffmpeg, catalog.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import write_section  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md alone")
    args = parser.parse_args()

    started = time.perf_counter()
    from flows.generate import generate
    from tasks.catalog import open_catalog
    from tasks.request import GenerateRequest

    import_seconds = time.perf_counter() - started
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        catalog_url = f"sqlite:///{tmp}/catalog.db"
        for run in ("cold", "warm"):
            run_started = time.perf_counter()
            result = generate(GenerateRequest.from_options("a paper boat on a rainy street", f"{tmp}/{run}.mp4",
                                                           catalog_url, seconds=args.seconds, seed=1))
            wall = time.perf_counter() - run_started
            with open_catalog(catalog_url) as catalog:
                timings = catalog.get_video(result.video_id)["stage_timings"]
            model = timings["prior_model"] + timings["render_model"]
            rows.append((run, wall, timings, model))

    lines = [
        f"## generate: {args.seconds:g} s tiny-preset video, stage split and orchestration overhead",
        "",
        f"`python bench/generate_overhead.py` (imports: {import_seconds:.2f} s, before either run).",
        "",
        "| run | wall s | prior s | render + encode s | in models s | outside models | outside models, share |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for run, wall, t, model in rows:
        lines.append(
            f"| {run} | {wall:.2f} | {t['prior']:.2f} | {t['render']:.2f} | {model:.2f} "
            f"| {wall - model:.2f} s | {(wall - model) / wall:.0%} |"
        )
    cold, warm = rows[0][1], rows[1][1]
    lines += ["", f"Cold/warm wall ratio: {cold / warm:.1f}x (Prefect temporary server start and model build)."]
    report = "\n".join(lines)
    print(report)
    if not args.no_write:
        write_section("generate_overhead", report)


if __name__ == "__main__":
    main()

"""Long-video benchmarks on the tiny preset: parallel-mode speedup over the Ray pool, memory versus length.

1. Speedup: the same tiny 20 s parallel (co-denoising) render on a pool of 1 and of 2 Ray workers,
   one torch thread each, on a local Ray instance with fake GPUs. Each pool is warmed up by one
   render first (model loaded, code paths compiled); the timed render includes planning, every
   denoise step, every decode, stitching and the ffmpeg encode. Target: wall(1) / wall(2) >= 1.7.
2. Memory: peak RSS of ``magic141 generate`` (a whole CLI process: Prefect, models, render, encode)
   for a 10 s and a 60 s tiny video, in each window mode. Target: RSS(60 s) / RSS(10 s) <= 1.2.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import write_section  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PROMPT = "a lighthouse on a cliff in a storm"


def timed_render(pool, seconds: float, out: Path, seed: int) -> float:
    """Wall seconds of one parallel render on ``pool``, stitched and encoded to ``out``."""
    import numpy as np
    import PIL.Image

    from magic141.executor import RenderJob, render_windows
    from magic141.pipeline import fit_image, plan_video
    from magic141.presets import get_preset
    from magic141.sampler import SamplerConfig
    from tasks.runtime.ffmpeg import VideoWriter
    from tasks.runtime.render_pool import PoolExecutor
    from tasks.runtime.stitch import Stitcher

    preset = get_preset("tiny")
    num_frames = round(seconds * preset.fps)
    image = fit_image(PIL.Image.new("RGB", (preset.width, preset.height), (180, 90, 30)), preset.width, preset.height)
    job = RenderJob(f"bench-{seed}", PROMPT, None, np.asarray(image), seed, SamplerConfig(flow_shift=preset.flow_shift),
                    (preset.width, preset.height))
    started = time.perf_counter()
    plan = plan_video(preset, num_frames, "parallel")
    with VideoWriter(out, preset.width, preset.height, preset.fps, expected_frames=num_frames, preset="veryfast") as writer:
        stitcher = Stitcher(writer, plan)
        for rendered in render_windows(PoolExecutor(pool), job, plan, "parallel"):
            stitcher.add(rendered.window.index, rendered.frames)
    return time.perf_counter() - started


def speedup(seconds: float, repeats: int) -> tuple[dict[int, list[float]], int]:
    import ray

    from tasks.request import ModelSpec
    from tasks.runtime.render_pool import PoolConfig, RenderPool

    ray.init(num_cpus=os.cpu_count(), num_gpus=2, include_dashboard=False, log_to_driver=False)
    walls: dict[int, list[float]] = {}
    windows = 0
    with tempfile.TemporaryDirectory() as tmp:
        for workers in (1, 2):
            pool = RenderPool(PoolConfig(ModelSpec("tiny"), workers, torch_threads=1))
            timed_render(pool, seconds, Path(tmp) / f"warm-{workers}.mp4", seed=0)
            walls[workers] = [
                timed_render(pool, seconds, Path(tmp) / f"{workers}-{n}.mp4", seed=1 + n) for n in range(repeats)
            ]
            pool.close()
    from magic141.pipeline import plan_video
    from magic141.presets import get_preset

    preset = get_preset("tiny")
    windows = len(plan_video(preset, round(seconds * preset.fps), "parallel"))
    ray.shutdown()
    return walls, windows


def peak_rss_mib(seconds: float, windows: str, out: Path) -> tuple[float, float]:
    """Peak RSS (MiB) and wall seconds of one ``magic141 generate`` process."""
    command = [
        str(Path(sys.executable).with_name("magic141")), "generate", "--prompt", PROMPT, "--seconds", str(seconds),
        "--seed", "3", "--windows", windows, "--out", str(out), "--catalog", f"sqlite:///{out.parent / 'catalog.db'}",
    ]
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(command)} failed with status {os.waitstatus_to_exitcode(status)}")
    return usage.ru_maxrss / 1024, wall


def speedup_report(seconds: float, repeats: int) -> str:
    walls, windows = speedup(seconds, repeats)
    medians = {workers: statistics.median(runs) for workers, runs in walls.items()}
    lines = [
        "## Long video: parallel-mode speedup on the Ray pool",
        "",
        "`python bench/long_video.py --part speedup`",
        "",
        f"Tiny {seconds:g} s parallel render ({windows} co-denoised windows, 4 steps), one torch thread per Ray "
        f"worker, warm pools, median of {repeats}; each run covers every denoise step, every decode, stitching "
        "and the ffmpeg encode.",
        "",
        "| workers | wall s (each run) | median s |",
        "|---|---|---|",
    ]
    for workers in (1, 2):
        lines.append(f"| {workers} | {', '.join(f'{w:.2f}' for w in walls[workers])} | {medians[workers]:.2f} |")
    lines += ["", f"wall(1) / wall(2) = **{medians[1] / medians[2]:.2f}** (target >= 1.7)."]
    return "\n".join(lines)


def memory_report() -> str:
    lines = [
        "## Long video: peak memory versus length",
        "",
        "`python bench/long_video.py --part memory`",
        "",
        "Peak RSS of one `magic141 generate` process (tiny preset, rendering in that process: Prefect, "
        "models, sampling, decoding, stitching, ffmpeg pipe), 10 s versus 60 s.",
        "",
        "| windows | 10 s: peak RSS MiB | 60 s: peak RSS MiB | 60 s / 10 s | wall 10 s / 60 s |",
        "|---|---|---|---|---|",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        for mode in ("chained", "parallel"):
            short, short_wall = peak_rss_mib(10, mode, Path(tmp) / f"{mode}-10.mp4")
            long, long_wall = peak_rss_mib(60, mode, Path(tmp) / f"{mode}-60.mp4")
            lines.append(
                f"| {mode} | {short:.0f} | {long:.0f} | **{long / short:.3f}** (target <= 1.2) "
                f"| {short_wall:.1f} s / {long_wall:.1f} s |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("speedup", "memory", "all"), default="all")
    parser.add_argument("--speedup-seconds", type=float, default=20.0)
    parser.add_argument("--repeats", type=int, default=3, help="timed renders per pool size (median reported)")
    parser.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md alone")
    args = parser.parse_args()
    if args.part in ("speedup", "all"):
        report = speedup_report(args.speedup_seconds, args.repeats)
        print(report)
        if not args.no_write:
            write_section("long_video_speedup", report)
    if args.part in ("memory", "all"):
        report = memory_report()
        print(report)
        if not args.no_write:
            write_section("long_video_memory", report)


if __name__ == "__main__":
    main()

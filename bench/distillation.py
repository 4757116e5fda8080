"""The paper's distillation findings at toy scale, on held-out captions (BENCHMARKS.md section 'distillation').

- CFG distillation: the CFG student at guidance scale 1 + w (one forward pass per step) against its teacher's
  true classifier-free guidance at the same w (two passes per step), for three w: the toy world's adherence
  metrics, and how close the student's video is to the teacher's from the same noise and image (PSNR);
- Table 1: the teacher (the CFG-distilled model DMD2 starts from) with Euler at 56, 28, 16, 8 and 4 steps
  against the DMD2 student(s): adherence, flicker, motion magnitude, forward passes per video;
- memory: peak memory of DMD2 training steps with the LoRA fake model against a full-copy fake model of the
  same transformer, each in a fresh process;
- the training curves of the runs given, as plots beside BENCHMARKS.md.

``python bench/distillation.py --i2v DIR --cfg DIR --dmd2 DIR [--dmd2 DIR ...] [--videos N]``: weights folders
(the final/ folders of 'train i2v', 'train cfg', 'train dmd2'; defaults: the shipped ones).
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import BENCHMARKS, write_section  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
WEIGHTS = ROOT / "magic141" / "toy_weights"
PLOTS = BENCHMARKS.parent / "bench" / "plots"
SEED = 3
W_VALUES = (1.0, 2.0, 4.0)
TEACHER_STEPS = (56, 28, 16, 8, 4)
COLUMNS = ("colour", "shape", "background", "motion")


def _pipeline(weights: Path):
    from magic141.pipeline import Magic141Pipeline

    return Magic141Pipeline.from_preset("toy", weights=weights)


def _cases(count: int):
    import PIL.Image

    from magic141.presets import get_preset
    from magic141.toy_world import render_frame, sample_scene, split_captions

    preset = get_preset("toy")
    captions = split_captions("held-out")
    for index in range(count):
        caption = captions[index % len(captions)]
        seed = SEED * 100_003 + index
        scene = sample_scene(caption, preset.width, preset.height, seed)
        yield caption, seed, PIL.Image.fromarray(render_frame(scene, 0.0, preset.width, preset.height))


def _videos(pipeline, count: int, steps: int, guidance: float, true_cfg: float = 1.0) -> list:
    """Every held-out case's one-window video, with its caption, first frame and readings."""
    import numpy as np

    from magic141.metrics import video_metrics
    from magic141.sampler import SamplerConfig
    from magic141.toy_eval import adherence
    from tasks.adherence import sample_video

    preset = pipeline.preset
    sampler = SamplerConfig(steps=steps, guidance_scale=guidance, true_cfg_scale=true_cfg, flow_shift=preset.flow_shift)
    results = []
    for caption, seed, image in _cases(count):
        video, _ = sample_video(pipeline, image, caption.text, preset.window_frames, seed, sampler, "chained",
                                "" if true_cfg > 1 else None)
        metrics = video_metrics(video, np.asarray(image), [])
        results.append({"video": video, **adherence(video, preset.fps, caption).to_dict(), "flicker": metrics.flicker,
                        "motion_magnitude": metrics.motion, "first_frame_psnr": metrics.first_frame_psnr})
    return results


def _mean(results: list, key: str) -> float:
    return sum(float(r[key]) for r in results) / len(results)


def _psnr(a, b) -> float:
    import numpy as np

    error = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0**2 / max(error, 1e-10)))


def _row(labels: list[str], results: list, passes: int, *extra: str) -> str:
    scores = [f"{100 * _mean(results, key):.0f}%" for key in COLUMNS]
    cells = [*labels, *scores, f"{_mean(results, 'flicker'):.4f}", f"{_mean(results, 'motion_magnitude'):.2f}",
             f"{_mean(results, 'first_frame_psnr'):.1f} dB", str(passes), *extra]
    return "| " + " | ".join(cells) + " |"


def cfg_lines(i2v: Path, cfg: Path, count: int, steps: int) -> list[str]:
    teacher, student = _pipeline(i2v), _pipeline(cfg)
    lines = [f"### CFG distillation: one pass at w against the teacher's two ({count} held-out cases, {steps} Euler "
             "steps)", "",
             "The teacher samples with true classifier-free guidance against the empty prompt (guidance scale "
             "1 + w, two forward passes per step); the CFG student takes 1 + w as its guidance input (one pass). "
             "'agreement': PSNR between the student's and the teacher's video from the same noise and first frame.",
             "", "| model | w | " + " | ".join(COLUMNS) + " | flicker | motion magnitude | first-frame PSNR | "
             "passes per step | agreement |", "|---|---|" + "---|" * (len(COLUMNS) + 5)]
    for w in W_VALUES:
        guided = _videos(teacher, count, steps, 1.0, true_cfg=1 + w)
        distilled = _videos(student, count, steps, 1 + w)
        agreement = sum(_psnr(a["video"], b["video"]) for a, b in zip(guided, distilled)) / count
        lines.append(_row(["teacher, true CFG", f"{w:g}"], guided, 2, "–"))
        lines.append(_row(["CFG student", f"{w:g}"], distilled, 1, f"{agreement:.1f} dB"))
        logging.info("\n".join(lines[-2:]))
    return lines


def table1_lines(cfg: Path, students: list[Path], count: int, guidance: float) -> list[str]:
    from magic141.weights import read_distillation

    teacher = _pipeline(cfg)
    lines = [f"### Table 1 at toy scale: Euler steps of the teacher against DMD2 ({count} held-out cases, guidance "
             f"{guidance:g})", "",
             "The teacher is the CFG-distilled model DMD2 starts from (one pass per step). Motion magnitude is the "
             "mean optical flow per frame, whose collapse at few Euler steps is the paper's 'dynamic degree' drop.",
             "", "| sampler | " + " | ".join(COLUMNS) + " | flicker | motion magnitude | first-frame PSNR | "
             "forward passes |", "|---|" + "---|" * (len(COLUMNS) + 4)]
    for steps in TEACHER_STEPS:
        lines.append(_row([f"teacher, Euler {steps}"], _videos(teacher, count, steps, guidance), steps))
        logging.info(lines[-1])
    for folder in students:
        steps = read_distillation(folder / "transformer")["steps"]
        lines.append(_row([f"DMD2 student, {steps} steps"], _videos(_pipeline(folder), count, steps, guidance), steps))
        logging.info(lines[-1])
    return lines


MEMORY_PROBE = """
import json, resource, sys, torch
from pathlib import Path
from magic141.presets import get_preset, TransformerConfig
from magic141.components import build_i2v_components
from magic141.weights import save_i2v_components
from magic141.training.distill import DistillStage, Dmd2Settings, Teacher
from magic141.training.transformer import build_cache, cache_path, encoders
torch.set_num_threads(2)
fake, work = sys.argv[1], Path(sys.argv[2])
preset = get_preset("toy").replace(name="memory", transformer=TransformerConfig(
    num_attention_heads=8, attention_head_dim=64, num_layers=6, num_single_layers=6, num_refiner_layers=1,
    rope_axes_dim=(16, 24, 24)))
folder = work / "teacher"
if not folder.is_dir():
    components = build_i2v_components(preset)
    components.prompt_format = "magic141"
    save_i2v_components(components, folder)
components = encoders(preset, folder / "vae")
path, fingerprint = cache_path(work, components, 4, 0)
if not path.is_file():
    build_cache(components, preset, 4, 0, path)
stage = DistillStage("dmd2", preset, Teacher.check(folder, preset), path, fingerprint,
                     dmd2=Dmd2Settings(fake=fake, fake_updates=1))
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
trainee = stage.build(0)
groups = trainee.parameter_groups()
optimizer = torch.optim.AdamW(groups, lr=1e-5)
for step in range(2):
    loss, _ = trainee(stage.batch(0, step, range(2)))
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
weights = sum(p.numel() * p.element_size() for p in trainee.parameters())
trainable = sum(p.numel() * p.element_size() for g in groups for p in g["params"])
print(json.dumps({"peak_mb": (peak - before) / 1024, "weights_mb": weights / 2**20,
                  "trainable_mb": trainable / 2**20, "state_mb": (weights + 3 * trainable) / 2**20}))
"""


def memory_lines(work: Path) -> list[str]:
    results = {}
    for fake in ("lora", "full"):
        completed = subprocess.run([sys.executable, "-c", MEMORY_PROBE, fake, str(work)], capture_output=True,
                                   text=True, check=True, cwd=ROOT)
        results[fake] = json.loads(completed.stdout.strip().splitlines()[-1])
    lora, full = results["lora"], results["full"]
    return ["### Memory of DMD2 training: the LoRA fake model against a full copy", "",
            "Two DMD2 steps (generator and fake updates) of a 12-block transformer (hidden 512), each in a fresh "
            "process on the CPU: the rise of peak resident memory over the process before the models were built, "
            "and the model state (weights, plus gradients and AdamW's two moments of what trains).", "",
            "| fake model | peak memory rise | weights held | trainable | model state |", "|---|---|---|---|---|",
            *(f"| {name} | {r['peak_mb']:.0f} MB | {r['weights_mb']:.0f} MB | {r['trainable_mb']:.0f} MB | "
              f"{r['state_mb']:.0f} MB |" for name, r in (("LoRA (the paper's)", lora), ("full copy", full))),
            "", f"LoRA over full copy: peak memory rise {lora['peak_mb'] / full['peak_mb']:.2f}x, model state "
            f"{lora['state_mb'] / full['state_mb']:.2f}x."]


def curve_lines(runs: list[Path]) -> list[str]:
    PLOTS.mkdir(parents=True, exist_ok=True)
    lines = ["### Training curves", ""]
    for run in runs:
        record = json.loads((run / "run.json").read_text())
        target = PLOTS / f"distillation-{record['stage']}.png"
        shutil.copyfile(run / "loss.png", target)
        sessions = [json.loads(line) for line in (run / "sessions.jsonl").read_text().splitlines() if line.strip()]
        wall = sum(session["wall_s"] for session in sessions)
        lines.append(f"- `{record['stage']}`: {max(s['to_step'] for s in sessions)} steps in {wall / 60:.0f} min, "
                     f"settings {json.dumps(record['description']['settings'])}: "
                     f"![{record['stage']}]({target.relative_to(BENCHMARKS.parent)})")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--i2v", type=Path, required=True, help="the I2V teacher's weights folder (before CFG distillation)")
    parser.add_argument("--cfg", type=Path, default=WEIGHTS / "teacher.json", help="the CFG-distilled teacher")
    parser.add_argument("--dmd2", type=Path, action="append", default=[], help="a DMD2 student (repeatable)")
    parser.add_argument("--runs", type=Path, nargs="*", default=[], help="run folders whose loss curves to show")
    parser.add_argument("--videos", type=int, default=48, help="held-out cases per setting")
    parser.add_argument("--cfg-steps", type=int, default=28, help="Euler steps of the CFG comparison")
    parser.add_argument("--guidance", type=float, default=3.0, help="guidance scale of Table 1")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    import tempfile

    lines = ["## Distillation at toy scale (CFG distillation, DMD2)", ""]
    lines += cfg_lines(args.i2v, args.cfg, args.videos, args.cfg_steps) + [""]
    lines += table1_lines(args.cfg, args.dmd2 or [WEIGHTS], args.videos, args.guidance) + [""]
    with tempfile.TemporaryDirectory() as work:
        lines += memory_lines(Path(work)) + [""]
    if args.runs:
        lines += curve_lines(args.runs)
    write_section("distillation", "\n".join(lines))
    logging.info("\n".join(lines))


if __name__ == "__main__":
    main()

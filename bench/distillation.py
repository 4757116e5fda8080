"""The paper's distillation findings at toy scale, on held-out captions (BENCHMARKS.md section 'distillation').

- CFG distillation: the CFG student at guidance scale 1 + w (one forward pass per step) against its teacher's
  true classifier-free guidance at the same w (two passes per step), for three w: the toy world's adherence
  metrics, and how close the student's video is to the teacher's from the same noise and image (PSNR);
- Table 1: the teacher (the CFG-distilled model DMD2 starts from) with Euler at 56, 28, 16, 8 and 4 steps
  against the DMD2 student(s): adherence, flicker, motion magnitude, forward passes per video;
- memory: peak memory of DMD2 training steps with the LoRA fake model against a full-copy fake model of the
  same transformer, each in a fresh process;
- the training curves of the runs given (default: the shipped CFG and DMD2 runs), as plots beside BENCHMARKS.md.

``python bench/distillation.py --i2v DIR --cfg DIR --dmd2 DIR [--dmd2 DIR ...] [--videos N]``: weights folders
(the final/ folders of 'train i2v', 'train cfg', 'train dmd2'; defaults: the shipped ones). ``--t2v DIR`` adds
Figure 5 (T2V against I2V DMD2 at equal budgets) as its own section; ``--figure5-only`` runs just that.
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
SAMPLES_FIGURE5 = 4000  # training windows of the Figure 5 runs' latent cache


def _pipeline(weights: Path):
    from magic141.pipeline import Magic141Pipeline

    return Magic141Pipeline.from_preset("toy", weights=weights)


def _cases(count: int):
    import PIL.Image

    from magic141.presets import get_preset
    from magic141.toy_world import evaluation_captions, render_frame, sample_scene

    preset = get_preset("toy")
    for index, caption in enumerate(evaluation_captions("held-out", count)):
        seed = SEED * 100_003 + index
        scene = sample_scene(caption, preset.width, preset.height, seed)
        yield caption, seed, PIL.Image.fromarray(render_frame(scene, 0.0, preset.width, preset.height))


def _videos(pipeline, count: int, steps: int, guidance: float, true_cfg: float = 1.0) -> list:
    """Every held-out case's one-window video, with its caption, first frame and readings."""
    import numpy as np

    from magic141.metrics import video_metrics
    from magic141.sampler import SamplerConfig
    from magic141.toy_eval import adherence
    from tasks.runtime.adherence import sample_video

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
    cells = [*labels, *scores, f"{_mean(results, 'flicker'):.4f}", f"{_mean(results, 'motion_magnitude'):.3f}",
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
    lines = [f"## Distillation at toy scale, Table 1: Euler steps of the teacher against DMD2 ({count} held-out "
             f"cases, guidance {guidance:g})", "",
             "The teacher is the CFG-distilled model DMD2 starts from (one pass per step). Motion magnitude is the "
             "mean optical flow per frame, whose collapse at few Euler steps is the paper's 'dynamic degree' drop.",
             "", "| sampler | " + " | ".join(COLUMNS) + " | flicker | motion magnitude | first-frame PSNR | "
             "forward passes |", "|---|" + "---|" * (len(COLUMNS) + 4)]
    for steps in TEACHER_STEPS:
        lines.append(_row([f"teacher, Euler {steps}"], _videos(teacher, count, steps, guidance), steps))
        logging.info(lines[-1])
    sources = []
    for folder in students:
        record = read_distillation(folder / "transformer")
        steps, regression = record["steps"], record["settings"].get("regression_weight", 0.0)
        label = f"DMD2 student, {steps} steps" + (f", regression {regression:g}" if regression else "")
        lines.append(_row([label], _videos(_pipeline(folder), count, steps, guidance), steps))
        logging.info(lines[-1])
        shown = folder.resolve().relative_to(ROOT) if folder.resolve().is_relative_to(ROOT) else folder
        sources.append(f"- {label}: `{shown}`")
    return [*lines, "", "The students' weights folders:", "", *sources]


MEMORY_PROBE = """
import json, resource, sys, torch
from pathlib import Path
from magic141.presets import get_preset, TransformerConfig
from magic141.components import build_i2v_components
from magic141.weights import save_i2v_components
from magic141.training.distill import DistillStage, Dmd2Settings
from magic141.training.distill_data import Teacher
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
path, fingerprint = cache_path(work, components, preset, 4, 0)
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


def _sample_students(transformer, components, preset, image_frames: str | None, count: int, steps: int) -> list:
    """Held-out one-window videos of a generator sampled by the few-step Euler loop (``velocity`` of the
    distillation, no pipeline: a T2V transformer has no image channels), with their readings; an I2V generator
    (``image_frames`` its image channels' layout, None for T2V) sees the first frame."""
    import numpy as np
    import torch

    from magic141.conditioning import image_condition
    from magic141.prompt_encoding import vlm_image_tokens
    from magic141.toy_eval import adherence
    from magic141.training.distill import Dmd2Settings, velocity
    from magic141.training.distill_data import Condition
    from magic141.training.transformer import encode_text

    vae, scale = components.vae, components.vae.config.scaling_factor
    schedule = [*Dmd2Settings(steps=steps).schedule(preset.flow_shift).tolist(), 0.0]
    ratio = preset.vae.spatial_compression_ratio
    shape = (1, preset.transformer.latent_channels, preset.window_latent_frames, preset.height // ratio,
             preset.width // ratio)
    results = []
    with torch.no_grad():
        for caption, seed, image in _cases(count):
            text, mask, pooled = encode_text(components, [caption.text], preset.text.max_sequence_length)
            image_channels = image_mask = None
            if image_frames is not None:
                pixels = torch.from_numpy(np.array(image)).permute(2, 0, 1)[None, :, None].float() / 127.5 - 1
                image_channels, image_mask = image_condition(vae.encode(pixels).latent_dist.mean * scale, shape[2],
                                                             image_frames)
                tokens = vlm_image_tokens(components, image, torch.device("cpu"))
                text, mask = torch.cat([tokens, text], 1), torch.cat([torch.ones(1, tokens.shape[1]), mask], 1)
            condition = Condition(image_channels, image_mask, text, mask, pooled)
            latents = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
            for sigma, following in zip(schedule[:-1], schedule[1:]):
                step = velocity(transformer, latents, torch.tensor([sigma]), condition, torch.ones(1))
                latents = latents + (following - sigma) * step
            video = vae.decode(latents / scale).sample[0].clamp(-1, 1)
            frames = ((video + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 3, 0).numpy()
            results.append(adherence(frames, preset.fps, caption).to_dict())
    return results


def figure5_lines(t2v_teacher: Path, i2v_teacher: Path, vae: Path, budgets: list[int], count: int,
                  work: Path, cache_dir: Path) -> list[str]:
    """T2V against I2V step distillation, same algorithm (DMD2, w = 0), same budget: both students evaluated
    every budget step on held-out captions; a plot of the metric against the iteration."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from diffusers import HunyuanVideoTransformer3DModel

    from magic141.presets import get_preset
    from magic141.training.loop import TrainSettings
    from magic141.training.transformer import encoders
    from tasks.runtime.train_pool import train
    from tasks.runtime.training import DEFAULTS, make_stage

    preset = get_preset("toy")
    components = encoders(preset, vae)
    curves: dict[str, list[tuple[int, dict]]] = {}
    for mode, teacher in (("T2V", t2v_teacher), ("I2V", i2v_teacher)):
        stage = make_stage("dmd2", "toy-i2v", teacher=teacher, vae=vae, samples=SAMPLES_FIGURE5,
                           cache_dir=cache_dir, distillation={"w_min": 0.0, "w_max": 0.0})
        curves[mode] = []
        for budget in budgets:
            out = work / f"dmd2-{mode}"
            settings = TrainSettings(out=out, max_steps=budget, batch_size=DEFAULTS["dmd2"].batch_size,
                                     learning_rate=DEFAULTS["dmd2"].learning_rate, resume=out.is_dir())
            train(stage, settings, dataset_size=SAMPLES_FIGURE5)
            folder = out / "final" / "transformer" if (out / "final" / "transformer").is_dir() else out / "final"
            student = HunyuanVideoTransformer3DModel.from_pretrained(str(folder)).eval()
            readings = _sample_students(student, components, preset,
                                        stage.teacher.image_frames if mode == "I2V" else None, count, 4)
            curves[mode].append((budget, {key: _mean(readings, key) for key in COLUMNS}))
            logging.info("%s DMD2 at %d steps: %s", mode, budget, curves[mode][-1][1])
    PLOTS.mkdir(parents=True, exist_ok=True)
    figure, axes = plt.subplots(1, len(COLUMNS), figsize=(12, 3), dpi=100)
    for axis, key in zip(axes, COLUMNS):
        for mode, points in curves.items():
            axis.plot([b for b, _ in points], [100 * m[key] for _, m in points], marker="o", label=mode)
        axis.set_title(key)
        axis.set_xlabel("DMD2 iteration")
        axis.grid(alpha=0.3)
    axes[0].set_ylabel("held-out cases read right (%)")
    axes[0].legend()
    figure.tight_layout()
    plot = PLOTS / "distillation-figure5.png"
    figure.savefig(plot)
    plt.close(figure)
    lines = ["### Figure 5 at toy scale: T2V against I2V step distillation", "",
             f"DMD2 (w = 0, the same settings and budget) from the T2V teacher and from the I2V teacher (before CFG "
             f"distillation), each student sampled in 4 steps on {count} held-out cases at every budget "
             "(the I2V student starts from the scene's first frame, the T2V one from noise alone, so the I2V "
             "columns start high; what compares the two distillations is how each curve moves with the "
             "iterations):", "",
             "| iteration | " + " | ".join(f"T2V {k} | I2V {k}" for k in COLUMNS) + " |",
             "|---|" + "---|---|" * len(COLUMNS)]
    for (budget, t2v), (_, i2v) in zip(curves["T2V"], curves["I2V"]):
        lines.append(f"| {budget} | " + " | ".join(f"{100 * t2v[k]:.0f}% | {100 * i2v[k]:.0f}%" for k in COLUMNS) + " |")
    lines += ["", f"![Figure 5]({plot.relative_to(BENCHMARKS.parent)})"]
    return lines


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


def shipped_curve_lines() -> list[str]:
    """The training curves of the shipped CFG and DMD2 weights, as their manifest records the runs."""
    stages = json.loads((WEIGHTS / "MANIFEST.json").read_text())["stages"]
    lines = ["### Training curves (the shipped weights' runs)", ""]
    for stage in ("cfg", "dmd2"):
        sessions = stages[stage]["sessions"]
        wall = sum(session["wall_s"] for session in sessions)
        command = " ".join(sessions[-1]["command"])
        plot = WEIGHTS / "curves" / f"{stage}.png"
        lines.append(f"- `{stage}`: {max(s['to_step'] for s in sessions)} steps in {wall / 60:.0f} min, `{command}`: "
                     f"![{stage}]({plot.relative_to(BENCHMARKS.parent)})")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--i2v", type=Path, default=WEIGHTS / "i2v.json", help="the I2V teacher (before CFG distillation)")
    parser.add_argument("--cfg", type=Path, default=WEIGHTS / "teacher.json", help="the CFG-distilled teacher")
    parser.add_argument("--dmd2", type=Path, action="append", default=[], help="a DMD2 student (repeatable)")
    parser.add_argument("--runs", type=Path, nargs="*", default=[],
                        help="run folders whose loss curves to show (default: the shipped weights' runs)")
    parser.add_argument("--videos", type=int, default=48, help="held-out cases per setting")
    parser.add_argument("--cfg-steps", type=int, default=28, help="Euler steps of the CFG comparison")
    parser.add_argument("--guidance", type=float, help="guidance scale of Table 1 (default: the toy preset's)")
    parser.add_argument("--t2v", type=Path, help="a T2V teacher (final/ of 'train t2v'): adds Figure 5")
    parser.add_argument("--figure5-budgets", type=int, nargs="+", default=[100, 200, 300],
                        help="DMD2 iterations at which Figure 5 evaluates both students")
    parser.add_argument("--work", type=Path, default=Path("out/bench-distillation"),
                        help="where Figure 5's runs are kept (reruns resume them)")
    parser.add_argument("--cache-dir", type=Path, default=Path("out/train/cache"),
                        help="latent caches (the training commands' default folder: an existing one is reused)")
    parser.add_argument("--table1-only", action="store_true",
                        help="run only Table 1 (its own section of BENCHMARKS.md)")
    parser.add_argument("--figure5-only", action="store_true",
                        help="run only Figure 5 (its own section of BENCHMARKS.md); needs --t2v")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    import tempfile

    if args.t2v is not None:
        figure = figure5_lines(args.t2v, args.i2v, WEIGHTS / "vae", args.figure5_budgets, args.videos, args.work,
                               args.cache_dir)
        write_section("distillation_figure5", "\n".join(["## Distillation at toy scale: Figure 5", *figure[1:]]))
        logging.info("\n".join(figure))
    if args.figure5_only:
        return
    from magic141.presets import get_preset

    guidance = get_preset("toy").guidance_scale if args.guidance is None else args.guidance
    table1 = table1_lines(args.cfg, args.dmd2 or [WEIGHTS], args.videos, guidance)
    write_section("distillation_table1", "\n".join(table1))
    logging.info("\n".join(table1))
    if args.table1_only:
        return
    lines = ["## Distillation at toy scale (CFG distillation, DMD2)", ""]
    lines += cfg_lines(args.i2v, args.cfg, args.videos, args.cfg_steps) + [""]
    with tempfile.TemporaryDirectory() as work:
        lines += memory_lines(Path(work)) + [""]
    lines += curve_lines(args.runs) if args.runs else shipped_curve_lines()
    write_section("distillation", "\n".join(lines))
    logging.info("\n".join(lines))


if __name__ == "__main__":
    main()

"""The training loop every stage shares: seeded steps, safetensors checkpoints, exact resume, a loss log and curve.

A stage (:class:`Stage`) builds one trainee module whose ``forward(batch)`` returns the loss, and makes
the batch of any step from the step's sample indices. Everything random is drawn per sample from
``(seed, step, sample)``, so a step's global batch is the same whether one process or N data-parallel
ranks compute it, and a run resumed from a checkpoint repeats exactly what the uninterrupted run does.

The output folder of a run::

    run.json                  the stage, its description and the settings that fix the result
    losses.jsonl              one line per step: {"step": n, "loss": x, ...}
    loss.png                  the loss curve
    checkpoints/step-NNNNNN/  trainee.safetensors, optimizer.safetensors, state.json (the last two kept)
    final/                    the stage's loadable weights folder

With ``world > 1`` the caller has set up ``torch.distributed`` (Ray Train does, see ``tasks.runtime.train_pool``)
and passes ``wrap`` (DistributedDataParallel); rank 0 alone writes.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import PIL.Image
import torch
from safetensors.torch import load_file, save_file

from magic141.utils import InputError

logger = logging.getLogger(__name__)

KEEP_CHECKPOINTS = 2
PLOT_COLOURS = 64
LOSS_PLOT_POINTS = 50  # the running mean of a loss plot spans this fraction of the logged steps
SCHEDULES = ("constant", "cosine")
# bfloat16: the forward under autocast, weights and optimizer state in float32. auto: bfloat16 where the hardware
# computes it natively (a CUDA GPU, a CPU with AVX512-BF16 or AMX), float32 elsewhere: a CPU without it emulates
# bfloat16 and trains many times slower than in float32 (the toy VAE on an AVX2 EPYC: about 19 s a step against 0.7).
PRECISIONS = ("float32", "bfloat16", "auto")
StepCallback = Callable[[int, int, float], None]


class TrainingError(InputError):
    """Settings or an output folder that a run refuses before any compute."""


def native_bfloat16() -> bool:
    """Whether this machine computes bfloat16 natively: a CUDA GPU, or a CPU that oneDNN runs bfloat16 on."""
    if torch.cuda.is_available():
        return True
    return torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()


@dataclass(frozen=True)
class TrainSettings:
    """What fixes a run's result (with the stage's description), and where it goes."""

    out: Path
    max_steps: int
    seed: int = 0
    batch_size: int = 16
    learning_rate: float = 1e-3
    checkpoint_every: int = 100
    resume: bool = False
    workers: int = 1
    grad_clip: float = 1.0
    schedule: str = "constant"  # or "cosine": from the learning rate down to a tenth of it at max_steps
    warmup_steps: int = 0
    precision: str = "float32"

    def __post_init__(self) -> None:
        object.__setattr__(self, "out", Path(self.out))
        checks = (
            (self.max_steps >= 1, f"--max-steps must be >= 1, got {self.max_steps}"),
            (self.batch_size >= 1, f"the batch size must be >= 1, got {self.batch_size}"),
            (self.learning_rate > 0, f"the learning rate must be > 0, got {self.learning_rate}"),
            (self.checkpoint_every >= 1, f"checkpoints must be >= 1 step apart, got {self.checkpoint_every}"),
            (self.workers >= 1, f"--workers must be >= 1, got {self.workers}"),
            (self.schedule in SCHEDULES, f"unknown schedule {self.schedule!r}; choose one of: {', '.join(SCHEDULES)}"),
            (self.warmup_steps >= 0, f"warm-up steps must be >= 0, got {self.warmup_steps}"),
            (self.precision in PRECISIONS,
             f"unknown precision {self.precision!r}; choose one of: {', '.join(PRECISIONS)}"),
            (
                self.batch_size % self.workers == 0,
                f"the batch of {self.batch_size} does not split evenly over {self.workers} workers; "
                "choose a worker count that divides it",
            ),
        )
        for ok, message in checks:
            if not ok:
                raise TrainingError(message)
        if self.precision == "auto":
            object.__setattr__(self, "precision", "bfloat16" if native_bfloat16() else "float32")
            logger.info("precision auto: %s on this machine", self.precision)
        elif self.precision == "bfloat16" and not native_bfloat16():
            logger.warning("this machine has no native bfloat16 (a CUDA GPU, or a CPU with AVX512-BF16 or AMX): "
                           "autocast emulates it and trains many times slower than float32; use --precision auto")

    def identity(self) -> dict[str, Any]:
        """The settings two runs must share for one to resume the other (steps and workers may change)."""
        identity = {"seed": self.seed, "batch_size": self.batch_size, "learning_rate": self.learning_rate,
                    "grad_clip": self.grad_clip}
        if self.schedule != "constant" or self.warmup_steps:
            # A decaying schedule depends on where it ends: a resumed run keeps the total steps.
            identity |= {"schedule": self.schedule, "warmup_steps": self.warmup_steps, "max_steps": self.max_steps}
        if self.precision != "float32":
            identity["precision"] = self.precision
        return identity

    def learning_rate_at(self, step: int) -> float:
        """The learning rate of optimizer step ``step`` (0-based): linear warm-up, then the schedule."""
        if step < self.warmup_steps:
            return self.learning_rate * (step + 1) / self.warmup_steps
        if self.schedule == "constant":
            return self.learning_rate
        progress = (step - self.warmup_steps) / max(1, self.max_steps - self.warmup_steps)
        return self.learning_rate * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


class Stage(Protocol):
    """One trainable component: picklable, so Ray Train workers can build it."""

    name: str

    def describe(self) -> dict[str, Any]:
        """JSON that names the architecture and data; a run resumes only a run of the same description."""

    def build(self, seed: int) -> torch.nn.Module:
        """The trainee, initialised from ``seed``; ``forward(batch)`` returns the mean loss over the batch,
        or a (loss, {name: float}) pair to log more than the loss. Its frozen parameters (``requires_grad``
        off) are not checkpointed: ``build`` must make them the same every time. It may define
        ``parameter_groups()`` (parts trained at their own learning-rate scale) and ``after_step(step)`` (run
        after each optimizer step, e.g. an EMA of weights kept in buffers)."""

    def batch(self, seed: int, step: int, samples: Sequence[int]) -> Any:
        """The batch of ``samples`` at ``step``: every random draw comes from ``sample_rng(seed, step, sample)``."""

    def save(self, trainee: torch.nn.Module, folder: Path) -> None:
        """Write the trainee as a loadable weights folder."""


def sample_rng(seed: int, step: int, sample: int) -> torch.Generator:
    """The generator of one sample's random draws at one step."""
    state = np.random.SeedSequence([seed, step, sample]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator("cpu").manual_seed(int(state >> 1))


def step_samples(seed: int, step: int, batch_size: int, dataset_size: int | None = None) -> list[int]:
    """The global batch of ``step``: consecutive sample indices, in epochs reshuffled by seed when the
    dataset is finite."""
    first = step * batch_size
    if dataset_size is None:
        return list(range(first, first + batch_size))
    indices = []
    for position in range(first, first + batch_size):
        epoch, offset = divmod(position, dataset_size)
        order = np.random.default_rng([seed, epoch]).permutation(dataset_size)
        indices.append(int(order[offset]))
    return indices


@dataclass
class TrainResult:
    """Where a finished run left its weights, and how its loss went."""

    out: Path
    final: Path
    steps: int
    first_loss: float
    last_loss: float
    losses: list[float] = field(default_factory=list)


def _checkpoints(out: Path) -> list[Path]:
    folder = out / "checkpoints"
    return sorted(p for p in folder.glob("step-*") if (p / "state.json").is_file()) if folder.is_dir() else []


def check_folder(settings: TrainSettings) -> bool:
    """The checks of the output folder that need no stage; True when it holds a run that ``--resume`` continues."""
    out = settings.out
    if out.exists() and not out.is_dir():
        raise TrainingError(f"--out {out} is a file; name a folder for the run")
    if not (out / "run.json").is_file():
        if out.is_dir() and any(out.iterdir()):
            raise TrainingError(f"--out {out} is not empty and holds no training run; choose a new or empty folder")
        if settings.resume:
            raise TrainingError(f"--resume: {out} holds no run to resume; drop --resume to start one")
        return False
    if not settings.resume:
        raise TrainingError(f"--out {out} already holds a run; pass --resume to continue it or choose a new folder")
    return True


def check_output(stage: Stage, settings: TrainSettings) -> Path | None:
    """Refuse an output folder holding another run, or a run without ``--resume``; return the checkpoint to
    resume from (None to start afresh)."""
    if not check_folder(settings):
        return None
    out = settings.out
    recorded = json.loads((out / "run.json").read_text())
    mine = _run_record(stage, settings)
    for key in ("stage", "description", "identity"):
        if recorded.get(key) != mine[key]:
            raise TrainingError(
                f"--out {out} holds another run ({key} differs: {_diff(recorded.get(key), mine[key])}); "
                "choose a new folder or the settings of that run"
            )
    checkpoints = _checkpoints(out)
    return checkpoints[-1] if checkpoints else None


def _diff(recorded: Any, mine: Any) -> str:
    if isinstance(recorded, dict) and isinstance(mine, dict):
        keys = sorted(k for k in set(recorded) | set(mine) if recorded.get(k) != mine.get(k))
        return ", ".join(f"{k} {recorded.get(k)!r} there, {mine.get(k)!r} here" for k in keys[:3])
    return f"{recorded!r} there, {mine!r} here"


def _run_record(stage: Stage, settings: TrainSettings) -> dict[str, Any]:
    """What run.json holds, as read back from it (tuples become lists), so a resumed run compares equal."""
    record = {"stage": stage.name, "description": stage.describe(), "identity": settings.identity()}
    return json.loads(json.dumps(record))


def _optimizer_tensors(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors, scalars = {}, {}
    for index, values in state["state"].items():
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{index}.{key}"] = value.detach().contiguous()
            else:
                scalars[f"{index}.{key}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _optimizer_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for name, value in [*tensors.items(), *meta["scalars"].items()]:
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def _frozen(trainee: torch.nn.Module) -> set[str]:
    """The names of the parameters training never changes: ``Stage.build`` makes them again from the seed or the
    folder its description names, so checkpoints leave them out (a distilled model's frozen teacher)."""
    return {name for name, parameter in trainee.named_parameters() if not parameter.requires_grad}


def _trained_state(trainee: torch.nn.Module) -> dict[str, torch.Tensor]:
    frozen = _frozen(trainee)
    return {k: v.detach().contiguous() for k, v in trainee.state_dict().items() if k not in frozen}


def _save_checkpoint(out: Path, step: int, trainee: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    folder = out / "checkpoints" / f"step-{step:06d}"
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    save_file(_trained_state(trainee), partial / "trainee.safetensors")
    tensors, meta = _optimizer_tensors(optimizer.state_dict())
    save_file(tensors, partial / "optimizer.safetensors")
    (partial / "state.json").write_text(json.dumps({"step": step, "optimizer": meta}))
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(partial, folder)
    for old in _checkpoints(out)[:-KEEP_CHECKPOINTS]:
        shutil.rmtree(old)


def _load_checkpoint(folder: Path, trainee: torch.nn.Module, optimizer: torch.optim.Optimizer) -> int:
    state = json.loads((folder / "state.json").read_text())
    missing, unexpected = trainee.load_state_dict(load_file(folder / "trainee.safetensors"), strict=False)
    if set(missing) != _frozen(trainee) or unexpected:
        raise TrainingError(f"the checkpoint {folder} does not fit this run's model; start a new run")
    optimizer.load_state_dict(_optimizer_state(load_file(folder / "optimizer.safetensors"), state["optimizer"]))
    return int(state["step"])


def read_losses(out: Path) -> list[dict[str, float]]:
    path = Path(out) / "losses.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _truncate_losses(out: Path, step: int) -> None:
    """Drop the log lines past ``step`` (written after the checkpoint a resumed run starts from)."""
    kept = [entry for entry in read_losses(out) if entry["step"] <= step]
    (out / "losses.jsonl").write_text("".join(json.dumps(entry) + "\n" for entry in kept))


def plot_losses(out: Path, title: str) -> Path:
    """Write ``loss.png``: every logged value against the step, on a log scale where all are positive, faint, with
    its running mean over a fiftieth of the run drawn over it (a batch's loss is noisy; the mean shows the trend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    entries = read_losses(out)
    figure, axis = plt.subplots(figsize=(7, 4), dpi=100)
    names = list(dict.fromkeys(k for e in entries for k in e if k != "step"))
    for name in names:  # a value logged on some steps only (a generator's loss) is drawn over those steps
        logged = [e for e in entries if name in e]
        steps, values = [e["step"] for e in logged], [e[name] for e in logged]
        window = len(values) // LOSS_PLOT_POINTS
        if window < 2:
            axis.plot(steps, values, label=name, linewidth=1)
            continue
        (raw,) = axis.plot(steps, values, linewidth=0.6, alpha=0.3)
        mean = np.convolve(values, np.ones(window) / window, mode="valid")
        axis.plot(steps[window - 1:], mean, color=raw.get_color(), linewidth=1.6, label=f"{name} (mean of {window})")
    if entries and all(e.get(n, 1) > 0 for e in entries for n in names):
        axis.set_yscale("log")
    axis.set_xlabel("step")
    axis.set_title(title)
    axis.grid(alpha=0.3)
    if names:
        axis.legend()
    figure.tight_layout()
    figure.canvas.draw()
    image = PIL.Image.frombuffer("RGBA", figure.canvas.get_width_height(), figure.canvas.buffer_rgba())
    plt.close(figure)
    # A plot has few colours: a 64-colour palette keeps it as drawn at a third of the bytes (curves ship).
    path = out / "loss.png"
    image.convert("RGB").quantize(PLOT_COLOURS).save(path, optimize=True)
    return path


def _global_mean(value: torch.Tensor, world: int) -> torch.Tensor:
    if world > 1:
        value = value.clone()
        torch.distributed.all_reduce(value)
        value /= world
    return value


def _parameter_groups(trainee: torch.nn.Module) -> list[dict[str, Any]]:
    """The optimizer's parameter groups: the trainee's ``parameter_groups()`` when it trains parts at their own
    learning rates (``[{"params": [...], "lr_scale": x}, ...]``, each clipped on its own), else one group of
    every trainable parameter."""
    if hasattr(trainee, "parameter_groups"):
        return [{"lr_scale": 1.0, **group} for group in trainee.parameter_groups()]
    return [{"params": [p for p in trainee.parameters() if p.requires_grad], "lr_scale": 1.0}]


def run(
    stage: Stage,
    settings: TrainSettings,
    *,
    rank: int = 0,
    world: int = 1,
    wrap: Callable[[torch.nn.Module], torch.nn.Module] | None = None,
    on_step: StepCallback | None = None,
    dataset_size: int | None = None,
    resume_from: Path | None = None,
) -> TrainResult | None:
    """Train ``stage`` to ``settings.max_steps`` from the checkpoint ``resume_from`` (as :func:`check_output`
    chose it, once for all ranks); rank 0 returns the result, other ranks None."""
    writer = rank == 0
    torch.manual_seed(settings.seed)
    trainee = stage.build(settings.seed)
    trainee.train()
    groups = _parameter_groups(trainee)
    optimizer = torch.optim.AdamW(groups, lr=settings.learning_rate, weight_decay=0.0)
    start = 0 if resume_from is None else _load_checkpoint(resume_from, trainee, optimizer)
    if writer:
        settings.out.mkdir(parents=True, exist_ok=True)
        (settings.out / "run.json").write_text(json.dumps(_run_record(stage, settings), indent=2) + "\n")
        _truncate_losses(settings.out, start)
        if start:
            logger.info("resuming %s at step %d of %d from %s", stage.name, start, settings.max_steps, resume_from)
    model = wrap(trainee) if wrap is not None and world > 1 else trainee
    device = next(trainee.parameters()).device.type
    bfloat16 = settings.precision == "bfloat16"
    log = (settings.out / "losses.jsonl").open("a") if writer else None
    try:
        for step in range(start, settings.max_steps):
            samples = step_samples(settings.seed, step, settings.batch_size, dataset_size)[rank::world]
            batch = stage.batch(settings.seed, step, samples)
            with torch.autocast(device, dtype=torch.bfloat16, enabled=bfloat16):
                output = model(batch)
            loss, extras = output if isinstance(output, tuple) else (output, {})
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            for group in optimizer.param_groups:
                group["lr"] = settings.learning_rate_at(step) * group.get("lr_scale", 1.0)
                torch.nn.utils.clip_grad_norm_(group["params"], settings.grad_clip)
            optimizer.step()
            if hasattr(trainee, "after_step"):
                trainee.after_step(step)
            value = float(_global_mean(loss.detach(), world))
            if not math.isfinite(value):
                raise FloatingPointError(f"{stage.name}: the loss is {value} at step {step + 1}; lower the learning rate")
            done = step + 1
            if log is not None:
                log.write(json.dumps({"step": done, "loss": value, **extras}) + "\n")
                log.flush()
                if done % settings.checkpoint_every == 0 or done == settings.max_steps:
                    _save_checkpoint(settings.out, done, trainee, optimizer)
            if on_step is not None:
                on_step(done, settings.max_steps, value)
    finally:
        if log is not None:
            log.close()
    if not writer:
        return None
    final = settings.out / "final"
    partial = final.with_name("final.partial")
    shutil.rmtree(partial, ignore_errors=True)
    stage.save(trainee, partial)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(partial, final)
    plot_losses(settings.out, stage.name)
    result = result_of(settings)
    logger.info("%s: %d steps, loss %.4g -> %.4g; weights in %s", stage.name, result.steps, result.first_loss,
                result.last_loss, final)
    return result


def result_of(settings: TrainSettings) -> TrainResult:
    """The result of the finished run in ``settings.out``, from its loss log."""
    losses = [entry["loss"] for entry in read_losses(settings.out)]
    return TrainResult(settings.out, settings.out / "final", settings.max_steps, losses[0], losses[-1], losses)

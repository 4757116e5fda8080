"""``magic141 train``: train the toy world's models, each stage by its own command."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from flows.cli_common import UserError, one_line, print_fields, quiet_model_libraries, stderr, stdout

train_app = typer.Typer(help="Train the toy world's models (see the README's 'Training' section).", no_args_is_help=True)

OutOption = Annotated[Path, typer.Option("--out", help="Run folder: checkpoints, losses.jsonl, loss.png, final/.")]
StepsOption = Annotated[int, typer.Option("--max-steps", help="Optimizer steps to train to (a resumed run goes on to it).")]
SeedOption = Annotated[int, typer.Option("--seed", help="Seed of the initial weights and of every sample drawn.")]
ResumeOption = Annotated[bool, typer.Option("--resume", help="Continue the run in --out from its last checkpoint.")]
WorkersOption = Annotated[
    int, typer.Option("--workers", help="Data-parallel workers; more than 1 trains with DDP on a Ray pool (Ray Train).")
]
BatchOption = Annotated[int, typer.Option("--batch-size", help="Global batch of every step, split over the workers.")]
LearningRateOption = Annotated[float, typer.Option("--learning-rate", help="AdamW learning rate.")]
RayAddressOption = Annotated[
    str | None,
    typer.Option("--ray-address", help="Ray cluster to train on (default: $RAY_ADDRESS, else a private local instance)."),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print the result as JSON.")]


def _train(stage_factory: Callable[[], Any], settings: dict[str, Any], ray_address: str | None, as_json: bool) -> None:
    from magic141.training.loop import TrainingError, TrainSettings

    try:
        checked = TrainSettings(**settings)
    except TrainingError as exc:
        raise UserError(one_line(exc)) from None
    quiet_model_libraries(diffusers=False, ray=checked.workers > 1)
    from tasks.train_pool import train

    stage = stage_factory()
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("loss {task.fields[loss]}"),
               TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=stderr) as progress:
        bar = progress.add_task(f"train {stage.name}", total=checked.max_steps, loss="-")

        def on_step(step: int, total: int, loss: float) -> None:
            progress.update(bar, completed=step, total=total, loss=f"{loss:.4g}")

        try:
            result = train(stage, checked, address=ray_address, on_step=on_step)
        except TrainingError as exc:
            raise UserError(one_line(exc)) from None
    summary = {"stage": stage.name, "steps": result.steps, "first_loss": result.first_loss,
               "last_loss": result.last_loss, "final": str(result.final), "curve": str(result.out / "loss.png")}
    if as_json:
        stdout.print_json(json.dumps(summary))
    else:
        print_fields(summary.items(), 10)


@train_app.command("clip")
def train_clip(
    out: OutOption = Path("out/train/clip"),
    max_steps: StepsOption = 1500,
    seed: SeedOption = 0,
    resume: ResumeOption = False,
    workers: WorkersOption = 1,
    batch_size: BatchOption = 64,
    learning_rate: LearningRateOption = 1e-3,
    ray_address: RayAddressOption = None,
    as_json: JsonOption = False,
) -> None:
    """The retrieval index's CLIP model, contrastive on toy-world frames and their descriptions.

    Its final/ folder is an open_clip model: 'magic141 index build CORPUS --model DIR' embeds with it.
    """
    from magic141.training.clip import ClipStage

    settings = {"out": out, "max_steps": max_steps, "seed": seed, "resume": resume, "workers": workers,
                "batch_size": batch_size, "learning_rate": learning_rate}
    _train(ClipStage, settings, ray_address, as_json)

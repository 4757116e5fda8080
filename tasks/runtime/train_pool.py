"""Training on one process or data-parallel on a Ray pool: Ray Train starts the workers and their torch.distributed group.

One worker trains in this process, with no Ray at all. With ``workers > 1`` a :class:`ray.train.torch.TorchTrainer`
runs :func:`magic141.training.loop.run` on every worker, gloo on CPUs or NCCL on GPUs; Ray Train wraps the
trainee in DistributedDataParallel, and each rank computes its share of every step's global batch, so the
loss curve is that of one worker at the same batch. Without a Ray address the pool is a private local
instance (:func:`tasks.runtime.services.start_local_ray`).
"""

from __future__ import annotations

import functools
import json
import logging
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from magic141.training.loop import (
    Stage,
    StepCallback,
    TrainResult,
    TrainSettings,
    check_output,
    read_losses,
    result_of,
    run,
)
from tasks.runtime.services import ray_address, start_local_ray

logger = logging.getLogger(__name__)
POLL_S = 1.0


def _worker(config: dict[str, Any]) -> None:
    import ray.train
    import ray.train.torch

    context = ray.train.get_context()
    torch.set_num_threads(config["threads"])
    # A stage that trains its parts in phases leaves some parameters without a gradient at each step.
    unused = {"find_unused_parameters": bool(getattr(config["stage"], "unused_parameters", False))}
    run(
        config["stage"],
        config["settings"],
        rank=context.get_world_rank(),
        world=context.get_world_size(),
        wrap=functools.partial(ray.train.torch.prepare_model, parallel_strategy_kwargs=unused),
        dataset_size=config["dataset_size"],
        resume_from=config["resume_from"],
    )


def train(
    stage: Stage,
    settings: TrainSettings,
    *,
    address: str | None = None,
    use_gpu: bool = False,
    on_step: StepCallback | None = None,
    dataset_size: int | None = None,
    command: Sequence[str] | None = None,
) -> TrainResult:
    """Train ``stage`` on ``settings.workers`` workers and return rank 0's result.

    The output folder is checked once, before any worker starts; ``on_step`` follows the loss log. Each
    call appends what it did to ``sessions.jsonl``: the ``command`` and commit it ran, the steps, the
    workers and the wall time (the shipped weights' manifest is made of these).
    """
    resume_from = check_output(stage, settings)
    commit = _commit()  # the code that runs: the checkout may move on during a long run
    started, first_step = time.monotonic(), 0 if resume_from is None else int(resume_from.name.split("-")[1])
    result = _train(stage, settings, resume_from, address, use_gpu, on_step, dataset_size)
    session = {"command": None if command is None else list(command), "commit": commit, "from_step": first_step,
               "to_step": settings.max_steps, "workers": settings.workers, "seed": settings.seed,
               "wall_s": round(time.monotonic() - started, 1)}
    with (settings.out / "sessions.jsonl").open("a") as log:
        log.write(json.dumps(session) + "\n")
    return result


def _commit() -> str | None:
    """The commit of the project checkout this code runs from, with '+changes' when it has uncommitted ones."""
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return head.stdout.strip() + ("+changes" if dirty.stdout.strip() else "")


def _train(
    stage: Stage,
    settings: TrainSettings,
    resume_from: Path | None,
    address: str | None,
    use_gpu: bool,
    on_step: StepCallback | None,
    dataset_size: int | None,
) -> TrainResult:
    if settings.workers == 1:
        result = run(stage, settings, on_step=on_step, dataset_size=dataset_size, resume_from=resume_from)
        assert result is not None
        return result
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    joined = ray_address(address)
    started = not ray.is_initialized()
    if started:
        if joined is None:
            start_local_ray(num_cpus=settings.workers, num_gpus=settings.workers if use_gpu else 0)
        else:
            ray.init(address=joined, log_to_driver=False)
    storage = tempfile.mkdtemp(prefix="magic141-train-")
    try:
        config = {
            "stage": stage,
            "settings": settings,
            "threads": max(1, torch.get_num_threads() // settings.workers),
            "dataset_size": dataset_size,
            "resume_from": resume_from,
        }
        trainer = TorchTrainer(
            _worker,
            train_loop_config=config,
            scaling_config=ScalingConfig(num_workers=settings.workers, use_gpu=use_gpu, resources_per_worker={"CPU": 1}),
            torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
            run_config=RunConfig(name=f"magic141-{stage.name}", storage_path=storage),
        )
        logger.info("training %s on %d Ray Train workers", stage.name, settings.workers)
        failure: list[BaseException] = []

        def fit() -> None:
            try:
                trainer.fit()
            except BaseException as exc:  # re-raised in the caller's thread below
                failure.append(exc)

        thread = threading.Thread(target=fit, name="ray-train-fit", daemon=True)
        thread.start()
        _follow(settings.out, thread, on_step, settings.max_steps)
        if failure:
            raise failure[0]
        return result_of(settings)
    finally:
        shutil.rmtree(storage, ignore_errors=True)
        if started:
            # The Ray this training started (or joined) ends with it: a render pool later in this process starts
            # its own, with the GPUs it declares, instead of finding one with none.
            ray.shutdown()


def _follow(out: Path, thread: threading.Thread, on_step: StepCallback | None, total: int) -> None:
    """Report each new line of the loss log until the training thread ends."""
    reported = 0
    while True:
        thread.join(POLL_S)
        if on_step is not None:
            for entry in read_losses(out)[reported:]:
                on_step(int(entry["step"]), total, float(entry["loss"]))
                reported += 1
        if not thread.is_alive():
            return

"""The window loop of a video and the executors it runs on.

A video is a list of windows (:mod:`magic141.windows`). :func:`render_windows` owns both window
modes: ``chained`` windows run one after the other, each starting at the previous window's last
frame; ``parallel`` windows are co-denoised over one latent timeline, then decoded. What it asks of
the model is four pure requests, the :class:`WindowExecutor` protocol:

- ``prepare``: encode the job's prompt and reference image; returns the image latent;
- ``render_chained``: sample and decode one chained window from its first frame;
- ``predict``: the velocity of each co-denoised window at one step;
- ``decode``: decode windows' latents into the frames they keep (in any order).

:class:`LocalExecutor` answers them with a :class:`~magic141.pipeline.Magic141Pipeline` in this
process; the Ray render pool (``tasks.runtime.render_pool.PoolExecutor``) answers them on its actors. Each
answer carries the :class:`WindowWork` it took, which the loop adds to the window's
:class:`WindowRecord` (its provenance).
"""

from __future__ import annotations

import os
import socket
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import PIL.Image
import torch

from magic141.presets import Preset
from magic141.sampler import SamplerConfig, anchors_first_frame, sample_codenoise, start_noise_level
from magic141.windows import Window

if TYPE_CHECKING:
    from magic141.pipeline import Conditioning, Magic141Pipeline

ProgressCallback = Callable[[int, int], None]


@dataclass(frozen=True)
class RenderJob:
    """Everything that determines one video's windows; sent with each request."""

    key: str  # names the job's cached conditioning on an executor
    prompt: str
    negative_prompt: str | None
    image: np.ndarray  # (H, W, 3) uint8 reference image as given; the first frame is it fitted to the video size
    seed: int
    sampler: SamplerConfig
    size: tuple[int, int]  # (width, height) of the video, one of the preset's sizes


@dataclass(frozen=True)
class WorkerInfo:
    """Where a request ran: this process, or one actor of a pool."""

    name: str
    node: str  # host name, and on a Ray cluster the start of the node id
    gpu_id: str | None
    pid: int


def this_process(device: torch.device) -> WorkerInfo:
    """The worker record of a model held in this process on ``device``."""
    gpu = str(device.index or 0) if device.type == "cuda" else None
    return WorkerInfo(name="local", node=socket.gethostname(), gpu_id=gpu, pid=os.getpid())


@dataclass(frozen=True)
class WindowWork:
    """What one request took for one window: seconds, the worker that answered, the tries that failed."""

    seconds: float
    worker: WorkerInfo | None = None  # None: does not place the window (a co-denoising prediction)
    failures: tuple[str, ...] = ()


Decoded = tuple[Window, np.ndarray, WindowWork]  # a window, the frames it keeps, the work it took


@dataclass
class WindowRecord:
    """Provenance of one window: frame range, the worker that produced it, time spent, failed tries."""

    window: Window
    worker: WorkerInfo | None = None
    seconds: float = 0.0
    failures: list[str] = field(default_factory=list)

    def add(self, work: WindowWork) -> None:
        self.seconds += work.seconds
        self.failures.extend(work.failures)
        if work.worker is not None:
            self.worker = work.worker

    def as_dict(self) -> dict[str, Any]:
        worker = self.worker
        return {
            "window_index": self.window.index,
            "frame_start": self.window.start,
            "frame_end": self.window.stop,
            "latent_start": self.window.latent_start,
            "latent_end": self.window.latent_stop,
            "actor": worker.name if worker else "",
            "node": worker.node if worker else "",
            "gpu_id": worker.gpu_id if worker else None,
            "seconds": self.seconds,
            "attempts": 1 + len(self.failures),
        }


@dataclass(frozen=True)
class RenderedWindow:
    """A decoded window: its frames, (keep, H, W, 3) uint8, and its provenance so far."""

    window: Window
    frames: np.ndarray
    record: WindowRecord


class WindowExecutor(Protocol):
    """Where a video's windows are computed. Every request is a pure function of its arguments."""

    @property
    def preset(self) -> Preset: ...

    @property
    def fingerprint(self) -> str:
        """sha256 of the model's weights (:attr:`~magic141.pipeline.Magic141Pipeline.weights_fingerprint`)."""
        ...

    @property
    def convention(self) -> str:
        """The weights' prompt-and-sampling convention (:data:`magic141.conditioning.CONVENTIONS`)."""
        ...

    def prepare(self, job: RenderJob) -> torch.Tensor:
        """The scaled VAE latent of the job's reference image, (1, C, 1, h, w) float32 on the CPU."""
        ...

    def render_chained(
        self, job: RenderJob, window: Window, first_frame: np.ndarray | None, on_step: ProgressCallback | None
    ) -> tuple[np.ndarray, WindowWork]:
        """The frames chained ``window`` keeps, starting at ``first_frame`` (None: the reference image)."""
        ...

    def predict(
        self, job: RenderJob, timestep: torch.Tensor, inputs: list[tuple[Window, torch.Tensor]]
    ) -> list[tuple[torch.Tensor, WindowWork]]:
        """Each co-denoised window's velocity at ``timestep``, float32 on the CPU, in input order."""
        ...

    def decode(self, job: RenderJob, inputs: list[tuple[Window, torch.Tensor]]) -> Iterator[Decoded]:
        """Each window's kept frames, yielded as they are decoded (in any order)."""
        ...


def window_seed(seed: int, index: int) -> int:
    """An independent, reproducible noise seed for window ``index`` of a video seeded ``seed``."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1, dtype=np.uint64)[0] >> 1)


def posterior_seed(seed: int, index: int) -> int:
    """The seed of the VAE posterior sample of window ``index``'s first frame (``official`` convention), drawn
    apart from the windows' noise."""
    return int(np.random.SeedSequence([seed, index, 1]).generate_state(1, dtype=np.uint64)[0] >> 1)


def latent_shape(preset: Preset, latent_frames: int) -> tuple[int, int, int, int, int]:
    """(1, C, T, h, w) of ``latent_frames`` latents at the preset's video size."""
    ratio = preset.vae.spatial_compression_ratio
    return (1, preset.transformer.latent_channels, latent_frames, preset.height // ratio, preset.width // ratio)


def window_noise(preset: Preset, seed: int, window: Window) -> torch.Tensor:
    """Noise of one chained window, independent of the other windows', float32 on the CPU."""
    generator = torch.Generator("cpu").manual_seed(window_seed(seed, window.index))
    return torch.randn(latent_shape(preset, window.latent_frames), generator=generator)


def timeline_noise(preset: Preset, seed: int, latent_frames: int) -> torch.Tensor:
    """The noise a co-denoised timeline of a video seeded ``seed`` starts from, float32 on the CPU."""
    generator = torch.Generator("cpu").manual_seed(seed)
    return torch.randn(latent_shape(preset, latent_frames), generator=generator)


def render_windows(
    executor: WindowExecutor,
    job: RenderJob,
    plan: list[Window],
    mode: str,
    on_progress: ProgressCallback | None = None,
) -> Iterator[RenderedWindow]:
    """Render ``plan`` (made for window ``mode``, :func:`~magic141.windows.plan_windows`) on ``executor``,
    yielding each window once decoded, with its record.

    Progress counts denoising steps and decodes: ``len(plan) * steps`` for chained windows (an
    executor that reports no steps advances a window at a time), ``steps + len(plan)`` for
    co-denoised ones.
    """
    steps = job.sampler.steps

    def progress(done: int, total: int) -> None:
        if on_progress is not None:
            on_progress(done, total)

    records = [WindowRecord(window) for window in plan]
    if mode == "chained":
        total = len(plan) * steps
        first_frame = None
        reported = 0
        for record in records:
            start = record.window.index * steps

            def on_step(step: int, _steps: int, start: int = start) -> None:
                nonlocal reported
                reported = start + step
                progress(reported, total)

            frames, work = executor.render_chained(job, record.window, first_frame, on_step)
            record.add(work)
            first_frame = frames[-1]
            if reported < start + steps:  # the executor reports no steps: a window at a time
                reported = start + steps
                progress(reported, total)
            yield RenderedWindow(record.window, frames, record)
        return

    total = steps + len(plan)
    image_latents = executor.prepare(job)

    def predict(step: int, timestep: torch.Tensor, inputs: list[tuple[Window, torch.Tensor]]) -> list[torch.Tensor]:
        velocities = []
        for (window, _), (velocity, work) in zip(inputs, executor.predict(job, timestep, inputs)):
            records[window.index].add(work)
            velocities.append(velocity)
        progress(step + 1, total)
        return velocities

    noise = timeline_noise(executor.preset.at_size(job.size), job.seed, plan[-1].latent_stop)
    latents = sample_codenoise(
        noise, image_latents, plan, job.sampler, predict, noise_level=start_noise_level(executor.convention),
        anchor=anchors_first_frame(executor.convention, job.sampler),
    )
    inputs = [(window, latents[:, :, window.latent_start : window.latent_stop].clone()) for window in plan]
    for done, (window, frames, work) in enumerate(executor.decode(job, inputs), start=1):
        records[window.index].add(work)
        progress(steps + done, total)
        yield RenderedWindow(window, frames, records[window.index])


class LocalExecutor:
    """The executor of a model held in this process; also what each actor of a render pool runs.

    It keeps the conditioning of the last few jobs, so a video's windows encode its prompt once.
    """

    def __init__(self, pipeline: Magic141Pipeline, worker: WorkerInfo | None = None, cached_jobs: int = 4) -> None:
        self.pipeline = pipeline
        self.worker = worker or this_process(pipeline.device)
        self._cached_jobs = cached_jobs
        self._jobs: OrderedDict[str, Conditioning] = OrderedDict()
        self._sizes: dict[tuple[int, int], Magic141Pipeline] = {}

    def _at(self, job: RenderJob) -> Magic141Pipeline:
        """The pipeline at the job's video size (the same models; one view per size)."""
        if job.size not in self._sizes:
            self._sizes[job.size] = self.pipeline.at_size(job.size)
        return self._sizes[job.size]

    @property
    def preset(self) -> Preset:
        return self.pipeline.preset

    @property
    def fingerprint(self) -> str:
        return self.pipeline.weights_fingerprint

    @property
    def convention(self) -> str:
        return self.pipeline.components.convention

    def conditioning(self, job: RenderJob, given: Conditioning | None = None) -> Conditioning:
        """The job's conditioning: cached, else ``given`` (computed by another worker), else encoded here."""
        if job.key not in self._jobs:
            if given is None:
                image = PIL.Image.fromarray(job.image)
                given = self._at(job).prepare(image, job.prompt, job.negative_prompt, job.seed)
            self._jobs[job.key] = given
            while len(self._jobs) > self._cached_jobs:
                self._jobs.popitem(last=False)
        self._jobs.move_to_end(job.key)
        return self._jobs[job.key]

    def prepare(self, job: RenderJob) -> torch.Tensor:
        return self.conditioning(job).image_latents.cpu()

    def render_chained(
        self, job: RenderJob, window: Window, first_frame: np.ndarray | None, on_step: ProgressCallback | None = None
    ) -> tuple[np.ndarray, WindowWork]:
        started = time.perf_counter()
        frames = self._at(job).render_chained_window(
            self.conditioning(job), window, job.seed, job.sampler, first_frame, on_step
        )
        return frames, WindowWork(time.perf_counter() - started, self.worker)

    def predict(
        self, job: RenderJob, timestep: torch.Tensor, inputs: list[tuple[Window, torch.Tensor]]
    ) -> list[tuple[torch.Tensor, WindowWork]]:
        conditioning = self.conditioning(job)
        pipeline = self._at(job)
        results = []
        for window, latents in inputs:
            started = time.perf_counter()
            velocity = pipeline.predict_window(conditioning, window, latents, timestep, job.sampler)
            results.append((velocity.cpu(), WindowWork(time.perf_counter() - started)))
        return results

    def decode(self, job: RenderJob, inputs: list[tuple[Window, torch.Tensor]]) -> Iterator[Decoded]:
        pipeline = self._at(job)
        for window, latents in inputs:
            started = time.perf_counter()
            frames = pipeline.decode_window(latents, window)
            yield window, frames, WindowWork(time.perf_counter() - started, self.worker)

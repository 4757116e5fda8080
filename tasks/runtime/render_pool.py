"""Ray render pool: one actor per GPU holds the image-to-video model and serves window requests.

The driver runs the window loop (:func:`magic141.executor.render_windows`) on a :class:`PoolExecutor`,
which sends each actor small, pure requests: encode a video's conditioning, render a chained window,
predict co-denoising windows at one step, decode a window. Because every request is a function of its
inputs, a request lost with a dying
actor is simply sent again to another actor (Ray restarts the dead one in the background), and the
driver applies each window's result exactly once: no window is lost or applied twice.

By default the pool starts a private local Ray instance (:mod:`tasks.runtime.services`), declaring fake GPUs on
a machine without any so that scheduling works the same; ``address`` (or ``RAY_ADDRESS``; ``auto`` for
the host's own cluster) joins an existing cluster.
"""

from __future__ import annotations

import itertools
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import ray
import torch
from ray.exceptions import ActorDiedError, RayActorError

from magic141.executor import Decoded, LocalExecutor, ProgressCallback, RenderJob, WindowWork, WorkerInfo
from magic141.pipeline import Conditioning, Magic141Pipeline
from magic141.presets import get_preset
from magic141.utils import InputError, last_line
from magic141.windows import Window
from tasks.request import ModelSpec
from tasks.runtime.services import ray_address, start_local_ray

logger = logging.getLogger(__name__)

_CACHED_JOBS = 4


@dataclass(frozen=True)
class PoolConfig:
    """Which model the pool's actors hold and where they run."""

    model: ModelSpec
    workers: int = 1
    address: str | None = None  # Ray cluster address ('auto': the host's); None: RAY_ADDRESS, else a private one
    torch_threads: int | None = None  # CPU threads per actor; None: the machine's cores shared out

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise InputError(f"a render pool needs at least one worker, got {self.workers}")
        if self.torch_threads is not None and self.torch_threads < 1:
            raise InputError(f"torch_threads must be >= 1, got {self.torch_threads}")


class RenderWorker:
    """The model holder: built once per actor, it answers the :class:`~magic141.executor.LocalExecutor`'s
    requests for any number of videos."""

    def __init__(self, model: ModelSpec, name: str, torch_threads: int | None) -> None:
        if torch_threads is not None:
            torch.set_num_threads(torch_threads)
        context = ray.get_runtime_context()
        device = "cuda" if torch.cuda.is_available() else "cpu"
        info = WorkerInfo(
            name=name,
            node=f"{socket.gethostname()}:{context.get_node_id()[:8]}",
            gpu_id=",".join(str(g) for g in ray.get_gpu_ids()) or None,
            pid=os.getpid(),
        )
        started = time.perf_counter()
        pipeline = Magic141Pipeline.from_preset(
            model.preset, device, weights=model.weights, quantize=model.quantize, low_memory=model.low_memory
        )
        self.executor = LocalExecutor(pipeline, info, _CACHED_JOBS)
        logger.info("%s loaded %s on %s in %.1f s", name, model.preset, device, time.perf_counter() - started)

    def info(self) -> WorkerInfo:
        return self.executor.worker

    def fingerprint(self) -> str:
        return self.executor.fingerprint

    def convention(self) -> str:
        return self.executor.convention

    def prepare(self, job: RenderJob) -> Conditioning:
        """Encode the job's prompt and reference image; the result is shared with the other actors."""
        return self.executor.conditioning(job).cpu()

    def chained_window(
        self, job: RenderJob, window: Window, first_frame: np.ndarray | None
    ) -> tuple[np.ndarray, WindowWork]:
        return self.executor.render_chained(job, window, first_frame)

    def predict(
        self,
        job: RenderJob,
        conditioning: Conditioning,
        timestep: torch.Tensor,
        inputs: list[tuple[Window, torch.Tensor]],
    ) -> list[tuple[torch.Tensor, WindowWork]]:
        """Each window's velocity at ``timestep``, computed one window at a time from the shared conditioning."""
        self.executor.conditioning(job, conditioning)
        return self.executor.predict(job, timestep, inputs)

    def decode(self, job: RenderJob, window: Window, latents: torch.Tensor) -> tuple[np.ndarray, WindowWork]:
        (_, frames, work), = self.executor.decode(job, [(window, latents)])
        return frames, work


class PoolError(RuntimeError):
    """The pool could not finish a request on any actor."""


Request = tuple[str, tuple[Any, ...], int | None]  # (actor method, arguments, preferred worker)
FailureCallback = Callable[[int, str], None]


def _connect(config: PoolConfig) -> None:
    if ray.is_initialized():
        return
    address = ray_address(config.address)
    if address:
        logger.info("joining Ray cluster at %s", address)
        ray.init(address=address, log_to_driver=False)
        return
    gpus = torch.cuda.device_count()
    if gpus == 0:
        logger.info("no GPU visible: starting local Ray with %d fake GPU(s) on the CPU", config.workers)
    start_local_ray(num_cpus=max(os.cpu_count() or 1, config.workers), num_gpus=gpus or config.workers)


class RenderPool:
    """A set of model-holding actors, one per GPU, and the fault-tolerant dispatch of window requests."""

    def __init__(self, config: PoolConfig) -> None:
        self.config = config
        _connect(config)
        pool_id = uuid.uuid4().hex[:8]
        on_gpu = torch.cuda.device_count() > 0
        threads = config.torch_threads
        if threads is None and not on_gpu:
            threads = max(1, (os.cpu_count() or 1) // config.workers)
        actor_class = ray.remote(RenderWorker)
        names = [f"render-{pool_id}-{i}" for i in range(config.workers)]
        self._actors = [
            actor_class.options(
                name=f"magic141-{name}", num_gpus=1, num_cpus=1 if on_gpu else 0, max_restarts=-1, max_task_retries=0
            ).remote(config.model, name, threads)
            for name in names
        ]
        self._busy = [0] * config.workers
        self._revival: dict[int, Any] = {}  # worker -> ping sent after it died; answered once it is back
        self._lock = threading.Lock()
        try:
            self.actors: list[WorkerInfo] = ray.get([actor.info.remote() for actor in self._actors])
        except ActorDiedError as exc:
            self.close()
            if not exc.actor_init_failed:
                raise
            raise PoolError(f"render actors could not load the model: {last_line(exc)}") from None
        self.fingerprint: str = ray.get(self._actors[0].fingerprint.remote())
        self.convention: str = ray.get(self._actors[0].convention.remote())
        logger.info("render pool ready: %s", ", ".join(f"{a.name}@{a.node} gpu {a.gpu_id}" for a in self.actors))

    @property
    def workers(self) -> int:
        return len(self._actors)

    def refresh(self, timeout_s: float = 600.0) -> list[WorkerInfo]:
        """Wait until every actor answers (restarted ones included) and update :attr:`actors`."""
        deadline = time.monotonic() + timeout_s
        infos: list[WorkerInfo] = []
        for worker, actor in enumerate(self._actors):
            while True:
                try:
                    infos.append(ray.get(actor.info.remote(), timeout=max(1.0, deadline - time.monotonic())))
                    break
                except RayActorError as exc:
                    if time.monotonic() > deadline:
                        raise PoolError(f"actor {self.actors[worker].name} did not come back in {timeout_s:g} s") from exc
                    time.sleep(0.5)
        self.actors = infos
        return infos

    def close(self) -> None:
        """Stop the actors; their models are released."""
        for actor in self._actors:
            ray.kill(actor, no_restart=True)
        self._actors = []

    def _down(self, worker: int) -> bool:
        """Whether ``worker`` died and has not answered a ping since (Ray restarts it meanwhile)."""
        ping = self._revival.get(worker)
        if ping is None:
            return False
        ready, _ = ray.wait([ping], timeout=0)
        if not ready:
            return True
        try:
            ray.get(ping)
        except RayActorError:
            self._revival[worker] = self._actors[worker].info.remote()
            return True
        del self._revival[worker]
        logger.info("actor %s is back", self.actors[worker].name)
        return False

    def _submit(self, request: Request, avoid: set[int]) -> tuple[int, Any]:
        method, args, prefer = request
        with self._lock:
            up = [i for i in range(self.workers) if i not in avoid and not self._down(i)]
            if prefer in up:
                worker = prefer
            else:
                worker = min(up or [i for i in range(self.workers) if i not in avoid] or range(self.workers),
                             key=lambda i: self._busy[i])
            self._busy[worker] += 1
        return worker, getattr(self._actors[worker], method).remote(*args)

    def run(
        self, requests: list[Request], on_failure: FailureCallback, max_in_flight: int | None = None
    ) -> Iterator[tuple[int, Any]]:
        """Run requests concurrently, at most ``max_in_flight`` at once, yielding ``(number, result)``
        as each completes. A request whose actor dies is sent to another actor; each request's result
        is yielded exactly once.
        """
        limit = max_in_flight or len(requests)
        tried: list[set[int]] = [set() for _ in requests]
        pending: dict[Any, tuple[int, int]] = {}
        queue = iter(range(len(requests)))

        def submit(number: int) -> None:
            worker, ref = self._submit(requests[number], tried[number])
            pending[ref] = (number, worker)

        for number in itertools.islice(queue, limit):
            submit(number)
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            number, worker = pending.pop(ready[0])
            with self._lock:
                self._busy[worker] -= 1
            try:
                result = ray.get(ready[0])
            except RayActorError as exc:
                reason = f"actor {self.actors[worker].name} died ({type(exc).__name__})"
                method = requests[number][0]
                logger.warning("%s request %d lost: %s; sending it to another actor", method, number, reason)
                on_failure(number, reason)
                tried[number].add(worker)
                with self._lock:
                    self._revival.setdefault(worker, self._actors[worker].info.remote())
                if len(tried[number]) >= 3 * self.workers:
                    raise PoolError(f"{method} failed on {len(tried[number])} actors; last: {reason}") from exc
                submit(number)
                continue
            yield number, result
            next_number = next(queue, None)
            if next_number is not None:
                submit(next_number)

    def call(self, method: str, *args: Any, on_failure: FailureCallback | None = None) -> Any:
        """Run one request on the least busy actor, on another if its actor dies."""
        for _, result in self.run([(method, args, None)], on_failure or (lambda _number, _reason: None)):
            return result
        raise PoolError(f"{method} returned nothing")


class PoolExecutor:
    """The :class:`~magic141.executor.WindowExecutor` of a render pool.

    Chained windows run one after the other, each on the least busy actor. Co-denoised windows are
    predicted at every step by each worker for its share (window k on worker k mod N, so placements
    are stable), from a conditioning encoded once and shared; then they are decoded across the pool.
    A request lost with its actor is sent to another; the failure is added to its windows' records.
    Each job (with its reference image) and its conditioning go into Ray's object store once; the
    requests carry references to them.
    """

    def __init__(self, pool: RenderPool) -> None:
        self.pool = pool
        self.preset = get_preset(pool.config.model.preset)
        self._job: tuple[str, Any] | None = None  # (job key, object ref of the job)
        self._shared: tuple[str, Any] | None = None  # (job key, object ref of its conditioning)

    def _ref(self, job: RenderJob) -> Any:
        if self._job is None or self._job[0] != job.key:
            self._job = (job.key, ray.put(job))
        return self._job[1]

    @property
    def fingerprint(self) -> str:
        return self.pool.fingerprint

    @property
    def convention(self) -> str:
        return self.pool.convention

    def prepare(self, job: RenderJob) -> torch.Tensor:
        conditioning = self.pool.call("prepare", self._ref(job))
        self._shared = (job.key, ray.put(conditioning))
        return conditioning.image_latents

    def render_chained(
        self, job: RenderJob, window: Window, first_frame: np.ndarray | None, on_step: ProgressCallback | None = None
    ) -> tuple[np.ndarray, WindowWork]:
        failures: list[str] = []
        frames, work = self.pool.call(
            "chained_window", self._ref(job), window, first_frame,
            on_failure=lambda _number, reason: failures.append(reason),
        )
        return frames, replace(work, failures=tuple(failures))

    def predict(
        self, job: RenderJob, timestep: torch.Tensor, inputs: list[tuple[Window, torch.Tensor]]
    ) -> list[tuple[torch.Tensor, WindowWork]]:
        if self._shared is None or self._shared[0] != job.key:
            raise RuntimeError(f"predict before prepare for job {job.key}")
        groups: dict[int, list[int]] = {}
        for position, (window, _) in enumerate(inputs):
            groups.setdefault(window.index % self.pool.workers, []).append(position)
        workers = sorted(groups)
        shares = {w: [(inputs[p][0], inputs[p][1].clone()) for p in groups[w]] for w in workers}
        requests: list[Request] = [
            ("predict", (self._ref(job), self._shared[1], timestep, shares[w]), w) for w in workers
        ]
        failures: dict[int, list[str]] = {}
        results: dict[int, tuple[torch.Tensor, WindowWork]] = {}
        runs = self.pool.run(requests, lambda number, reason: failures.setdefault(number, []).append(reason))
        for number, answers in runs:
            failed = tuple(failures.get(number, ()))
            for position, (velocity, work) in zip(groups[workers[number]], answers):
                results[position] = (velocity, replace(work, failures=failed))
        return [results[position] for position in range(len(inputs))]

    def decode(self, job: RenderJob, inputs: list[tuple[Window, torch.Tensor]]) -> Iterator[Decoded]:
        requests: list[Request] = [
            ("decode", (self._ref(job), window, latents), window.index % self.pool.workers)
            for window, latents in inputs
        ]
        failures: dict[int, list[str]] = {}
        runs = self.pool.run(
            requests, lambda number, reason: failures.setdefault(number, []).append(reason),
            max_in_flight=2 * self.pool.workers,
        )
        for number, (frames, work) in runs:
            yield inputs[number][0], frames, replace(work, failures=tuple(failures.get(number, ())))


_pools: dict[PoolConfig, RenderPool] = {}
_pools_lock = threading.Lock()


def get_pool(config: PoolConfig) -> RenderPool:
    """The process's pool for ``config``, started on first use and reused by later renders."""
    with _pools_lock:
        pool = _pools.get(config)
        if pool is None:
            pool = _pools[config] = RenderPool(config)
        return pool


def shutdown_pools() -> None:
    """Stop every pool of this process and disconnect from Ray."""
    with _pools_lock:
        for pool in _pools.values():
            pool.close()
        _pools.clear()
    if ray.is_initialized():
        ray.shutdown()

"""The Ray render pool: actors really hold the model, windows spread over them, a dying actor loses nothing."""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import ray

from flows.generate import generate
from magic141.executor import RenderJob, render_windows
from magic141.pipeline import Magic141Pipeline, plan_video
from magic141.presets import get_preset
from magic141.sampler import SamplerConfig
from tasks.catalog import open_catalog
from tasks.request import GenerateRequest, ModelSpec
from tasks.runtime.ffmpeg import probe
from tasks.runtime.render_pool import PoolConfig, PoolError, PoolExecutor, RenderPool, get_pool, shutdown_pools

WORKERS = 2


def test_a_model_the_actors_cannot_load_is_one_line_naming_the_cause(tmp_path: Path):
    """Runs first, on its own Ray instance: an actor whose model load fails is not restarted forever."""
    from magic141.components import build_i2v_components
    from magic141.presets import get_preset
    from magic141.weights import save_i2v_components

    weights = save_i2v_components(build_i2v_components(get_preset("tiny")), tmp_path / "gone")
    model = ModelSpec("tiny", weights=str(weights))
    shutil.rmtree(weights)  # gone between the request's check and the actors' load
    try:
        with pytest.raises(PoolError) as error:
            get_pool(PoolConfig(model, 1))
    finally:
        shutdown_pools()
    message = str(error.value)
    assert message.startswith("render actors could not load the model: magic141.utils.InputError: weights folder "), message
    assert "gone' does not exist" in message and "\n" not in message


@pytest.fixture(scope="module")
def pool() -> Iterator[RenderPool]:
    """Two actors on a local Ray instance with two fake GPUs, shared with the flow runs of this module."""
    yield get_pool(PoolConfig(ModelSpec("tiny"), WORKERS))
    shutdown_pools()


def job(prior_image: PIL.Image.Image, key: str, seed: int = 4) -> RenderJob:
    return RenderJob(key, "a lighthouse in a storm", None, np.asarray(prior_image), seed, SamplerConfig(flow_shift=7.0),
                     prior_image.size)


def render(pool: RenderPool, video: RenderJob, mode: str, frames: int, on_progress=None):
    plan = plan_video(get_preset("tiny"), frames, mode)
    got: dict[int, np.ndarray] = {}

    def on_window(window, window_frames):
        assert window.index not in got, "a window was applied twice"
        got[window.index] = window_frames

    records = []
    for rendered in render_windows(PoolExecutor(pool), video, plan, mode, on_progress):
        on_window(rendered.window, rendered.frames)
        records.append(rendered.record)
    assert sorted(got) == list(range(len(plan))), "no window is lost"
    return plan, got, records


def test_actors_hold_the_model_on_their_own_fake_gpus(pool: RenderPool):
    assert len(pool.actors) == WORKERS
    assert sorted(actor.gpu_id for actor in pool.actors) == ["0", "1"]
    assert len({actor.pid for actor in pool.actors}) == WORKERS and os.getpid() not in {a.pid for a in pool.actors}
    assert ray.available_resources().get("GPU", 0) == 0, "each actor holds one whole GPU"
    assert pool.fingerprint == Magic141Pipeline.from_preset("tiny").weights_fingerprint


@pytest.mark.parametrize("mode", ["parallel", "chained"])
def test_pool_renders_what_the_library_renders(pool: RenderPool, tiny_pipeline, prior_image, mode: str):
    plan, got, records = render(pool, job(prior_image, f"lib-{mode}"), mode, 90)
    reference = tiny_pipeline(prior_image, "a lighthouse in a storm", num_frames=90, seed=4,
                              sampler=SamplerConfig(flow_shift=7.0), windows=mode)
    for rendered in reference:
        difference = np.abs(rendered.frames.astype(int) - got[rendered.window.index].astype(int)).max()
        assert difference <= 1, f"window {rendered.window.index} differs by {difference}"
    if mode == "parallel":
        assert {r.worker.name for r in records} == {a.name for a in pool.actors}, "windows spread over the pool"
    assert all(r.seconds > 0 and not r.failures for r in records)


@pytest.mark.parametrize("mode", ["parallel", "chained"])
def test_killed_actor_loses_no_window_and_changes_nothing(pool: RenderPool, prior_image, mode: str):
    undisturbed_plan, undisturbed, _ = render(pool, job(prior_image, f"calm-{mode}", seed=8), mode, 70)
    actors = pool.refresh()  # each worker's current process, after any earlier restart
    killed: list[int] = []

    def kill_once_busy() -> None:
        """Kill the first worker seen holding a request: killed when idle, Ray would restart it unseen."""
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            busy = [worker for worker, requests in enumerate(pool._busy) if requests]
            if busy:
                os.kill(actors[busy[0]].pid, signal.SIGKILL)
                killed.append(actors[busy[0]].pid)
                return
            time.sleep(0.002)

    killer = threading.Thread(target=kill_once_busy, daemon=True)

    def kill_after_first(done: int, total: int) -> None:
        if killer.ident is None:  # at the first progress report
            killer.start()

    plan, disturbed, records = render(pool, job(prior_image, f"storm-{mode}", seed=8), mode, 70, kill_after_first)
    killer.join(timeout=120)
    assert killed, "the actor was killed during the render"
    assert plan == undisturbed_plan
    for index in undisturbed:
        assert np.array_equal(disturbed[index], undisturbed[index]), f"window {index} changed"
    retried = [r for r in records if r.failures]
    assert retried and all("died" in reason for r in retried for reason in r.failures)
    assert all(r.as_dict()["attempts"] == 1 + len(r.failures) for r in records)


def test_flow_on_the_pool_records_every_window(pool: RenderPool, prefect_api, tmp_path: Path):
    pool.refresh()  # both actors up, after the restarts of the kill tests
    url = f"sqlite:///{tmp_path / 'catalog.db'}"
    result = generate(GenerateRequest.from_options(prompt="a harbour at dawn", out=str(tmp_path / "h.mp4"), catalog_url=url,
                                      seconds=5, fps=24, seed=3, windows="parallel", workers=WORKERS))
    assert probe(tmp_path / "h.mp4").frames == 120
    with open_catalog(url) as catalog:
        windows = catalog.video_windows(result.video_id)
        row = catalog.get_video(result.video_id)
    assert len(windows) == len(row["window_layout"]) > 1
    assert {w["actor"] for w in windows} == {a.name for a in pool.actors}
    assert {w["gpu_id"] for w in windows} == {"0", "1"}
    assert all(w["node"] and w["seconds"] > 0 for w in windows)
    assert windows[-1]["frame_end"] == 120

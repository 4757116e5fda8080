"""The render pool on a Ray cluster of two nodes: actors spread over the nodes, windows come back from both."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import PIL.Image
import pytest
import ray
from ray.cluster_utils import Cluster

from magic141.executor import RenderJob, render_windows
from magic141.pipeline import plan_video
from magic141.presets import get_preset
from magic141.sampler import SamplerConfig
from tasks.request import ModelSpec
from tasks.runtime.render_pool import PoolConfig, PoolExecutor, RenderPool, shutdown_pools

NODE = {"num_cpus": 1, "num_gpus": 1, "object_store_memory": 200 * 2**20}


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    """A head and a worker node, each declaring one fake GPU (what two one-GPU machines look like to Ray)."""
    shutdown_pools()
    cluster = Cluster(initialize_head=True, head_node_args=NODE)
    cluster.add_node(**NODE)
    cluster.wait_for_nodes()
    yield cluster
    shutdown_pools()
    cluster.shutdown()


def test_windows_of_one_video_are_rendered_on_both_nodes(cluster: Cluster, tiny_pipeline, prior_image: PIL.Image.Image):
    pool = RenderPool(PoolConfig(ModelSpec("tiny"), workers=2, address=cluster.address))
    try:
        assert len({node["NodeID"] for node in ray.nodes() if node["Alive"]}) == 2
        assert len({actor.node for actor in pool.actors}) == 2, "one actor per one-GPU node"
        plan = plan_video(get_preset("tiny"), 60, "parallel")
        got: dict[int, np.ndarray] = {}
        job = RenderJob("cluster", "a lighthouse in a storm", None, np.asarray(prior_image), 4, SamplerConfig(flow_shift=7.0),
                        prior_image.size)
        records = []
        for rendered in render_windows(PoolExecutor(pool), job, plan, "parallel"):
            got[rendered.window.index] = rendered.frames
            records.append(rendered.record)
    finally:
        pool.close()
    assert sorted(got) == list(range(len(plan)))
    assert {record.worker.node for record in records} == {actor.node for actor in pool.actors}, "both nodes decode"
    reference = tiny_pipeline(prior_image, "a lighthouse in a storm", num_frames=60, seed=4,
                              sampler=SamplerConfig(flow_shift=7.0), windows="parallel")
    for rendered in reference:
        assert np.abs(rendered.frames.astype(int) - got[rendered.window.index].astype(int)).max() <= 1

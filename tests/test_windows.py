"""Window plans cover every frame exactly, with the overlaps asked for, in both long-video modes."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from magic141.windows import (
    decoded_frames,
    frames_for,
    fusion_weights,
    latent_frames_for,
    plan_chained,
    plan_parallel,
    plan_windows,
)


@given(num_frames=st.integers(1, 20_000), window=st.integers(2, 40), ratio=st.sampled_from([1, 2, 4, 8]))
def test_chained_plan_covers_every_frame_once(num_frames: int, window: int, ratio: int):
    plan = plan_chained(num_frames, window, ratio)
    assert plan[0].start == 0 and plan[0].offset == 0
    assert all(w.offset == 1 for w in plan[1:]), "later windows drop the duplicated boundary frame"
    assert all(w.blend == 0 for w in plan)
    for previous, current in zip(plan, plan[1:]):
        assert current.start == previous.stop
        assert current.latent_start == previous.latent_stop - 1, "neighbours share the boundary latent"
    assert plan[-1].stop == num_frames
    for w in plan:
        assert 1 <= w.latent_frames <= window
        assert 1 <= w.keep <= decoded_frames(w.latent_frames, ratio) - w.offset
    assert all(w.latent_frames == window for w in plan[:-1]), "only the last window is shortened"


@given(
    seconds=st.floats(0.05, 600, allow_nan=False),
    fps=st.sampled_from([8, 12, 24, 25, 30]),
    window=st.integers(2, 40),
    overlap_fraction=st.floats(0, 0.99),
    ratio=st.sampled_from([1, 2, 4, 8]),
)
def test_parallel_plan_covers_every_frame_with_the_asked_overlap(
    seconds: float, fps: int, window: int, overlap_fraction: float, ratio: int
):
    overlap = 1 + int(overlap_fraction * (window - 1))
    num_frames = frames_for(seconds, fps)
    assert num_frames == max(1, round(seconds * fps))
    plan = plan_parallel(num_frames, window, overlap, ratio)
    total = latent_frames_for(num_frames, ratio)

    size = min(window, total)
    assert all(w.latent_frames == size for w in plan), "every window has the same length"
    assert plan[0].latent_start == 0 and plan[0].start == 0 and plan[0].blend == 0
    assert plan[-1].latent_stop == total, "the last window is aligned to the end of the timeline"
    assert plan[-1].stop == num_frames, "the stitched video has exactly the frames asked for"
    for previous, current in zip(plan, plan[1:]):
        shared = previous.latent_stop - current.latent_start
        if current is not plan[-1]:
            assert shared == overlap, "overlaps are as asked"
        assert overlap <= shared < size
        assert current.blend == previous.stop - current.start > 0
        if current.offset == 0:
            assert current.blend == decoded_frames(shared, ratio)
    for before, _, current in zip(plan, plan[1:], plan[2:]):
        assert current.start >= before.stop, "at most two windows share a frame"
    covered = set()
    for w in plan:
        assert w.start == ratio * w.latent_start + w.offset
        assert w.offset + w.keep <= decoded_frames(w.latent_frames, ratio)
        covered.update(range(w.start, w.stop))
    assert covered == set(range(num_frames)), "the windows cover every frame"
    stitched = sum(w.keep - w.blend for w in plan)
    assert stitched == num_frames


@given(num_frames=st.integers(1, 5_000), window=st.integers(2, 24), overlap_fraction=st.floats(0, 0.99))
def test_fusion_weights_are_smooth_and_sum_to_one(num_frames: int, window: int, overlap_fraction: float):
    overlap = 1 + int(overlap_fraction * (window - 1))
    plan = plan_parallel(num_frames, window, overlap)
    weights = fusion_weights(plan)
    total = np.zeros(plan[-1].latent_stop)
    for w, weight in zip(plan, weights):
        assert weight.shape == (w.latent_frames,)
        assert (weight > 0).all() and (weight <= 1).all()
        total[w.latent_start : w.latent_stop] += weight
    assert np.allclose(total, 1.0, atol=1e-12)


def test_twenty_second_tiny_parallel_layout():
    plan = plan_parallel(480, 9, 2)
    assert len(plan) == 17
    assert [(w.latent_start, w.latent_stop) for w in plan[:2]] == [(0, 9), (7, 16)]
    assert (plan[-1].latent_start, plan[-1].latent_stop) == (112, 121)
    assert plan[1].blend == 5


def test_tiny_five_seconds_chained_layout():
    plan = plan_chained(120, 9, 4)
    assert [(w.latent_frames, w.keep) for w in plan] == [(9, 33), (9, 32), (9, 32), (7, 23)]


@pytest.mark.parametrize("pixels, latents", [(1, 1), (2, 2), (5, 2), (6, 3), (33, 9), (34, 10)])
def test_latent_frames_for_is_the_fewest_that_decode_enough(pixels: int, latents: int):
    assert latent_frames_for(pixels) == latents
    assert decoded_frames(latents) >= pixels > decoded_frames(latents - 1) if latents > 1 else True


@pytest.mark.parametrize("num_frames, window", [(0, 9), (-3, 9), (10, 1)])
def test_bad_plans_are_refused(num_frames: int, window: int):
    with pytest.raises(ValueError):
        plan_chained(num_frames, window)


@pytest.mark.parametrize("overlap", [0, 9, -1])
def test_bad_overlaps_are_refused(overlap: int):
    with pytest.raises(ValueError, match="overlap must be between 1 and 8"):
        plan_parallel(100, 9, overlap)


def test_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="unknown window mode 'sliding'"):
        plan_windows("sliding", 100, 9, 2)


@pytest.mark.parametrize("seconds, fps", [(0, 24), (-1, 24), (float("nan"), 24), (5, 0)])
def test_bad_durations_are_refused(seconds: float, fps: int):
    with pytest.raises(ValueError):
        frames_for(seconds, fps)

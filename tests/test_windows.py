"""Chained window plans cover every frame exactly once."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from magic141.windows import decoded_frames, latent_frames_for, plan_chained


@given(num_frames=st.integers(1, 20_000), window=st.integers(2, 40), ratio=st.sampled_from([1, 2, 4, 8]))
def test_chained_plan_covers_every_frame_once(num_frames: int, window: int, ratio: int):
    plan = plan_chained(num_frames, window, ratio)
    assert plan[0].start == 0 and plan[0].offset == 0
    assert all(w.offset == 1 for w in plan[1:]), "later windows drop the duplicated boundary frame"
    for previous, current in zip(plan, plan[1:]):
        assert current.start == previous.stop
    assert plan[-1].stop == num_frames
    for w in plan:
        assert 1 <= w.latent_frames <= window
        assert 1 <= w.keep <= decoded_frames(w.latent_frames, ratio) - w.offset
    assert all(w.latent_frames == window for w in plan[:-1]), "only the last window is shortened"


def test_tiny_five_seconds_layout():
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

"""The toy world: its grammar, its held-out split, its physics, and the simple vision that reads it back."""

from __future__ import annotations

import numpy as np
import pytest

from magic141.metrics import motion_magnitude, psnr, seam_discontinuity, ssim, temporal_flicker, video_metrics
from magic141.toy_eval import adherence, read_video
from magic141.toy_world import (
    BACKGROUNDS,
    COLOURS,
    GROW_RANGE,
    MOTIONS,
    SHAPES,
    Caption,
    all_captions,
    evaluation_captions,
    held_out_captions,
    render_video,
    sample,
    sample_scene,
    scene_state,
    split_captions,
)

W, H, FPS = 64, 48, 8


def test_the_grammar_spells_and_parses_every_caption() -> None:
    captions = all_captions()
    assert len(captions) == len(COLOURS) * len(SHAPES) * len(MOTIONS) * len(BACKGROUNDS) == 252
    for caption in captions:
        assert Caption.parse(caption.text) == caption
    assert Caption.parse("  A Red  circle moving left on a black background ") == Caption(
        "red", "circle", "moving left", "black"
    )
    with pytest.raises(ValueError, match="not a toy-world caption; write 'a {colour} {shape}"):
        Caption.parse("a purple circle moving left on a black background")
    assert Caption.find("a cat") is None
    with pytest.raises(ValueError, match="unknown colour 'purple'"):
        Caption("purple", "circle", "growing", "black")


def test_a_fixed_fifth_of_the_combinations_is_held_out_and_every_pair_of_words_is_still_trained() -> None:
    held, train = split_captions("held-out"), split_captions("train")
    assert len(held) == round(0.2 * 252) and len(held) + len(train) == 252
    assert set(held) == held_out_captions() and not set(held) & set(train)
    fields = ("colour", "shape", "motion", "background")
    for i, a in enumerate(fields):
        for b in fields[i + 1 :]:
            pairs = {(getattr(c, a), getattr(c, b)) for c in all_captions()}
            assert {(getattr(c, a), getattr(c, b)) for c in train} == pairs, (a, b)
    with pytest.raises(ValueError, match="unknown split"):
        split_captions("test")


def test_samples_are_deterministic_and_follow_their_split() -> None:
    first, again = sample(3, "train", 7, 9, FPS, W, H), sample(3, "train", 7, 9, FPS, W, H)
    assert first.caption == again.caption and np.array_equal(first.video, again.video)
    assert first.video.shape == (9, H, W, 3) and first.video.dtype == np.uint8
    other = sample(3, "train", 8, 9, FPS, W, H)
    assert not np.array_equal(first.video, other.video)
    seen = {sample(i, "held-out", 0, 1, FPS, W, H).caption for i in range(len(held_out_captions()))}
    assert seen == held_out_captions()  # one pass over the split shows each caption once


def test_evaluation_cases_spread_over_their_split_not_a_prefix_of_one_colour() -> None:
    train = split_captions("train")
    assert {c.colour for c in train[:48]} != set(COLOURS)  # the grammar's order: a prefix is one or two colours
    cases = evaluation_captions("train", 48)
    assert len(set(cases)) == 48 and set(cases) <= set(train)
    for field, words in (("colour", COLOURS), ("shape", SHAPES), ("background", BACKGROUNDS), ("motion", MOTIONS)):
        assert {getattr(c, field) for c in cases} == set(words)
    assert evaluation_captions("train", len(train)) == train
    assert evaluation_captions("held-out", 2 * len(held_out_captions())) == [
        c for c in split_captions("held-out") for _ in range(2)]


@pytest.mark.parametrize("motion", [m for m in MOTIONS if m.startswith("moving")])
def test_objects_move_a_third_of_the_frame_a_second_and_stay_inside(motion: str) -> None:
    caption = Caption("red", "square", motion, "black")
    for seed in range(20):
        scene = sample_scene(caption, W, H, seed)
        x0, y0, size = scene_state(scene, 0.0, W, H)
        x1, y1, _ = scene_state(scene, 1.0, W, H)
        extent = W if motion in ("moving left", "moving right") else H
        travelled = abs(x1 - x0) + abs(y1 - y0)
        assert 0.28 * extent <= travelled <= 0.39 * extent  # no bounce in the first second
        for t in np.linspace(0, 20, 161):
            x, y, _ = scene_state(scene, float(t), W, H)
            assert size <= x <= W - size and size <= y <= H - size


def test_growing_objects_grow_then_oscillate() -> None:
    scene = sample_scene(Caption("blue", "circle", "growing", "white"), W, H, 1)
    sizes = [scene_state(scene, t, W, H)[2] for t in np.linspace(0, 8, 65)]
    assert sizes[8] > 1.3 * sizes[0]
    assert GROW_RANGE[0] * H <= min(sizes) and max(sizes) <= GROW_RANGE[1] * H
    assert np.sign(np.diff(sizes)).tolist().count(-1) > 10  # it shrinks again after its largest size


def test_the_simple_vision_reads_every_rendered_caption() -> None:
    for caption in all_captions():
        video = render_video(sample_scene(caption, W, H, 5), 3 * FPS + 1, FPS, W, H)
        assert read_video(video, FPS).caption() == caption, caption.text
        result = adherence(video, FPS, caption)
        assert (result.colour, result.shape, result.background, result.motion) == (True,) * 4
        assert result.motion_sustained == 1.0


def test_the_simple_vision_rejects_what_does_not_follow_the_caption() -> None:
    caption = Caption("red", "circle", "moving left", "black")
    still = np.repeat(render_video(sample_scene(caption, W, H, 0), 1, FPS, W, H), 9, axis=0)
    result = adherence(still, FPS, caption)
    assert (result.colour, result.shape, result.background, result.motion) == (True, True, True, False)
    noise = np.random.default_rng(0).integers(0, 256, (9, H, W, 3), dtype=np.uint8)
    assert not adherence(noise, FPS, caption).motion
    blank = np.zeros((9, H, W, 3), np.uint8)
    assert read_video(blank, FPS).caption() is None


def test_the_simple_vision_reads_the_object_past_a_decoder_s_stray_pixels() -> None:
    from magic141.toy_eval import read_frame

    for shape in ("circle", "square", "triangle"):
        caption = Caption("blue", shape, "standing still", "grey")
        frame = render_video(sample_scene(caption, W, H, 2), 1, FPS, W, H)[0].copy()
        frame[0, 0] = frame[H - 1, 0] = frame[0, W - 1] = (255, 0, 0)  # bright corner artefacts, apart from the object
        frame[H // 2, 2] = (0, 0, 255)
        seen = read_frame(frame)
        assert (seen.colour, seen.shape, seen.background) == ("blue", shape, "grey")


def test_general_metrics_on_known_videos() -> None:
    video = render_video(sample_scene(Caption("green", "triangle", "moving right", "grey"), W, H, 2), 17, FPS, W, H)
    still = np.repeat(video[:1], 17, axis=0)
    assert temporal_flicker(still) == 1.0 and motion_magnitude(still) == 0.0
    assert temporal_flicker(video) < 1.0 and motion_magnitude(video) > 0.005
    assert psnr(video[0], video[0]) == float("inf") and ssim(video[0], video[0]) == pytest.approx(1.0)
    noisy = np.clip(video[0].astype(int) + np.random.default_rng(1).normal(0, 8, video[0].shape), 0, 255).astype(np.uint8)
    assert 28 < psnr(noisy, video[0]) < 32 and ssim(noisy, video[0]) < 0.95
    jump = np.concatenate([video[:9], video[::-1][:8]])  # the second window restarts from the end
    assert seam_discontinuity(video, [9]) == pytest.approx(1.0, abs=0.2)
    assert seam_discontinuity(jump, [9]) > 3
    assert seam_discontinuity(video, []) is None
    metrics = video_metrics(video, video[0], [9]).to_dict()
    assert metrics["first_frame_psnr"] == 100.0 and set(metrics) == {
        "flicker", "motion", "first_frame_psnr", "first_frame_ssim", "seam"
    }
    with pytest.raises(ValueError, match="uint8"):
        temporal_flicker(video.astype(np.float32))

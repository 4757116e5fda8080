"""The shipped toy default: its videos follow held-out prompts, its prior draws what captions name, and the
evaluation command that measures both."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from magic141.toy_world import Caption, evaluation_captions, split_captions

MAGIC141 = [sys.executable, "-m", "flows.cli"]
# Floors under what the shipped weights score (BENCHMARKS.md, toy-world), well above chance (colour 1/4, shape
# 1/3, background 1/3, motion 1/7): a regression in the weights, the sampler or the conditioning fails them.
PRIOR_COLOUR_FLOOR = 0.75


def test_each_caption_word_is_scored_over_its_own_videos() -> None:
    from tasks.runtime.adherence import by_caption_part

    cases = [{"caption": "a red square moving left on a grey background", "shape": 0.0, "motion": 1.0},
             {"caption": "a red square growing on a black background", "shape": 1.0, "motion": 0.0},
             {"caption": "a blue circle moving left on a white background", "shape": 1.0, "motion": 1.0}]
    assert by_caption_part(cases, "shape") == {"circle": {"cases": 1, "score": 1.0}, "square": {"cases": 2, "score": 0.5}}
    assert by_caption_part(cases, "motion") == {"growing": {"cases": 1, "score": 0.0},
                                                "moving left": {"cases": 2, "score": 1.0}}


def test_the_evaluate_command_prints_a_table_writes_every_case_and_refuses_bad_settings(tmp_path: Path) -> None:
    out = tmp_path / "adherence.json"
    run = subprocess.run([*MAGIC141, "evaluate", "--preset", "tiny", "--count", "2", "--out", str(out)],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "colour" in run.stdout and "motion direction" in run.stdout
    result = json.loads(out.read_text())
    assert [case["caption"] for case in result["cases"]] == [c.text for c in evaluation_captions("held-out", 2)]
    assert result["settings"]["steps"] == 4 and result["model"]["preset"] == "tiny"
    assert set(result["summary"]) >= {"colour", "shape", "background", "motion", "first_frame_psnr", "flicker"}
    # Each word of the two captions, scored over its own videos: the split's means are their case-weighted means.
    for part, words in result["summary"]["by_caption_part"].items():
        assert sorted(words) == sorted({getattr(Caption.parse(case["caption"]), part) for case in result["cases"]})
        assert sum(word["cases"] for word in words.values()) == 2
        assert sum(word["score"] * word["cases"] for word in words.values()) == pytest.approx(2 * result["summary"][part])
    assert "by caption word" in run.stdout
    # A teacher is evaluated as it samples: true CFG against the empty prompt, at a guidance input of choice.
    guided = tmp_path / "guided.json"
    run = subprocess.run([*MAGIC141, "evaluate", "--preset", "tiny", "--count", "1", "--guidance", "2", "--true-cfg", "3",
                          "--out", str(guided)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    used = json.loads(guided.read_text())["settings"]
    assert used["guidance"] == 2 and used["true_cfg"] == 3 and "guidance 2, true CFG 3" in " ".join(run.stdout.split())
    case, plain = json.loads(guided.read_text())["cases"][0], result["cases"][0]  # the same caption, scene and noise
    assert (case["flicker"], case["motion_magnitude"]) != (plain["flicker"], plain["motion_magnitude"])
    for arguments, message in ((["--split", "test"], "unknown split 'test'; choose one of: held-out, train"),
                               (["--windows", "both"], "unknown window mode 'both'"),
                               (["--true-cfg", "0.5"], "true CFG must be >= 1 (1 disables it), got 0.5"),
                               (["--guidance", "-1"], "guidance must be a number >= 0, got -1.0"),
                               (["--count", "0"], "the case count must be >= 1, got 0")):
        bad = subprocess.run([*MAGIC141, "evaluate", "--preset", "tiny", *arguments], capture_output=True, text=True)
        assert bad.returncode == 2 and message in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


def test_the_shipped_default_keeps_a_user_image_its_colour_and_background_on_held_out_prompts() -> None:
    from magic141.pipeline import Magic141Pipeline
    from tasks.runtime.adherence import AdherenceSettings, evaluate_adherence

    pipeline = Magic141Pipeline.from_preset("toy")  # no weights given: the shipped toy weights
    assert pipeline.components.prompt_format == "magic141"
    summary = evaluate_adherence(pipeline, AdherenceSettings("held-out", count=12, seed=11))["summary"]
    # These 12 cases score colour 0.92, background 1.00, first-frame PSNR 23.2 dB (shape 0.42, motion 0.42);
    # random weights (tiny): colour 0, background 0.38, PSNR 6 dB. Shape and motion are not yet reliably above
    # chance on the world's jittered scenes (BENCHMARKS.md, toy-world); the direction test below holds motion.
    assert summary["colour"] >= 0.5 and summary["background"] >= 0.9, summary
    assert summary["first_frame_psnr"] >= 20.0, summary


def test_the_shipped_default_moves_one_user_image_the_way_each_direction_prompt_says() -> None:
    import PIL.Image

    from magic141.pipeline import Magic141Pipeline
    from magic141.sampler import SamplerConfig
    from magic141.toy_eval import adherence
    from magic141.toy_world import DIRECTIONS, SIZE_RANGE, Caption, Scene, render_frame
    from tasks.runtime.adherence import sample_video

    pipeline = Magic141Pipeline.from_preset("toy")
    preset = pipeline.preset
    steps, guidance = preset.sampling()
    sampler = SamplerConfig(steps=steps, guidance_scale=guidance, flow_shift=preset.flow_shift)
    # Held-out looks: a still image of the object in the middle of the frame, where any way fits a second of travel.
    # The prompt alone says where it goes.
    looks = sorted({(c.colour, c.shape, c.background) for c in split_captions("held-out") if c.motion in DIRECTIONS})
    right = 0
    for index, (colour, shape, background) in enumerate(looks[::3][:6]):
        size = sum(SIZE_RANGE) / 2 * min(preset.width, preset.height)
        still = Scene(Caption(colour, shape, "standing still", background), preset.width / 2, preset.height / 2, size, 0)
        image = PIL.Image.fromarray(render_frame(still, 0.0, preset.width, preset.height))
        for direction in DIRECTIONS:
            caption = Caption(colour, shape, direction, background)
            video, _ = sample_video(pipeline, image, caption.text, preset.window_frames, 100 + index, sampler, "chained")
            right += adherence(video, preset.fps, caption).motion
    # These 24 videos move the right way 24 times at the preset's guidance 2 (19 at guidance 3); with the weights
    # shipped before the I2V curriculum (which did not read the direction from the text), 2 times.
    assert right >= 15, right


def test_the_shipped_prior_draws_the_colour_and_background_a_held_out_caption_names() -> None:
    from magic141.prior import ImagePrior
    from magic141.toy_eval import read_frame

    prior = ImagePrior.from_preset("toy")
    captions = split_captions("held-out")[:16]
    readings = [read_frame(np.asarray(prior(c.text, seed=i).convert("RGB"))) for i, c in enumerate(captions)]
    background = np.mean([r.background == c.background for r, c in zip(readings, captions)])
    colour = np.mean([r.colour == c.colour for r, c in zip(readings, captions)])
    assert background >= 0.85 and colour >= PRIOR_COLOUR_FLOOR, (background, colour)

"""The shared training loop on a real stage at a tiny size: losses fall, resume is exact, DDP on Ray Train
matches one worker, and bad settings are refused before any compute."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import HunyuanVideoTransformer3DModel
from safetensors.torch import load_file

from magic141.training.clip import ClipStage
from magic141.training.loop import TrainingError, TrainSettings, read_losses
from magic141.training.ship import check, ship
from magic141.training.transformer import FlowTrainee
from magic141.utils import InputError
from magic141.weights import read_image_frames
from retrieval_index.embedder import EmbedderSpec, load_embedder
from retrieval_index.errors import RetrievalIndexError
from tasks.runtime.train_pool import train

TINY_CLIP = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": [48, 64], "patch_size": 16, "width": 32, "layers": 1, "head_width": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 16, "heads": 1, "layers": 1},
}


def _stage() -> ClipStage:
    return ClipStage(config=json.loads(json.dumps(TINY_CLIP)))


def _settings(out: Path, steps: int, **changes: object) -> TrainSettings:
    return TrainSettings(**{"out": out, "max_steps": steps, "batch_size": 16, "learning_rate": 3e-3,
                            "checkpoint_every": 3, "seed": 5, **changes})


def _weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(out / "final" / "open_clip_model.safetensors")


def test_a_run_writes_a_loadable_folder_a_loss_log_a_curve_and_its_loss_falls(tmp_path: Path) -> None:
    seen: list[int] = []
    result = train(_stage(), _settings(tmp_path / "run", 30), on_step=lambda step, total, loss: seen.append(step))
    assert seen == list(range(1, 31))
    losses = [entry["loss"] for entry in read_losses(tmp_path / "run")]
    assert len(losses) == 30 and sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5
    assert (tmp_path / "run" / "loss.png").stat().st_size > 1000
    assert result.final == tmp_path / "run" / "final"
    assert {p.name for p in result.final.iterdir()} == {"open_clip_config.json", "open_clip_model.safetensors"}
    assert len(list((tmp_path / "run" / "checkpoints").iterdir())) == 2  # the last two are kept
    (session,) = [json.loads(line) for line in (tmp_path / "run" / "sessions.jsonl").read_text().splitlines()]
    assert (session["from_step"], session["to_step"], session["workers"], session["seed"]) == (0, 30, 1, 5)
    shipped = ship([tmp_path / "run"], tmp_path / "shipped")
    assert set(shipped["files"]) == {"clip/open_clip_config.json", "clip/open_clip_model.safetensors", "curves/clip.png"}
    assert shipped["stages"]["clip"]["sessions"] == [session] and check(tmp_path / "shipped") == []
    (tmp_path / "shipped" / "clip" / "open_clip_config.json").write_text("{}")
    assert check(tmp_path / "shipped") == ["clip/open_clip_config.json"]
    recorded = ship([tmp_path / "run"], tmp_path / "recorded", record_only=frozenset({"clip"}))
    assert recorded["files"] == {} and recorded["stages"]["clip"]["sessions"] == [session]  # provenance, no weights
    embedder = load_embedder(EmbedderSpec(str(result.final)), "cpu")  # the retrieval index loads the folder as it is
    frame = PIL.Image.fromarray(np.zeros((48, 64, 3), np.uint8))
    assert embedder.embed_images([frame]).shape == embedder.embed_texts(["a red circle"]).shape == (1, 16)
    assert embedder.model_id.startswith("open_clip:final@")
    with pytest.raises(RetrievalIndexError, match="holds its own weights and takes no weights file"):
        EmbedderSpec(str(result.final), "w.safetensors").check()


def test_a_description_targets_the_frames_it_fits_and_frames_of_its_object_on_another_background_less() -> None:
    from magic141.training.clip import OBJECT_CREDIT, contrastive_targets

    # Each row: a frame's colour, shape and background, and whether its description names the background.
    words = torch.tensor([[0, 0, 0, 1],  # a red circle on black, "a red circle on a black background"
                          [0, 0, 1, 0],  # a red circle on white, "a red circle"
                          [0, 1, 1, 1],  # a red square on white, "a red square on a white background"
                          [0, 0, 2, 1]])  # a red circle on grey, "a red circle on a grey background"
    c = OBJECT_CREDIT
    targets, full = contrastive_targets(words)
    assert torch.equal(targets, torch.tensor([[1, 1, 0, c], [c, 1, 0, c], [0, 0, 1, 0], [c, 1, 0, 1]]))
    assert torch.equal(full, targets == 1) and 0 < c < 1


class _Killed(Exception):
    pass


def _die_at(step: int):
    def on_step(done: int, total: int, loss: float) -> None:
        if done == step:
            raise _Killed

    return on_step


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_resume_continues_exactly_where_the_run_stopped(tmp_path: Path, schedule: str) -> None:
    options = {"schedule": schedule, "warmup_steps": 2}
    train(_stage(), _settings(tmp_path / "whole", 8, **options))
    with pytest.raises(_Killed):  # dies after step 5's log line; its last checkpoint is step 3's
        train(_stage(), _settings(tmp_path / "parts", 8, **options), on_step=_die_at(5))
    assert len(read_losses(tmp_path / "parts")) == 5 and not (tmp_path / "parts" / "final").exists()
    train(_stage(), _settings(tmp_path / "parts", 8, resume=True, **options))
    assert read_losses(tmp_path / "parts") == read_losses(tmp_path / "whole")
    whole, parts = _weights(tmp_path / "whole"), _weights(tmp_path / "parts")
    assert all(torch.equal(whole[key], parts[key]) for key in whole)
    if schedule == "cosine":  # the schedule ends where it was planned: a longer run is another run
        with pytest.raises(TrainingError, match="holds another run \\(identity differs: max_steps 8 there, 9 here"):
            train(_stage(), _settings(tmp_path / "parts", 9, resume=True, **options))

def test_a_bfloat16_run_trains_under_autocast_resumes_exactly_and_keeps_float32_weights(tmp_path: Path) -> None:
    from magic141.presets import get_preset
    from magic141.training.vae import VaeStage

    preset = get_preset("tiny")
    stage = VaeStage(preset.vae, preset.width, preset.height, preset.fps)
    options = {"batch_size": 2, "checkpoint_every": 2, "precision": "bfloat16"}
    train(stage, _settings(tmp_path / "whole", 6, **options))
    with pytest.raises(_Killed):
        train(stage, _settings(tmp_path / "parts", 6, **options), on_step=_die_at(3))
    train(stage, _settings(tmp_path / "parts", 6, resume=True, **options))
    assert read_losses(tmp_path / "parts") == read_losses(tmp_path / "whole")
    train(stage, _settings(tmp_path / "float32", 6, batch_size=2, checkpoint_every=2))
    bf16 = [entry["loss"] for entry in read_losses(tmp_path / "whole")]
    fp32 = [entry["loss"] for entry in read_losses(tmp_path / "float32")]
    # The same first step, its forward rounded to bfloat16; the runs part after it.
    assert bf16 != fp32 and bf16[0] == pytest.approx(fp32[0], rel=0.01)
    weights = load_file(tmp_path / "whole" / "final" / "diffusion_pytorch_model.safetensors")
    assert {tensor.dtype for tensor in weights.values()} == {torch.float32}
    with pytest.raises(TrainingError, match="identity differs: precision 'bfloat16' there, None here"):
        train(stage, _settings(tmp_path / "whole", 8, batch_size=2, checkpoint_every=2, resume=True))
    with pytest.raises(TrainingError, match="unknown precision 'float16'; choose one of: float32, bfloat16, auto"):
        _settings(tmp_path / "other", 4, precision="float16")


@pytest.mark.parametrize("native", [True, False])
def test_auto_precision_is_bfloat16_only_where_the_hardware_computes_it(tmp_path: Path, monkeypatch, native: bool) -> None:
    import magic141.training.loop as loop

    # A CPU without AVX512-BF16 or AMX emulates bfloat16: a toy VAE step took 19 s there against 0.7 s in float32.
    monkeypatch.setattr(loop, "native_bfloat16", lambda: native)
    picked = _settings(tmp_path, 4, precision="auto")
    explicit = _settings(tmp_path, 4, precision="bfloat16" if native else "float32")
    assert picked.precision == explicit.precision == ("bfloat16" if native else "float32")
    assert picked.identity() == explicit.identity(), "a run records the precision auto picked, and resumes as it"



def test_a_stage_described_by_tuples_resumes(tmp_path: Path) -> None:
    """run.json stores a preset's tuples as lists; the resumed run must still recognise its own folder."""
    from magic141.presets import get_preset
    from magic141.training.vae import VaeStage

    preset = get_preset("tiny")
    stage = VaeStage(preset.vae, preset.width, preset.height, preset.fps)
    assert isinstance(stage.describe()["vae"]["block_out_channels"], tuple)
    with pytest.raises(_Killed):
        train(stage, _settings(tmp_path / "vae", 4, batch_size=2, checkpoint_every=2), on_step=_die_at(3))
    result = train(stage, _settings(tmp_path / "vae", 4, batch_size=2, checkpoint_every=2, resume=True))
    assert len(result.losses) == 4 and (tmp_path / "vae" / "final" / "config.json").is_file()


def test_two_ray_train_workers_follow_the_loss_curve_of_one(tmp_path: Path) -> None:
    one = train(_stage(), _settings(tmp_path / "one", 4))
    seen: list[int] = []
    two = train(_stage(), _settings(tmp_path / "two", 4, workers=2), on_step=lambda step, total, loss: seen.append(step))
    assert seen == [1, 2, 3, 4]
    assert two.losses == pytest.approx(one.losses, rel=1e-4, abs=1e-5)
    first, second = _weights(tmp_path / "one"), _weights(tmp_path / "two")
    worst = max(float((first[key] - second[key]).abs().max()) for key in first)
    assert worst < 0.5 * 3e-3, worst  # float noise on near-zero gradients, scaled up by Adam to under half a step


def test_bad_settings_and_folders_are_refused_before_any_compute(tmp_path: Path) -> None:
    with pytest.raises(TrainingError, match="--max-steps must be >= 1, got 0"):
        _settings(tmp_path / "a", 0)
    with pytest.raises(TrainingError, match="does not split evenly over 3 workers"):
        _settings(tmp_path / "a", 1, workers=3)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine\n")
    with pytest.raises(TrainingError, match="is not empty and holds no training run"):
        train(_stage(), _settings(tmp_path / "busy", 1))
    with pytest.raises(TrainingError, match="holds no run to resume"):
        train(_stage(), _settings(tmp_path / "new", 1, resume=True))
    train(_stage(), _settings(tmp_path / "done", 1))
    with pytest.raises(TrainingError, match="already holds a run; pass --resume"):
        train(_stage(), _settings(tmp_path / "done", 2))
    with pytest.raises(TrainingError, match="holds another run \\(identity differs: seed 5 there, 6 here\\)"):
        train(_stage(), _settings(tmp_path / "done", 2, seed=6, resume=True))
    assert not (tmp_path / "new").exists() and not (tmp_path / "busy" / "run.json").exists()


@pytest.fixture(scope="module")
def latent_cache(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    from magic141.presets import get_preset
    from magic141.training.transformer import build_cache, cache_path, encoders

    components = encoders(get_preset("tiny"), None)
    path, fingerprint = cache_path(tmp_path_factory.mktemp("cache"), components, get_preset("tiny"), 8, 0)
    return build_cache(components, get_preset("tiny"), 8, 0, path), fingerprint


def test_the_t2v_teacher_learns_and_its_i2v_widening_starts_where_it_stopped(latent_cache, tmp_path: Path) -> None:
    from magic141.presets import get_preset
    from magic141.training.transformer import TransformerStage

    path, fingerprint = latent_cache
    t2v = TransformerStage(get_preset("tiny"), "t2v", path, fingerprint)
    settings = _settings(tmp_path / "t2v", 40, batch_size=8, learning_rate=2e-3, checkpoint_every=20)
    result = train(t2v, settings, dataset_size=8)
    assert sum(result.losses[-8:]) / 8 < 0.8 * sum(result.losses[:8]) / 8
    i2v = TransformerStage(get_preset("tiny"), "i2v", path, fingerprint, init=result.final, image_frames="every")
    assert i2v.describe() != dataclasses.replace(i2v, image_frames="first").describe(), "another layout, another run"
    trainee = i2v.build(0)
    assert trainee.transformer.config.in_channels == 2 * 16 + 1
    # Copy and zero init: before any I2V step, the widened model reads the image channels as nothing, so on
    # the same noisy latents and text it predicts what the T2V teacher predicts.
    teacher = FlowTrainee(HunyuanVideoTransformer3DModel.from_pretrained(str(result.final)))
    plain = t2v.batch(0, 0, range(4))
    widened = dataclasses.replace(plain, hidden=i2v.batch(0, 0, range(4)).hidden)
    assert widened.hidden.shape[1] == 33 and widened.hidden[:, 32].abs().sum() > 0  # the mask channel is set
    given = widened.hidden[:, 32, 0].flatten(1).amax(1) > 0
    image = widened.hidden[given, 16:32]
    assert torch.equal(image, image[:, :, :1].expand_as(image)), "every latent frame holds the first-frame latent"
    with torch.no_grad():
        assert float(trainee(widened)) == pytest.approx(float(teacher(plain)), rel=1e-5)
    i2v_result = train(i2v, _settings(tmp_path / "i2v", 10, batch_size=8, learning_rate=2e-3), dataset_size=8)
    assert len(i2v_result.losses) == 10
    ship([tmp_path / "i2v"], tmp_path / "shipped", half=frozenset({"i2v"}))
    for folder in (i2v_result.final, tmp_path / "shipped" / "i2v"):
        assert read_image_frames(folder / "transformer") == "every", "the weights declare the layout they learnt"
    # Shipped in half precision is what the stage trained; the VAE beside it stays as its latent cache saw it.
    weights = "diffusion_pytorch_model.safetensors"
    assert {v.dtype for v in load_file(tmp_path / "shipped" / "i2v" / "transformer" / weights).values()} == {torch.float16}
    vae, shipped_vae = load_file(i2v_result.final / "vae" / weights), load_file(tmp_path / "shipped" / "vae" / weights)
    assert vae.keys() == shipped_vae.keys() and all(torch.equal(vae[k], shipped_vae[k]) for k in vae)


def test_the_teachers_see_windows_from_later_in_their_videos_and_i2v_windows_without_an_image(latent_cache) -> None:
    from magic141.presets import get_preset
    from magic141.toy_world import split_captions
    from magic141.training.transformer import IMAGE_DROPOUT, LATER_WINDOWS, TransformerStage, cache_window

    preset = get_preset("toy")
    windows = [cache_window(preset, split_captions("train"), 0, index) for index in range(64)]
    later = [not np.array_equal(video[0], first) for _, video, first in windows]
    # Chained windows start from a later frame and parallel ones cover later latents: both must be in training.
    assert abs(np.mean(later) - LATER_WINDOWS) < 0.2 and all(video.shape == (17, 48, 64, 3) for _, video, _ in windows)
    assert all(first.shape == (48, 64, 3) and first.dtype == np.uint8 for _, _, first in windows)
    path, fingerprint = latent_cache
    stage = TransformerStage(get_preset("tiny"), "i2v", path, fingerprint)
    hidden = torch.cat([stage.batch(0, step, range(8)).hidden for step in range(40)])
    masked = hidden[:, 32, 0].flatten(1).amax(1)  # the mask channel at the first latent frame
    image = hidden[:, 16:32].flatten(1).abs().amax(1)
    # Parallel windows after the first see no first-frame latent (zero image channels and mask), as here.
    assert abs(float((masked == 0).float().mean()) - IMAGE_DROPOUT) < 0.06
    assert torch.equal(masked == 0, image == 0)


def test_the_i2v_teacher_starts_on_plain_windows_of_one_object_then_of_every_object(latent_cache, tmp_path: Path) -> None:
    import magic141.training.transformer as transformer_module
    from magic141.presets import get_preset
    from magic141.toy_world import DIRECTIONS, SIZE_RANGE, SPEED, Caption, sample_scene, split_captions
    from magic141.training.loop import sample_rng
    from magic141.training.transformer import (
        PLAIN_CAPTIONS,
        TransformerStage,
        build_cache,
        cache_path,
        encoders,
        plain_window,
    )

    # One training combination, each of the four directions: nothing of it is held out.
    assert {c.motion for c in PLAIN_CAPTIONS} == set(DIRECTIONS) and set(PLAIN_CAPTIONS) <= set(split_captions("train"))
    assert len({(c.colour, c.shape, c.background) for c in PLAIN_CAPTIONS}) == 1
    preset = get_preset("toy")
    scenes = [sample_scene(PLAIN_CAPTIONS[0], 64, 48, seed, jitter=False) for seed in range(5)]
    assert {s.size for s in scenes} == {sum(SIZE_RANGE) / 2 * 48} and {s.speed for s in scenes} == {SPEED * 64}
    assert len({(s.x, s.y) for s in scenes}) == 5  # only where it starts varies
    jittered = Caption("blue", "square", "moving up", "grey")
    assert len({sample_scene(jittered, 64, 48, seed).speed for seed in range(5)}) == 5
    windows = [plain_window(preset, 0, index) for index in range(200)]
    assert {caption for caption, _, _ in windows[::2]} == set(PLAIN_CAPTIONS)
    others = {caption for caption, _, _ in windows[1::2]}
    assert len({(c.colour, c.shape, c.background) for c in others}) > 20 and others <= set(split_captions("train"))
    for caption, video, first in windows[:8]:
        assert np.array_equal(video[0], first) and video.shape == (17, 48, 64, 3)
        mask = np.abs(video.astype(int) - video[-1, 0, 0]).sum(-1) > 60  # the object: far from the background
        centres = [np.argwhere(m).mean(0)[::-1] for m in mask[:8]]  # (x, y) over the first second
        assert np.sign(np.round(centres[-1] - centres[0])).tolist() == list(DIRECTIONS[caption.motion])
    # Of 4 plain steps, the first 2 read the plain cache's one object (even rows), the next 2 every object (odd
    # rows); then the world's. A run of other plain steps is another run, which --resume refuses.
    tiny = get_preset("tiny")
    world, fingerprint = latent_cache
    components = encoders(tiny, None)
    plain, plain_fingerprint = cache_path(tmp_path, components, tiny, 8, 0, plain=True)
    assert plain_fingerprint != fingerprint
    # Windows drawn another way make another cache: its key names their recipe and their video geometry.
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(transformer_module, "LATER_WINDOWS", 0.5)
        assert cache_path(tmp_path, components, tiny, 8, 0)[1] != fingerprint
    for other in (tiny.replace(width=96), tiny.replace(fps=8), tiny.replace(window_latent_frames=5)):
        assert cache_path(tmp_path, components, other, 8, 0)[1] != fingerprint
    build_cache(components, tiny, 8, 0, plain, plain=True)
    stage = TransformerStage(tiny, "i2v", world, fingerprint, plain=plain, plain_fingerprint=plain_fingerprint, plain_steps=4)
    for step, (source, parity) in enumerate([(plain, 0), (plain, 0), (plain, 1), (plain, 1), (world, None), (world, None)]):
        latents = load_file(source)["latents"]
        targets = stage.batch(0, step, range(8)).target
        for index, target in enumerate(targets):
            row = index if parity is None else 2 * (index % 4) + parity
            noise = torch.randn(latents[row].shape, generator=sample_rng(0, step, index))
            assert torch.equal(target, noise - latents[row])
    bare = TransformerStage(tiny, "i2v", world, fingerprint)
    assert stage.describe() != dataclasses.replace(stage, plain_steps=6).describe() != bare.describe()
    with pytest.raises(InputError, match="the T2V stage takes none"):
        TransformerStage(tiny, "t2v", world, fingerprint, plain=plain, plain_steps=2)


def test_the_toy_tokenizers_read_the_grammar_word_by_word_and_any_other_text_byte_by_byte(tmp_path: Path) -> None:
    from transformers import AutoTokenizer, CLIPTokenizer

    from magic141.components import build_i2v_components
    from magic141.presets import get_preset
    from magic141.toy_world import all_captions

    components = build_i2v_components(get_preset("toy"))
    for tokenizer in (components.tokenizer, components.tokenizer_2):
        for caption in all_captions():
            pieces = tokenizer.tokenize(caption.text)
            assert [piece.removeprefix("Ġ").removesuffix("</w>") for piece in pieces] == caption.text.split()
        # A word outside the grammar is spelled out, never sent to an unknown token that other words share.
        pieces = tokenizer.tokenize("a purple circle")
        assert len(pieces) > 3 and tokenizer.unk_token not in pieces
    again = build_i2v_components(get_preset("toy"))  # the merges, and so the token ids, are the same every build
    assert again.tokenizer.get_vocab() == components.tokenizer.get_vocab()
    assert again.tokenizer_2.get_vocab() == components.tokenizer_2.get_vocab()
    components.tokenizer.save_pretrained(tmp_path / "llama")
    components.tokenizer_2.save_pretrained(tmp_path / "clip")
    text = "a green triangle moving up on a grey background"
    assert AutoTokenizer.from_pretrained(tmp_path / "llama")(text).input_ids == components.tokenizer(text).input_ids
    assert CLIPTokenizer.from_pretrained(tmp_path / "clip")(text).input_ids == components.tokenizer_2(text).input_ids
    # The tiny preset keeps byte tokens: its tokenizers learn no merges.
    assert len(build_i2v_components(get_preset("tiny")).tokenizer.tokenize("a red")) == 5


def test_the_toy_text_encoders_speak_at_the_image_tokens_scale_and_stay_put_when_the_transformer_changes() -> None:
    from magic141.components import build_i2v_components, fingerprint_modules
    from magic141.presets import get_preset
    from magic141.prompt_encoding import vlm_image_tokens
    from magic141.toy_world import Caption, render_frame, sample_scene
    from magic141.training.transformer import encode_text

    preset = get_preset("toy")
    components = build_i2v_components(preset)
    captions = ["a red circle moving left on a black background", "a blue square growing on a white background"]
    states, mask, _ = encode_text(components, captions, preset.text.max_sequence_length)
    frame = render_frame(sample_scene(Caption.parse(captions[0]), 64, 48, 0), 0.0, 64, 48)
    tokens = vlm_image_tokens(components, PIL.Image.fromarray(frame), torch.device("cpu"))
    # The transformer reads both side by side: a caption as loud as the image beside it (at the 0.02 that
    # transformers draws, its states were 50 times quieter and the trained transformer ignored them).
    assert 1 / 3 < float(states[mask.bool()].std()) / float(tokens.std()) < 3
    quiet = build_i2v_components(preset.replace(text=dataclasses.replace(preset.text, llm_embedding_std=0.02)))
    loud, base = components.text_encoder.state_dict(), quiet.text_encoder.state_dict()
    changed = [name for name in loud if not torch.equal(loud[name], base[name])]
    assert changed == ["model.language_model.embed_tokens.weight"]
    assert torch.allclose(loud[changed[0]], 50 * base[changed[0]])
    # The VAE and text encoders (and every latent cache keyed by them) do not depend on the transformer's size.
    deeper = build_i2v_components(preset.replace(transformer=dataclasses.replace(preset.transformer, num_layers=3)))
    encoders = ("vae", "text_encoder", "text_encoder_2")
    assert fingerprint_modules({k: getattr(deeper, k) for k in encoders}) == fingerprint_modules(
        {k: getattr(components, k) for k in encoders})


def test_the_train_command_trains_resumes_records_its_command_and_refuses_bad_settings(tmp_path: Path) -> None:
    import subprocess
    import sys

    # A constant learning rate lets a run go on past its max steps (a cosine schedule's run is another one).
    magic141 = [sys.executable, "-m", "flows.cli", "train", "clip", "--schedule", "constant", "--warmup-steps", "0"]
    out = tmp_path / "clip"
    first = subprocess.run([*magic141, "--out", str(out), "--max-steps", "2", "--batch-size", "8", "--json"],
                           capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["steps"] == 2 and (out / "final" / "open_clip_model.safetensors").is_file()
    again = subprocess.run([*magic141, "--out", str(out), "--max-steps", "3", "--batch-size", "8"],
                           capture_output=True, text=True)
    assert again.returncode == 2 and again.stderr.strip() == (
        f"magic141: error: --out {out} already holds a run; pass --resume to continue it or choose a new folder"
    )
    resumed = subprocess.run([*magic141, "--out", str(out), "--max-steps", "3", "--batch-size", "8", "--resume",
                              "--json"], capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    sessions = [json.loads(line) for line in (out / "sessions.jsonl").read_text().splitlines()]
    assert [(s["from_step"], s["to_step"]) for s in sessions] == [(0, 2), (2, 3)]
    assert sessions[1]["command"][:3] == ["magic141", "train", "clip"] and "--resume" in sessions[1]["command"]
    other = subprocess.run([*magic141, "--out", str(out), "--max-steps", "4", "--batch-size", "8", "--resume",
                            "--seed", "1"], capture_output=True, text=True)
    assert other.returncode == 2 and other.stderr.strip() == (  # one line, before any progress is drawn
        f"magic141: error: --out {out} holds another run (identity differs: seed 0 there, 1 here); "
        "choose a new folder or the settings of that run"
    )
    bad = subprocess.run([*magic141, "--out", str(tmp_path / "x"), "--max-steps", "0"], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.strip() == "magic141: error: --max-steps must be >= 1, got 0"
    assert not (tmp_path / "x").exists()


def test_the_training_flow_trains_keeps_finished_stages_and_ships_them(prefect_api, tmp_path: Path,
                                                                      monkeypatch) -> None:
    from flows.train import train_toy_world
    from tasks.runtime.training import DEFAULTS

    # A constant learning rate lets a run go on past its max steps (a cosine schedule's run is another one).
    monkeypatch.setitem(DEFAULTS, "clip", dataclasses.replace(DEFAULTS["clip"], schedule="constant", warmup_steps=0))
    out, shipped = tmp_path / "train", tmp_path / "weights"
    (first,) = train_toy_world(str(out), ["clip"], {"clip": 2}, ship_to=str(shipped))
    assert first.trained and first.steps == 2 and (out / "clip" / "final").is_dir()
    assert check(shipped) == [] and (shipped / "clip" / "open_clip_model.safetensors").is_file()
    (again,) = train_toy_world(str(out), ["clip"], {"clip": 2})
    assert not again.trained and again.last_loss == first.last_loss
    (longer,) = train_toy_world(str(out), ["clip"], {"clip": 3})  # an unfinished run resumes
    assert longer.trained and len(read_losses(out / "clip")) == 3
    with pytest.raises(ValueError, match="unknown training stage\\(s\\) dit"):
        train_toy_world(str(out), ["dit"])


SHIPPED = Path(__file__).resolve().parent.parent / "magic141" / "toy_weights"


def test_the_shipped_weights_match_their_manifest_and_the_clip_finds_what_queries_name(tmp_path: Path) -> None:
    from magic141.toy_world import write_corpus
    from magic141.training.evaluate import retrieval_queries, retrieval_recall
    from retrieval_index import build_index

    assert check(SHIPPED) == []
    manifest = json.loads((SHIPPED / "MANIFEST.json").read_text())
    assert manifest["total_bytes"] <= 30e6
    write_corpus(tmp_path / "corpus", 150, "held-out", seed=2)
    build_index([tmp_path / "corpus"], tmp_path / "index", EmbedderSpec(str(SHIPPED / "clip")))
    recall = retrieval_recall(tmp_path / "index", retrieval_queries())
    assert recall["colour"] >= 0.95 and recall["colour_and_shape"] >= 0.9, recall  # random CLIP: 0.38 and 0.08


def test_the_prior_trains_its_autoencoder_then_its_unet_and_saves_a_pipeline_the_pipeline_loads(tmp_path: Path) -> None:
    from magic141.presets import get_preset
    from magic141.prior import ImagePrior
    from magic141.training.prior import PriorStage

    stage = PriorStage(get_preset("tiny"), autoencoder_steps=24)
    result = train(stage, _settings(tmp_path / "prior", 30, batch_size=8, learning_rate=2e-3))
    logged = read_losses(tmp_path / "prior")
    autoencoder, unet = result.losses[:24], result.losses[24:]
    assert all("psnr" in entry for entry in logged[:24]) and not any("psnr" in entry for entry in logged[24:])
    assert len(autoencoder) == 24 and sum(unet[-3:]) < 0.85 * sum(unet[:3])
    prior = ImagePrior.from_pretrained(result.final, "tiny")
    untrained = stage.build(5)  # the run's initial weights (seed 5)
    frames = untrained.scale_pixels[:16]

    def error(vae: torch.nn.Module) -> float:
        with torch.no_grad():
            return float(torch.nn.functional.mse_loss(vae.decode(vae.encode(frames).latent_dist.mean).sample, frames))

    assert error(prior.pipeline.vae) < 0.7 * error(untrained.vae)  # held-aside frames, not a training batch
    scale = prior.pipeline.vae.config.scaling_factor
    assert scale != pytest.approx(0.18215) and scale > 0  # measured on the trained autoencoder's latents
    assert prior("a red circle moving left on a black background", seed=1).size == (64, 48)

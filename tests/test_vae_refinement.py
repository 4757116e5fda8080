"""The VAE's decoder refinement (``train vae --refine``): it trains the decoder alone, on the student's samples
of training windows, so the latents, the caches and the transformers trained on them stay valid; its loss terms
by hand; the stray-blob count of the VAE evaluation; and how a refined VAE ships beside the transformers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKLHunyuanVideo
from safetensors.torch import load_file

from magic141.components import build_i2v_components, build_transformer, vae_encoder_fingerprint
from magic141.presets import get_preset
from magic141.toy_world import split_captions
from magic141.training.evaluate import stray_pixels
from magic141.training.loop import TrainingError, TrainSettings, read_losses
from magic141.training.ship import check, ship
from magic141.training.transformer import cache_window
from magic141.training.vae import DecoderStage, VaeStage, VaeTrainee, refinement_errors, refinement_stage
from magic141.utils import InputError
from magic141.weights import save_i2v_components
from tasks.runtime.train_pool import train

TINY = get_preset("tiny")
SHORT = TINY.replace(window_latent_frames=2)  # windows of 5 frames: a refinement step decodes a seventh of tiny's
WINDOWS = 8  # the refinement's latent cache


def _settings(out: Path, steps: int, **changes: object) -> TrainSettings:
    return TrainSettings(**{"out": out, "max_steps": steps, "batch_size": 2, "learning_rate": 3e-3,
                            "checkpoint_every": 2, **changes})


def _base(out: Path, seed: int = 0) -> Path:
    # 8 steps: after 2 the decoder is so far from any frame that 16 refinement steps' held-out gain is noise.
    train(VaeStage(TINY.vae, TINY.width, TINY.height, TINY.fps), _settings(out, 8, seed=seed))
    return out


def _student(vae_folder: Path, out: Path) -> Path:
    """A tiny I2V weights folder (seeded transformer) around the VAE of ``vae_folder``: the student it decodes."""
    components = build_i2v_components(TINY)
    components.vae = AutoencoderKLHunyuanVideo.from_pretrained(str(vae_folder))
    components.prompt_format = "magic141"
    return save_i2v_components(components, out)


def _refined(base: Path, student: Path, cache_dir: Path, seed: int = 0) -> DecoderStage:
    return refinement_stage(SHORT, base / "final", student, cache_dir, WINDOWS, seed)


def _load(folder: Path) -> AutoencoderKLHunyuanVideo:
    return AutoencoderKLHunyuanVideo.from_pretrained(str(folder))


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path, Path]:
    """The base VAE's run, the student's weights folder, the refinement's run and its cache folder."""
    root = tmp_path_factory.mktemp("vae")
    base = _base(root / "vae")
    student = _student(base / "final", root / "student")
    train(_refined(base, student, root / "cache"), _settings(root / "vae-decoder", 16, learning_rate=2e-3, checkpoint_every=4),
          dataset_size=WINDOWS)
    return base, student, root / "vae-decoder", root / "cache"


def test_the_refinement_trains_the_decoder_alone_so_the_latents_and_their_caches_stay_valid(runs, tmp_path: Path) -> None:
    from magic141.training.transformer import cache_path, encoders

    base, student, refined, cache = runs
    before, after = _load(base / "final"), _load(refined / "final")
    for part in ("encoder", "quant_conv"):
        first, second = getattr(before, part).state_dict(), getattr(after, part).state_dict()
        assert all(torch.equal(first[key], second[key]) for key in first)
    assert any(not torch.equal(before.decoder.state_dict()[key], value) for key, value in after.decoder.state_dict().items())
    assert after.config.scaling_factor == before.config.scaling_factor
    assert vae_encoder_fingerprint(after) == vae_encoder_fingerprint(before)
    # The transformers' latent cache of the refined VAE is the base's: nothing downstream is retrained.
    assert cache_path(tmp_path, encoders(TINY, base / "final"), TINY, 8, 0) == \
        cache_path(tmp_path, encoders(TINY, refined / "final"), TINY, 8, 0)
    # Its loss falls on the student's samples of windows it never trained on (another seed's cache).
    held_out = _refined(base, student, cache, seed=1)
    with torch.no_grad():
        losses = [sum(float(VaeTrainee(vae, decoder_only=True)(held_out.batch(99, step, [2 * step, 2 * step + 1]))[0])
                      for step in range(2)) for vae in (before, after)]
    assert losses[1] < 0.95 * losses[0], losses
    assert len(read_losses(refined)) == 16


def test_the_decoder_reads_the_students_samples_of_the_windows_whose_frames_it_is_matched_with(runs) -> None:
    base, student, _, cache = runs
    stage = _refined(base, student, cache)
    batch = stage.batch(3, 1, [0, 1, 5])
    assert torch.equal(batch.latents, stage.batch(3, 1, [0, 1, 5]).latents)  # drawn from the per-sample generators
    assert not torch.equal(batch.latents[0], stage.batch(3, 2, [0]).latents[0])  # and drawn anew every step
    windows = [cache_window(SHORT, split_captions("train"), 0, index)[1] for index in (0, 1, 5)]
    assert torch.equal(batch.pixels, torch.from_numpy(np.stack(windows)).permute(0, 4, 1, 2, 3).float() / 127.5 - 1)
    # The cache's latents are the encoder's of exactly those frames: the target is the window that was sampled.
    scale = stage.scaling_factor
    cached = load_file(str(stage.cache))
    with torch.no_grad():
        encoded = _load(base / "final").encode(batch.pixels).latent_dist.mean
    assert torch.allclose(encoded * scale, cached["latents"][[0, 1, 5]], atol=1e-4)
    # The student sampled every latent frame but the first, which is the image's where the image was given.
    assert batch.latents.shape == encoded.shape
    assert not torch.allclose(batch.latents[:, :, 1:], encoded[:, :, 1:], atol=1e-2)
    anchored = [torch.equal(batch.latents[i, :, :1], cached["first_latents"][index] / scale)
                for i, index in enumerate((0, 1, 5))]
    assert any(anchored), "no window kept its image's first latent frame"


def test_a_resumed_refinement_ends_where_the_uninterrupted_run_does(runs, tmp_path: Path) -> None:
    base, student, refined, cache = runs

    class Killed(Exception):
        pass

    def die_at_10(step: int, total: int, loss: float) -> None:
        if step == 10:
            raise Killed

    settings = _settings(tmp_path / "parts", 16, learning_rate=2e-3, checkpoint_every=4)
    with pytest.raises(Killed):
        train(_refined(base, student, cache), settings, on_step=die_at_10, dataset_size=WINDOWS)
    train(_refined(base, student, cache), _settings(tmp_path / "parts", 16, learning_rate=2e-3, checkpoint_every=4,
                                                    resume=True), dataset_size=WINDOWS)
    whole, parts = _load(refined / "final").state_dict(), _load(tmp_path / "parts" / "final").state_dict()
    assert all(torch.equal(whole[key], parts[key]) for key in whole)


def test_a_vae_or_student_that_does_not_fit_is_refused_before_any_compute(runs, tmp_path: Path) -> None:
    base, student, _, _ = runs
    toy = get_preset("toy")
    with pytest.raises(InputError, match="is a VAE of another geometry \\(block_out_channels, spatial_compression_ratio"):
        refinement_stage(toy, base / "final", student, tmp_path / "cache", WINDOWS, 0)
    other = _student(_base(tmp_path / "other", seed=1) / "final", tmp_path / "other-student")
    with pytest.raises(InputError, match=f"--student {other} samples the latents of another VAE encoder than --refine"):
        refinement_stage(TINY, base / "final", other, tmp_path / "cache", WINDOWS, 0)
    text_to_video = tmp_path / "t2v"
    build_transformer(TINY.transformer, TINY.text, image_condition=False).save_pretrained(text_to_video)
    with pytest.raises(InputError, match="is a text-to-video transformer; pass the image-to-video student"):
        refinement_stage(TINY, base / "final", text_to_video, tmp_path / "cache", WINDOWS, 0)
    with pytest.raises(TrainingError, match=f"--student {tmp_path} holds no transformer"):
        refinement_stage(TINY, base / "final", tmp_path, tmp_path / "cache", WINDOWS, 0)
    assert not (tmp_path / "cache").exists()  # no latent cache was encoded


def test_the_refinement_terms_by_hand() -> None:
    pixels = -torch.ones(1, 3, 1, 7, 7)
    pixels[..., 3, 3] = 1.0  # the object: one pixel in the middle
    decoded = pixels.clone()
    decoded[0, 0, 0, 3, 5] += 0.5  # two pixels right of the object: in its ring
    decoded[0, :, 0, 0, 0] += 1.0  # the far corner, every channel: the worst background pixel
    ring, tail = refinement_errors(decoded, pixels)
    # The ring: the 5 x 5 pixels around the object less the object, 24 pixels of 3 channels; |0.5| + 0.5 ** 2.
    assert float(ring) == pytest.approx(0.75 / 72)
    # The tail: the worst 1% (at least one) of the 24 background pixels beyond the ring, channels summed: 3 x (1 + 1).
    assert float(tail) == pytest.approx(6.0)


def test_stray_pixels_count_what_the_decoder_draws_away_from_the_object() -> None:
    rendered = np.full((20, 20, 3), 128, np.uint8)
    rendered[5:8, 5:8] = (220, 40, 40)
    decoded = rendered.copy()
    assert stray_pixels(decoded, rendered) == 0
    decoded[9:11, 5:8] = (220, 40, 40)  # a halo within three pixels of the object is the object's edge
    assert stray_pixels(decoded, rendered) == 0
    decoded[15:17, 14:17] = (40, 40, 220)  # a blue blob of 6 pixels far from it
    decoded[0, 19] = (140, 128, 128)  # a pixel a little off the background is not drawn
    assert stray_pixels(decoded, rendered) == 6


def test_a_refined_vae_ships_as_vae_and_stays_until_a_vae_of_another_encoder_replaces_it(runs, tmp_path: Path) -> None:
    base, _, refined, _ = runs
    to = tmp_path / "weights"
    weights = "diffusion_pytorch_model.safetensors"
    ship([refined, base], to)  # in any order: the refinement lands last
    assert (to / "vae" / weights).read_bytes() == (refined / "final" / weights).read_bytes()
    assert (to / "curves" / "vae-decoder.png").is_file()
    manifest = json.loads((to / "MANIFEST.json").read_text())
    assert manifest["stages"]["vae-decoder"]["refines"] == json.loads((refined / "run.json").read_text())["description"]["refine"]
    assert check(to) == []
    ship([base], to)  # the base again (the I2V teacher's VAE beside it, say): the refined decoder stays
    assert (to / "vae" / weights).read_bytes() == (refined / "final" / weights).read_bytes() and check(to) == []
    other = _base(tmp_path / "other", seed=1)
    ship([other], to)  # a VAE of other latents replaces it, and the refinement's entry goes
    assert (to / "vae" / weights).read_bytes() == (other / "final" / weights).read_bytes()
    assert "vae-decoder" not in json.loads((to / "MANIFEST.json").read_text())["stages"] and check(to) == []
    assert not (to / "curves" / "vae-decoder.png").exists()  # nor its curve
    with pytest.raises(InputError, match="refines a VAE of another encoder than"):
        ship([refined], to)
    assert (to / "vae" / weights).read_bytes() == (other / "final" / weights).read_bytes()


def test_the_train_command_refines_with_its_own_defaults_and_refuses_a_folder_that_is_no_vae(runs, tmp_path: Path) -> None:
    base, student, _, _ = runs
    command = [sys.executable, "-m", "flows.cli", "train", "vae", "--preset", "tiny", "--refine"]
    done = subprocess.run([*command, str(base / "final"), "--student", str(student), "--samples", "2",
                           "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "r"), "--max-steps", "1", "--json"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["stage"] == "vae-decoder"
    record = json.loads((tmp_path / "r" / "run.json").read_text())
    assert record["identity"]["learning_rate"] == 2e-4  # the refinement's default, not the VAE's 1e-3
    bad = subprocess.run([*command, str(tmp_path), "--out", str(tmp_path / "x")], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.strip() == (
        f"magic141: error: --refine {tmp_path} is not a weights folder (no config.json); pass the final/ folder of its run"
    )
    assert not (tmp_path / "x").exists()


def test_the_training_flow_refines_the_decoder_of_its_vae_on_its_students_samples_when_asked(prefect_api, tmp_path: Path) -> None:
    from flows.train import train_toy_world

    chain = ["vae", "t2v", "i2v", "cfg", "dmd2", "vae-decoder"]
    runs = train_toy_world(str(tmp_path / "train"), chain[::-1], {stage: 1 for stage in chain}, samples=16,
                           ship_to=str(tmp_path / "weights"))
    assert [run.stage for run in runs] == chain  # in the stages' order
    weights = "diffusion_pytorch_model.safetensors"
    refined = tmp_path / "train" / "vae-decoder" / "final"
    assert (tmp_path / "weights" / "vae" / weights).read_bytes() == (refined / weights).read_bytes()
    assert vae_encoder_fingerprint(_load(refined)) == vae_encoder_fingerprint(_load(tmp_path / "train" / "vae" / "final"))
    record = json.loads((tmp_path / "train" / "vae-decoder" / "run.json").read_text())["description"]
    student = tmp_path / "train" / "dmd2" / "final" / "transformer"
    from magic141.training.distill_data import folder_fingerprint

    assert record["student"] == folder_fingerprint(student)  # the flow's own DMD2 student
    assert check(tmp_path / "weights") == []

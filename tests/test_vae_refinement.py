"""The VAE's decoder refinement (``train vae --refine``): it trains the decoder alone, so the latents, the caches
and the transformers trained on them stay valid; its loss terms by hand; the stray-blob count of the VAE
evaluation; and how a refined VAE ships beside the transformers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKLHunyuanVideo

from magic141.components import vae_encoder_fingerprint
from magic141.presets import get_preset
from magic141.training.evaluate import stray_pixels
from magic141.training.loop import TrainSettings, read_losses
from magic141.training.ship import check, ship
from magic141.training.vae import LATENT_NOISE, VaeStage, VaeTrainee, refinement_errors, refinement_stage
from magic141.utils import InputError
from tasks.runtime.train_pool import train

TINY = get_preset("tiny")


def _settings(out: Path, steps: int, **changes: object) -> TrainSettings:
    return TrainSettings(**{"out": out, "max_steps": steps, "batch_size": 2, "learning_rate": 3e-3,
                            "checkpoint_every": 2, **changes})


def _base(out: Path, seed: int = 0) -> Path:
    train(VaeStage(TINY.vae, TINY.width, TINY.height, TINY.fps), _settings(out, 2, seed=seed))
    return out


def _refined(base: Path) -> VaeStage:
    return refinement_stage(TINY.vae, TINY.width, TINY.height, TINY.fps, base / "final")


def _load(folder: Path) -> AutoencoderKLHunyuanVideo:
    return AutoencoderKLHunyuanVideo.from_pretrained(str(folder))


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("vae")
    base = _base(root / "vae")
    train(_refined(base), _settings(root / "vae-decoder", 16, learning_rate=1e-3, checkpoint_every=4))
    return base, root / "vae-decoder"


def test_the_refinement_trains_the_decoder_alone_so_the_latents_and_their_caches_stay_valid(runs, tmp_path: Path) -> None:
    from magic141.training.transformer import cache_path, encoders

    base, refined = runs
    before, after = _load(base / "final"), _load(refined / "final")
    for part in ("encoder", "quant_conv"):
        first, second = getattr(before, part).state_dict(), getattr(after, part).state_dict()
        assert all(torch.equal(first[key], second[key]) for key in first)
    assert any(not torch.equal(before.decoder.state_dict()[key], value) for key, value in after.decoder.state_dict().items())
    assert after.config.scaling_factor == before.config.scaling_factor
    assert vae_encoder_fingerprint(after) == vae_encoder_fingerprint(before)
    # The transformers' latent cache of the refined VAE is the base's: nothing downstream is retrained.
    assert cache_path(tmp_path, encoders(TINY, base / "final"), 8, 0) == cache_path(tmp_path, encoders(TINY, refined / "final"), 8, 0)
    # Its loss falls on clips it never trained on (another seed's), two batches of each length.
    stage = _refined(base)
    with torch.no_grad():
        losses = [sum(float(VaeTrainee(vae, decoder_only=True)(stage.batch(99, step, range(4)))[0]) for step in range(8))
                  for vae in (before, after)]
    assert losses[1] < 0.95 * losses[0], losses
    assert len(read_losses(refined)) == 16


def test_a_refinement_resumed_from_its_checkpoint_ends_where_the_uninterrupted_run_does(runs, tmp_path: Path) -> None:
    base, refined = runs

    class Killed(Exception):
        pass

    def die_at_9(step: int, total: int, loss: float) -> None:
        if step == 9:
            raise Killed

    with pytest.raises(Killed):
        train(_refined(base), _settings(tmp_path / "parts", 16, learning_rate=1e-3, checkpoint_every=4), on_step=die_at_9)
    train(_refined(base), _settings(tmp_path / "parts", 16, learning_rate=1e-3, checkpoint_every=4, resume=True))
    whole, parts = _load(refined / "final").state_dict(), _load(tmp_path / "parts" / "final").state_dict()
    assert all(torch.equal(whole[key], parts[key]) for key in whole)


def test_a_vae_of_another_geometry_is_refused_before_any_compute(runs) -> None:
    base, _ = runs
    toy = get_preset("toy")
    with pytest.raises(InputError, match="is a VAE of another geometry \\(block_out_channels, spatial_compression_ratio"):
        refinement_stage(toy.vae, toy.width, toy.height, toy.fps, base / "final")


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
    base, refined = runs
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
    base, _ = runs
    command = [sys.executable, "-m", "flows.cli", "train", "vae", "--preset", "tiny", "--refine"]
    done = subprocess.run([*command, str(base / "final"), "--out", str(tmp_path / "r"), "--max-steps", "1", "--json"],
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


def test_the_refinement_decodes_noised_latents_of_the_clips_the_vae_stage_draws(runs) -> None:
    base, _ = runs
    stage, plain = _refined(base), VaeStage(TINY.vae, TINY.width, TINY.height, TINY.fps)
    batch, again, clips = stage.batch(3, 1, [0, 1]), stage.batch(3, 1, [0, 1]), plain.batch(3, 1, [0, 1])
    assert torch.equal(batch.pixels, clips.pixels) and clips.latent_noise is None  # the same clips, no noise
    with torch.no_grad():
        latents = _load(base / "final").encode(batch.pixels).latent_dist.mean
    assert batch.latent_noise.shape == latents.shape and torch.equal(batch.latent_noise, again.latent_noise)
    assert 0 < float(batch.latent_noise.std()) <= LATENT_NOISE
    assert not torch.equal(batch.latent_noise[0], stage.batch(3, 2, [0]).latent_noise[0])  # drawn anew every step


def test_the_training_flow_refines_the_decoder_of_the_vae_it_trained_when_asked(prefect_api, tmp_path: Path) -> None:
    from flows.train import train_toy_world

    runs = train_toy_world(str(tmp_path / "train"), ["vae-decoder", "vae"], {"vae": 2, "vae-decoder": 2},
                           ship_to=str(tmp_path / "weights"))
    assert [run.stage for run in runs] == ["vae", "vae-decoder"]  # in the stages' order
    weights = "diffusion_pytorch_model.safetensors"
    refined = tmp_path / "train" / "vae-decoder" / "final" / weights
    assert (tmp_path / "weights" / "vae" / weights).read_bytes() == refined.read_bytes()
    base = _load(tmp_path / "train" / "vae" / "final")
    assert vae_encoder_fingerprint(_load(refined.parent)) == vae_encoder_fingerprint(base)
    assert check(tmp_path / "weights") == []

"""CFG distillation and DMD2 at tiny size: the losses' formulas against hand computations, the fake model's
LoRA as its only trainable part, the real model as the base plus the shifted LoRA, exact resume, DDP on two
Ray Train workers, and bad settings refused before any compute."""

from __future__ import annotations

from pathlib import Path

import PIL.Image
import pytest
import torch
from safetensors.torch import load_file

from magic141.components import build_i2v_components
from magic141.presets import get_preset
from magic141.training.distill import (
    CfgSettings,
    CfgTrainee,
    DistillStage,
    Dmd2Settings,
    cfg_target,
    dmd_gradient,
    dmd_loss,
    lora_weight,
    noised,
)
from magic141.training.distill_data import Condition, DistillBatch, Teacher
from magic141.training.loop import TrainingError, TrainSettings, read_losses
from magic141.weights import read_distillation, read_image_frames, save_i2v_components
from tasks.runtime.train_pool import train

TINY = get_preset("tiny")


@pytest.fixture(scope="module")
def teacher_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny I2V teacher's weights folder (seeded weights; the guidance embedding made to matter), in the toy
    models' image-frames layout."""
    components = build_i2v_components(TINY)
    components.prompt_format, components.image_frames = "magic141", "every"
    return save_i2v_components(components, tmp_path_factory.mktemp("teacher") / "weights")


@pytest.fixture(scope="module")
def cache(teacher_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    from magic141.training.transformer import build_cache, cache_path, encoders

    components = encoders(TINY, teacher_folder / "vae")
    path, fingerprint = cache_path(tmp_path_factory.mktemp("cache"), components, TINY, 8, 0)
    return build_cache(components, TINY, 8, 0, path), fingerprint


def _stage(kind: str, teacher_folder: Path, cache: tuple[Path, str], **settings: object) -> DistillStage:
    teacher = Teacher.check(teacher_folder, TINY)
    if kind == "cfg":
        return DistillStage("cfg", TINY, teacher, *cache, cfg=CfgSettings(**settings))
    return DistillStage("dmd2", TINY, teacher, *cache, dmd2=Dmd2Settings(**settings))


def _settings(out: Path, steps: int, **changes: object) -> TrainSettings:
    return TrainSettings(**{"out": out, "max_steps": steps, "batch_size": 4, "learning_rate": 2e-3,
                            "checkpoint_every": 2, "seed": 3, **changes})


def test_the_losses_follow_their_formulas_on_hand_computed_tensors() -> None:
    cond, uncond = torch.tensor([[1.0, 2.0]]), torch.tensor([[0.5, 1.0]])
    # Eq. 8 at w = 2 (guidance scale 3): 3 * cond - 2 * uncond.
    assert torch.equal(cfg_target(cond, uncond, torch.tensor([3.0])), torch.tensor([[2.0, 4.0]]))
    assert torch.equal(cfg_target(cond, uncond, torch.tensor([1.0])), cond)  # w = 0: the conditional prediction
    x0 = torch.tensor([[1.0, 3.0]], requires_grad=True)
    real, fake = torch.tensor([[0.0, 1.0]]), torch.tensor([[0.5, 0.0]])
    # DMD2's normalisation: mean |x0 - real| = (1 + 2) / 2 = 1.5.
    gradient = dmd_gradient(x0.detach(), real, fake)
    assert torch.allclose(gradient, torch.tensor([[0.5 / 1.5, -1.0 / 1.5]]))
    dmd_loss(x0, gradient).backward()
    assert torch.allclose(x0.grad, gradient / 2)  # the surrogate's gradient is the DMD direction (over the mean)


class _Linear(torch.nn.Module):
    """A stand-in transformer whose velocity is ``a * x + guidance / 1000 + mean(text)``: losses computable by hand."""

    def __init__(self, a: float) -> None:
        super().__init__()
        self.a = torch.nn.Parameter(torch.tensor(a))

    def forward(self, hidden_states, timestep, encoder_hidden_states, encoder_attention_mask, pooled_projections,
                guidance, return_dict):
        shift = (guidance / 1000 + encoder_hidden_states.mean(dim=(1, 2))).view(-1, 1, 1, 1, 1)
        return (self.a * hidden_states + shift,)


def test_cfg_distillation_regresses_the_guided_teacher_and_the_flow_at_w_0() -> None:
    x0, noise = torch.ones(1, 1, 1, 1, 2), torch.zeros(1, 1, 1, 1, 2)
    text = lambda value: Condition(None, None, torch.full((1, 1, 1), value), torch.ones(1, 1), torch.zeros(1, 1))  # noqa: E731
    batch = DistillBatch(x0, text(2.0), text(0.0), torch.tensor([3.0]), torch.tensor([[0.5]]), noise[:, None])
    trainee = CfgTrainee(_Linear(0.5), _Linear(1.0), lambda_cfg=0.25)
    loss, logged = trainee(batch)
    z = 0.5 * x0  # (1 - sigma) x0 + sigma * noise
    cond, uncond = 1.0 * z + 1 + 2, 1.0 * z + 1 + 0  # the teacher at guidance 1
    target = 3 * cond - 2 * uncond
    distill = float(((0.5 * z + 3 + 2 - target) ** 2).mean())
    flow = float(((0.5 * z + 1 + 2 - (noise - x0)) ** 2).mean())
    assert logged == pytest.approx({"distill": distill, "flow": flow})
    assert float(loss.detach()) == pytest.approx(distill + 0.25 * flow)


def test_the_fake_lora_is_the_only_trainable_part_of_the_base_and_the_real_model_is_base_plus_shifted_lora(
    teacher_folder: Path, cache: tuple[Path, str]
) -> None:
    stage = _stage("dmd2", teacher_folder, cache, lora_rank=4, real_shift=0.3)
    trainee = stage.build(0)
    trainable = {name for name, p in trainee.base.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in name for name in trainable)
    assert {n for n, p in trainee.base.named_parameters() if "lora_" in n} == trainable
    assert all(p.requires_grad for p in trainee.generator.parameters())
    with torch.no_grad():
        for name, parameter in trainee.base.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.1)  # a LoRA that has learned something
    batch = stage.batch(3, 1, range(2))
    sigma = batch.sigmas[:, 1]
    latents = batch.noises[:, 1]
    with torch.no_grad():
        real = trainee.real(latents, sigma, batch.cond, batch.guidance)
        fake = trainee.fake(latents, sigma, batch.cond, batch.guidance)
    # The real model by hand: the teacher's weights plus 0.3 times each LoRA's product (lora_alpha = rank).
    merged = stage.teacher.transformer()
    state = merged.state_dict()
    lora = dict(trainee.base.named_parameters())
    for name in [n for n in lora if n.endswith("lora_A.fake.weight")]:
        prefix = name[: -len(".lora_A.fake.weight")]
        state[f"{prefix}.weight"] = state[f"{prefix}.weight"] + 0.3 * lora[f"{prefix}.lora_B.fake.weight"] @ lora[name]
    merged.load_state_dict(state)
    from magic141.training.distill import velocity

    with torch.no_grad():
        expected = velocity(merged, latents, sigma, batch.cond, batch.guidance)
    assert torch.allclose(real, expected, atol=1e-5)
    assert not torch.allclose(real, fake, atol=1e-3)
    with lora_weight(trainee.base, 0.0), torch.no_grad():
        plain = velocity(trainee.base, latents, sigma, batch.cond, batch.guidance)
    with torch.no_grad():
        assert torch.allclose(plain, velocity(stage.teacher.transformer(), latents, sigma, batch.cond, batch.guidance), atol=1e-5)


def test_dmd2_resumes_exactly_and_its_checkpoints_hold_only_what_trains(
    teacher_folder: Path, cache: tuple[Path, str], tmp_path: Path
) -> None:
    stage = _stage("dmd2", teacher_folder, cache, lora_rank=4, fake_updates=2)
    whole = train(stage, _settings(tmp_path / "whole", 5), dataset_size=8)
    train(stage, _settings(tmp_path / "cut", 3), dataset_size=8)
    resumed = train(stage, _settings(tmp_path / "cut", 5, resume=True), dataset_size=8)
    assert resumed.losses == whole.losses
    logged = read_losses(tmp_path / "whole")
    assert ["dmd" in entry for entry in logged] == [True, False, True, False, True]  # every 2nd step
    a = load_file(tmp_path / "whole" / "final" / "transformer" / "diffusion_pytorch_model.safetensors")
    b = load_file(tmp_path / "cut" / "final" / "transformer" / "diffusion_pytorch_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    checkpoint = load_file(next((tmp_path / "whole" / "checkpoints").iterdir()) / "trainee.safetensors")
    assert not any(key.startswith("base.") and "lora_" not in key for key in checkpoint)  # the frozen base stays out
    assert any(key.startswith("ema.") for key in checkpoint) and any("lora_" in key for key in checkpoint)
    record = read_distillation(tmp_path / "whole" / "final" / "transformer")
    assert record["kind"] == "dmd2" and record["teacher_fingerprint"] == stage.teacher.fingerprint
    # The teacher's image-frames layout: in its batches, and declared by the student, which is sampled the same way.
    image = stage.batch(3, 0, range(8)).cond.image
    assert stage.teacher.image_frames == "every" and torch.equal(image, image[:, :, :1].expand_as(image))
    assert read_image_frames(tmp_path / "whole" / "final" / "transformer") == "every"
    assert record["settings"]["fake_updates"] == 2 and record["steps"] == 4
    # The student is a whole weights folder: the teacher's VAE and encoders beside the student's transformer.
    assert {p.name for p in (tmp_path / "whole" / "final").iterdir()} >= {"transformer", "vae", "text_encoder", "tokenizer"}


def test_generate_loads_the_student_as_a_weights_folder_and_catalogs_its_teacher_and_settings(
    teacher_folder: Path, cache: tuple[Path, str], prefect_api, tmp_path: Path
) -> None:
    from flows.generate import generate
    from tasks.catalog import open_catalog
    from tasks.request import GenerateRequest

    stage = _stage("dmd2", teacher_folder, cache, lora_rank=4, steps=2)
    student = train(stage, _settings(tmp_path / "run", 1), dataset_size=8).final
    url = f"sqlite:///{tmp_path / 'catalog.db'}"
    PIL.Image.new("RGB", (64, 48), (200, 30, 30)).save(tmp_path / "first.png")
    result = generate(GenerateRequest.from_options(prompt="a red circle moving left on a black background", out=str(tmp_path / "v.mp4"),
                                      catalog_url=url, image=str(tmp_path / "first.png"), seconds=0.5, steps=2,
                                      preset="tiny", weights=str(student)))
    with open_catalog(url) as catalog:
        details = catalog.get_video(result.video_id)["model_details"]
    assert details["weights"] == str(student) and details["prompt_format"] == "magic141"
    assert details["image_frames"] == "every"
    assert details["distillation"]["kind"] == "dmd2" and details["distillation"]["steps"] == 2
    assert details["distillation"]["teacher_fingerprint"] == stage.teacher.fingerprint


def test_cfg_distillation_brings_the_students_one_pass_near_the_teachers_two(
    teacher_folder: Path, cache: tuple[Path, str], tmp_path: Path
) -> None:
    stage = _stage("cfg", teacher_folder, cache, w_min=1.0, w_max=4.0)
    train(stage, _settings(tmp_path / "one", 24), dataset_size=8)
    # On windows and guidance scales of another seed: the student's one pass is nearer the teacher's two.
    trainee, held_out = stage.build(0), stage.batch(99, 0, range(8))
    with torch.no_grad():
        before = trainee(held_out)[1]["distill"]
        trainee.student.load_state_dict(load_file(tmp_path / "one" / "final" / "transformer" /
                                                  "diffusion_pytorch_model.safetensors"))
        after = trainee(held_out)[1]["distill"]
    assert after < 0.7 * before


def test_dmd2_on_two_ray_train_workers_follows_one(teacher_folder: Path, cache: tuple[Path, str], tmp_path: Path) -> None:
    """The hardest case for DDP: the generator has no gradient on fake-only steps, the fake model is a LoRA."""
    stage = _stage("dmd2", teacher_folder, cache, lora_rank=4, fake_updates=2)
    one = train(stage, _settings(tmp_path / "one", 4), dataset_size=8)
    two = train(stage, _settings(tmp_path / "two", 4, workers=2), dataset_size=8)
    assert two.losses == pytest.approx(one.losses, rel=1e-4)
    import ray

    # The private Ray of the training ends with it: a render pool started later in this process (with fake GPUs)
    # must not find it, with no GPUs, and wait forever for its actors.
    assert not ray.is_initialized()


def test_bad_distillation_settings_and_teachers_are_refused_before_any_compute(
    teacher_folder: Path, tmp_path: Path
) -> None:
    with pytest.raises(TrainingError, match="--w-min 3.0 is above --w-max 1.0"):
        CfgSettings(w_min=3.0, w_max=1.0)
    with pytest.raises(TrainingError, match="--lora-rank must be >= 1, got 0"):
        Dmd2Settings(lora_rank=0)
    with pytest.raises(TrainingError, match="--steps must be >= 1, got 0"):
        Dmd2Settings(steps=0)
    with pytest.raises(TrainingError, match="--sigmas lists 2 noise levels for 4 steps"):
        Dmd2Settings(sigmas=(1.0, 0.5))
    with pytest.raises(TrainingError, match="--gan-critic-weight must be > 0 with a GAN term"):
        Dmd2Settings(gan_weight=0.1, gan_critic_weight=0.0)
    with pytest.raises(TrainingError, match="is of another geometry than preset 'toy'.*num_attention_heads 2 there, 4"):
        Teacher.check(teacher_folder, get_preset("toy"))
    with pytest.raises(TrainingError, match="holds no transformer"):
        Teacher.check(tmp_path, TINY)


def test_the_train_commands_refuse_bad_settings_in_one_line_before_any_compute(
    teacher_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from flows.cli import main

    cases = [
        (["train", "cfg", "--w-min", "4", "--w-max", "2"], "--w-min 4.0 is above --w-max 2.0; swap them"),
        (["train", "cfg", "--max-steps", "0"], "--max-steps must be >= 1, got 0"),
        (["train", "dmd2", "--lora-rank", "0"], "--lora-rank must be >= 1, got 0"),
        (["train", "dmd2", "--preset", "toy", "--teacher", str(teacher_folder)], "of another geometry than preset 'toy'"),
        (["train", "dmd2", "--preset", "nope"], "unknown preset 'nope'"),
    ]
    for arguments, message in cases:
        status = main([*arguments, "--out", str(tmp_path / "run"), "--samples", "4", "--cache-dir", str(tmp_path / "cache")])
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if line.strip()]
        assert status == 2 and len(lines) == 1 and lines[0].startswith("magic141: error: ") and message in lines[0], (
            arguments, err)
    assert not (tmp_path / "run").exists() and not (tmp_path / "cache").exists()


def test_backward_simulation_gives_each_step_the_input_the_generators_own_euler_steps_make() -> None:
    from magic141.training.distill import Dmd2Trainee

    settings = Dmd2Settings()
    trainee = Dmd2Trainee(_Linear(0.5), _Linear(1.0), settings, settings.schedule(1.0))  # 1, 0.75, 0.5, 0.25
    noise = torch.randn(2, 1, 1, 1, 2, generator=torch.Generator().manual_seed(0))
    condition = Condition(None, None, torch.zeros(2, 1, 1), torch.ones(2, 1), torch.zeros(2, 1))
    inputs = trainee.simulate(noise, torch.tensor([1.0, 0.5]), condition, torch.ones(2))
    first = noise[1] + (0.75 - 1.0) * (0.5 * noise[1] + 1)  # velocity 0.5 x + guidance 1 + mean(text) 0
    second = first + (0.5 - 0.75) * (0.5 * first + 1)
    assert torch.equal(inputs[0], noise[0])  # the first step starts from pure noise
    assert torch.allclose(inputs[1], second)


def test_dmd2s_gan_term_trains_its_classifier_apart_from_the_generator_and_the_generator_against_it(
    teacher_folder: Path, cache: tuple[Path, str], tmp_path: Path
) -> None:
    """The classifier (a head on the fake model's features) learns real windows from generator samples; the
    generator's GAN gradient is ``d softplus(-D(x)) / dx`` and leaves the classifier and the fake model untouched."""
    stage = _stage("dmd2", teacher_folder, cache, lora_rank=4, fake_updates=2, gan_weight=0.05, gan_critic_weight=1.0)
    trainee = stage.build(0)
    batch = stage.batch(3, 0, range(4))
    assert batch.generator_step and batch.sigmas.shape[1] == 4  # a fourth noise level: where the classifier judges
    sample = batch.latents + 0.3 * batch.noises[:, 0]
    gradient, gan = trainee.gan_gradient(sample.clone(), batch.noises[:, 3], batch.sigmas[:, 3], batch.cond,
                                          batch.guidance)
    critics = [p for group in trainee.parameter_groups()[1:] for p in group["params"]]
    assert all(p.grad is None for p in critics)
    probe = sample.clone().requires_grad_(True)
    realism = trainee.realism(noised(probe, batch.noises[:, 3], batch.sigmas[:, 3]), batch.sigmas[:, 3], batch.cond,
                              batch.guidance)
    loss = torch.nn.functional.softplus(-realism).mean()
    assert torch.allclose(gradient, torch.autograd.grad(loss, probe)[0]) and gan == pytest.approx(float(loss.detach()))
    assert set(map(id, trainee.head.parameters())) <= set(map(id, critics))

    result = train(stage, _settings(tmp_path / "gan", 12), dataset_size=8)
    logged = read_losses(tmp_path / "gan")
    margins = [entry["realism_real"] - entry["realism_fake"] for entry in logged]
    assert sum(margins[-4:]) > sum(margins[:4])  # the classifier tells real windows from samples better
    assert all("gan" in entry for entry in logged[::2]) and len(result.losses) == 12
    resumed = tmp_path / "cut"
    train(stage, _settings(resumed, 7), dataset_size=8)
    assert train(stage, _settings(resumed, 12, resume=True), dataset_size=8).losses == result.losses

"""The paper's two distillations of a flow-matching teacher (Sec. 3.1): CFG distillation (Eq. 6-9), then DMD2
step distillation (Eq. 4-5) with a LoRA fake model, so the student samples in 4 steps of one forward pass each.

Both read the teachers' latent cache (:mod:`magic141.training.transformer`): training windows, first-frame
latents, VLM image tokens and every caption's text states, the empty prompt's included; their batches and the
teacher folder are :mod:`magic141.training.distill_data`.

**Guidance.** The transformer's guidance input is the guidance scale ``s = 1 + w`` (embedded as ``s * 1000``,
diffusers' HunyuanVideo convention and the sampler's ``--guidance``); ``s = 1`` (``w = 0``) is the plain
conditional prediction the teachers were trained at.

**CFG distillation.** The student ``u_s`` starts as a copy of the teacher ``u`` and learns, with
``w ~ U[w_min, w_max]`` drawn per sample::

    L = || u_s(z_t, t, T, 1 + w) - [(1 + w) u(z_t, t, T) - w u(z_t, t, ∅)] ||²
        + λ_cfg || u_s(z_t, t, T, 1) - (ε - x_0) ||²

The unconditional input ∅ is the empty prompt's text states behind the same VLM image tokens, with the same
first-frame latent in both branches: guidance steers the text, never the image, as the teacher's caption
dropout trained it (the caption dropped, the image kept).

**DMD2.** A generator ``G`` (a copy of the teacher, sampled with the few-step Euler schedule of
:mod:`magic141.sampler`) predicts ``x_0`` at one of its steps, from the input its own earlier Euler steps make
from pure noise there (DMD2's backward simulation, so training sees what sampling sees; without it, a training
window noised to that step: the student drifted from its first frame's colour). The fake model
is the teacher's frozen base plus a LoRA (peft, through diffusers' adapter API); the real model is the same
base with that LoRA at the small weight ``real_shift`` (the paper's shift of the real model towards the fake),
so one copy of the base weights serves both. At every step the fake model learns the generator's samples by
flow matching (Eq. 5); every ``fake_updates`` steps the generator also follows the distribution-matching
gradient (Eq. 4), normalised per sample as DMD2 does::

    grad = (x̂_fake - x̂_real) / mean|x_0 - x̂_real|,   L_G = ½ || x_0 - sg(x_0 - grad) ||²

where ``x̂`` are the real and fake models' ``x_0`` predictions at a random noise level of the generator's
sample. With ``gan_weight > 0`` DMD2's GAN term is added (off by default): a classifier head on the fake
model's middle features (the video tokens out of its last dual-stream block, scored token by token and
averaged) learns to tell training windows from generator samples, both noised to one unshifted level
(``softplus(D(fake)) + softplus(-D(real))`` at weight ``gan_critic_weight``, trained with the fake model), and
the generator follows the non-saturating ``softplus(-D(G))`` at weight ``gan_weight``: the classifier sees the
data, which the teacher only approximates. An EMA of the generator's weights is kept and is what ``final/``
holds. ``fake="full"`` instead trains a full copy of the teacher as the fake model beside the frozen real one,
as the public distillers do (the memory benchmark's reference). An optional regression loss pulls the generator's prediction towards the
real model's ODE solution from the same noisy window (off by default).

The teachers and the base are frozen, so checkpoints hold only what trains (the generator, its EMA, the LoRA
or the full fake) and a resumed run rebuilds the rest from the teacher folder, whose fingerprint run.json holds.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from magic141.conditioning import model_input
from magic141.presets import Preset
from magic141.sampler import flow_sigmas
from magic141.training.distill_data import (
    Condition,
    DistillBatch,
    Teacher,
    distill_batch,
    judge_level,
    step_level,
    training_level,
    uniform_level,
)
from magic141.training.loop import TrainingError

GUIDANCE_EMBEDDING = 1000.0  # the guidance embedder sees s * 1000
LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out",
                "proj_mlp", "proj_out")
FAKE_MODELS = ("lora", "full")


@dataclass(frozen=True)
class CfgSettings:
    """What CFG distillation learns: guidance scales ``1 + w`` for ``w`` in ``[w_min, w_max]``."""

    w_min: float = 0.0
    w_max: float = 5.0
    lambda_cfg: float = 0.25  # the weight of Eq. 9's flow-matching loss at w = 0

    def __post_init__(self) -> None:
        if self.w_min < 0:
            raise TrainingError(f"--w-min must be >= 0 (w = 0 is no guidance), got {self.w_min}")
        if self.w_min > self.w_max:
            raise TrainingError(f"--w-min {self.w_min} is above --w-max {self.w_max}; swap them")
        if self.lambda_cfg < 0:
            raise TrainingError(f"--lambda-cfg must be >= 0, got {self.lambda_cfg}")


@dataclass(frozen=True)
class Dmd2Settings:
    """The few-step generator and its critics."""

    steps: int = 4  # the generator's sampling steps
    sigmas: tuple[float, ...] | None = None  # its noise levels before the flow shift; None: the sampler's 1 -> 1/steps
    fake: str = "lora"  # or "full": a full trainable copy of the teacher as the fake model
    lora_rank: int = 16
    real_shift: float = 0.25  # the LoRA's weight in the real model
    fake_updates: int = 5  # fake-model updates per generator update (DMD2's two time-scale rule)
    fake_lr_scale: float = 5.0  # the fake model's learning rate, relative to the generator's: it must keep up
    ema_decay: float = 0.95  # per generator update
    w_min: float = 0.0  # the guidance scales 1 + w the generator, real and fake models see
    w_max: float = 5.0
    regression_weight: float = 0.0  # the weight of the regression on the real model's ODE solution; 0: off
    regression_steps: int = 8  # Euler steps of that ODE solution
    backward_simulation: bool = True  # the generator's input at a step made by its own earlier steps, as sampling does
    gan_weight: float = 0.0  # the generator's GAN loss weight (DMD2's); 0: no classifier
    gan_critic_weight: float = 0.01  # the classifier's loss weight, beside the fake model's flow matching
    gan_lr_scale: float = 50.0  # the classifier head's learning rate, relative to the generator's

    def __post_init__(self) -> None:
        if self.sigmas is not None:
            object.__setattr__(self, "sigmas", tuple(float(s) for s in self.sigmas))
        checks = (
            (self.steps >= 1, f"--steps must be >= 1, got {self.steps}"),
            (self.sigmas is None or len(self.sigmas) == self.steps,
             f"--sigmas lists {len(self.sigmas or ())} noise levels for {self.steps} steps; give one per step"),
            (self.sigmas is None or all(1 >= a > b > 0 for a, b in zip(self.sigmas, [*self.sigmas[1:], 0.0])),
             f"--sigmas {self.sigmas} must fall strictly from at most 1 to above 0"),
            (self.fake in FAKE_MODELS, f"unknown fake model {self.fake!r}; choose one of: {', '.join(FAKE_MODELS)}"),
            (self.lora_rank >= 1, f"--lora-rank must be >= 1, got {self.lora_rank}"),
            (0 <= self.real_shift <= 1, f"--real-shift must be in [0, 1], got {self.real_shift}"),
            (self.fake_updates >= 1, f"--fake-updates must be >= 1, got {self.fake_updates}"),
            (self.fake_lr_scale > 0, f"--fake-lr-scale must be > 0, got {self.fake_lr_scale}"),
            (0 <= self.ema_decay < 1, f"--ema-decay must be in [0, 1), got {self.ema_decay}"),
            (self.w_min >= 0, f"--w-min must be >= 0 (w = 0 is no guidance), got {self.w_min}"),
            (self.w_min <= self.w_max, f"--w-min {self.w_min} is above --w-max {self.w_max}; swap them"),
            (self.regression_weight >= 0, f"--regression-weight must be >= 0, got {self.regression_weight}"),
            (self.regression_steps >= 1, f"--regression-steps must be >= 1, got {self.regression_steps}"),
            (self.gan_weight >= 0, f"--gan-weight must be >= 0, got {self.gan_weight}"),
            (self.gan_lr_scale > 0, f"--gan-lr-scale must be > 0, got {self.gan_lr_scale}"),
            (self.gan_critic_weight > 0 or self.gan_weight == 0,
             f"--gan-critic-weight must be > 0 with a GAN term (--gan-weight {self.gan_weight}), got "
             f"{self.gan_critic_weight}"),
        )
        for ok, message in checks:
            if not ok:
                raise TrainingError(message)

    def schedule(self, flow_shift: float) -> torch.Tensor:
        """The generator's noise levels after the flow shift, as the sampler steps through them."""
        sigmas = np.asarray(self.sigmas if self.sigmas is not None else flow_sigmas(self.steps), dtype=np.float64)
        return torch.tensor(flow_shift * sigmas / (1 + (flow_shift - 1) * sigmas), dtype=torch.float32)


def _inputs(latents: torch.Tensor, sigma: torch.Tensor, condition: Condition, guidance: torch.Tensor) -> dict[str, Any]:
    hidden = latents if condition.image is None else model_input(latents, condition.image, condition.mask)
    return {"hidden_states": hidden, "timestep": sigma * 1000.0, "encoder_hidden_states": condition.text,
            "encoder_attention_mask": condition.text_mask, "pooled_projections": condition.pooled,
            "guidance": guidance * GUIDANCE_EMBEDDING, "return_dict": False}


def velocity(transformer: torch.nn.Module, latents: torch.Tensor, sigma: torch.Tensor, condition: Condition,
             guidance: torch.Tensor) -> torch.Tensor:
    """The transformer's velocity for ``latents`` at noise level ``sigma`` (B,) and guidance scale ``guidance`` (B,)."""
    return transformer(**_inputs(latents, sigma, condition, guidance))[0]


def noised(x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """The flow-matching path: ``(1 - sigma) x_0 + sigma noise`` with one sigma per sample."""
    s = sigma.view(-1, *([1] * (x0.ndim - 1)))
    return (1 - s) * x0 + s * noise


def predicted_x0(latents: torch.Tensor, velocity_: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """``x_0`` from a velocity ``noise - x_0`` at ``latents = (1 - sigma) x_0 + sigma noise``."""
    return latents - sigma.view(-1, *([1] * (latents.ndim - 1))) * velocity_


def cfg_target(cond: torch.Tensor, uncond: torch.Tensor, guidance: torch.Tensor) -> torch.Tensor:
    """Eq. 8's target ``(1 + w) u(T) - w u(∅)`` for guidance scales ``s = 1 + w`` (B,)."""
    w = (guidance - 1).view(-1, *([1] * (cond.ndim - 1)))
    return (1 + w) * cond - w * uncond


def dmd_gradient(x0: torch.Tensor, real_x0: torch.Tensor, fake_x0: torch.Tensor) -> torch.Tensor:
    """Eq. 4's distribution-matching direction, normalised per sample by ``mean|x_0 - x̂_real|`` (DMD2)."""
    normaliser = (x0 - real_x0).abs().mean(dim=tuple(range(1, x0.ndim)), keepdim=True)
    return torch.nan_to_num((fake_x0 - real_x0) / normaliser)


def dmd_loss(x0: torch.Tensor, gradient: torch.Tensor) -> torch.Tensor:
    """The surrogate whose gradient with respect to ``x0`` is ``gradient / x0.numel()``."""
    return 0.5 * F.mse_loss(x0, (x0 - gradient).detach())


class CfgTrainee(torch.nn.Module):
    """The student (trainable) beside the frozen teacher."""

    def __init__(self, student: torch.nn.Module, teacher: torch.nn.Module, lambda_cfg: float) -> None:
        super().__init__()
        self.student = student.requires_grad_(True)
        self.teacher = teacher.requires_grad_(False).eval()
        self.lambda_cfg = lambda_cfg

    def train(self, mode: bool = True) -> CfgTrainee:
        super().train(mode)
        self.teacher.eval()
        return self

    def forward(self, batch: DistillBatch) -> tuple[torch.Tensor, dict[str, float]]:
        sigma, noise, x0 = batch.sigmas[:, 0], batch.noises[:, 0], batch.latents
        latents = noised(x0, noise, sigma)
        plain = torch.ones_like(batch.guidance)
        with torch.no_grad():
            target = cfg_target(velocity(self.teacher, latents, sigma, batch.cond, plain),
                                velocity(self.teacher, latents, sigma, batch.uncond, plain), batch.guidance)
        distill = F.mse_loss(velocity(self.student, latents, sigma, batch.cond, batch.guidance), target)
        if self.lambda_cfg == 0:
            return distill, {"distill": float(distill.detach())}
        flow = F.mse_loss(velocity(self.student, latents, sigma, batch.cond, plain), noise - x0)
        return distill + self.lambda_cfg * flow, {"distill": float(distill.detach()), "flow": float(flow.detach())}


class EmaWeights(torch.nn.Module):
    """An exponential moving average of a module's parameters, kept as buffers (so checkpoints hold it)."""

    def __init__(self, module: torch.nn.Module) -> None:
        super().__init__()
        self.names = [name for name, _ in module.named_parameters()]
        for name, parameter in module.named_parameters():
            self.register_buffer(name.replace(".", "__"), parameter.detach().clone())

    @torch.no_grad()
    def update(self, module: torch.nn.Module, decay: float) -> None:
        for name, parameter in module.named_parameters():
            getattr(self, name.replace(".", "__")).lerp_(parameter.detach(), 1 - decay)

    def state_for(self, module: torch.nn.Module) -> dict[str, torch.Tensor]:
        """``module``'s state dict with the averaged parameters."""
        state = dict(module.state_dict())
        state.update({name: getattr(self, name.replace(".", "__")) for name in self.names})
        return state


def add_fake_lora(base: torch.nn.Module, rank: int) -> torch.nn.Module:
    """The frozen ``base`` with a trainable LoRA adapter named ``fake`` on its attention and MLP projections."""
    from peft import LoraConfig

    base.requires_grad_(False)
    base.add_adapter(LoraConfig(r=rank, lora_alpha=rank, target_modules=list(LORA_TARGETS), init_lora_weights=True),
                     adapter_name="fake")
    return base


@contextlib.contextmanager
def lora_weight(model: torch.nn.Module, weight: float) -> Iterator[None]:
    """Run ``model`` with its ``fake`` LoRA at ``weight`` (1 is the fake model, ``real_shift`` the real one)."""
    from peft.tuners.lora import LoraLayer

    layers = [module for module in model.modules() if isinstance(module, LoraLayer) and "fake" in module.scaling]
    for layer in layers:
        layer.set_scale("fake", weight)
    try:
        yield
    finally:
        for layer in layers:
            layer.set_scale("fake", 1.0)


class RealismHead(torch.nn.Module):
    """DMD2's classifier on the fake model's features: a logit per video token, averaged per sample (real: > 0)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.layers = torch.nn.Sequential(torch.nn.LayerNorm(width), torch.nn.Linear(width, width), torch.nn.SiLU(),
                                          torch.nn.Linear(width, 1))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.layers(tokens).squeeze(-1).mean(dim=1)


class Dmd2Trainee(torch.nn.Module):
    """The generator, its EMA and the critics: the LoRA-carrying base (fake at weight 1, real at ``real_shift``),
    or a full fake copy beside the frozen teacher."""

    def __init__(self, generator: torch.nn.Module, base: torch.nn.Module, settings: Dmd2Settings,
                 schedule: torch.Tensor, full_fake: torch.nn.Module | None = None) -> None:
        super().__init__()
        self.settings = settings
        self.generator = generator.requires_grad_(True)
        self.base = base
        self.full_fake = None if full_fake is None else full_fake.requires_grad_(True)
        self.ema = EmaWeights(generator)
        self.register_buffer("schedule", schedule)
        self.head = None
        if settings.gan_weight > 0:
            config = self.fake_model.config
            self.head = RealismHead(config.num_attention_heads * config.attention_head_dim)

    def train(self, mode: bool = True) -> Dmd2Trainee:
        super().train(mode)
        self.base.eval()
        return self

    @property
    def fake_model(self) -> torch.nn.Module:
        """The module the fake model runs: the full copy, or the LoRA-carrying base."""
        return self.full_fake if self.full_fake is not None else self.base

    def parameter_groups(self) -> list[dict[str, Any]]:
        groups = [{"params": list(self.generator.parameters()), "lr_scale": 1.0},
                  {"params": [p for p in self.fake_model.parameters() if p.requires_grad], "lr_scale": self.settings.fake_lr_scale}]
        if self.head is not None:
            groups.append({"params": list(self.head.parameters()), "lr_scale": self.settings.gan_lr_scale})
        return groups

    def fake(self, latents: torch.Tensor, sigma: torch.Tensor, condition: Condition, guidance: torch.Tensor) -> torch.Tensor:
        return velocity(self.fake_model, latents, sigma, condition, guidance)

    def realism(self, latents: torch.Tensor, sigma: torch.Tensor, condition: Condition,
                guidance: torch.Tensor) -> torch.Tensor:
        """The classifier's realism logit (B,) on the fake model's tokens out of its last dual-stream block."""
        caught: list[torch.Tensor] = []
        handle = self.fake_model.transformer_blocks[-1].register_forward_hook(lambda module, args, output: caught.append(output[0]))
        try:
            self.fake(latents, sigma, condition, guidance)
        finally:
            handle.remove()
        return self.head(caught[0])

    def real(self, latents: torch.Tensor, sigma: torch.Tensor, condition: Condition, guidance: torch.Tensor) -> torch.Tensor:
        if self.full_fake is not None:
            return velocity(self.base, latents, sigma, condition, guidance)
        with lora_weight(self.base, self.settings.real_shift):
            return velocity(self.base, latents, sigma, condition, guidance)

    def forward(self, batch: DistillBatch) -> tuple[torch.Tensor, dict[str, float]]:
        x0, cond, guidance = batch.latents, batch.cond, batch.guidance
        step_sigma, judge_sigma, fake_sigma = batch.sigmas.unbind(1)[:3]
        step_noise, judge_noise, fake_noise = batch.noises.unbind(1)[:3]
        if self.settings.backward_simulation:
            inputs = self.simulate(step_noise, step_sigma, cond, guidance)
        else:
            inputs = noised(x0, step_noise, step_sigma)
        with torch.set_grad_enabled(batch.generator_step):
            sample = predicted_x0(inputs, velocity(self.generator, inputs, step_sigma, cond, guidance), step_sigma)
        logged: dict[str, float] = {}
        loss = x0.new_zeros(())
        if batch.generator_step:
            with torch.no_grad():
                judged = noised(sample.detach(), judge_noise, judge_sigma)
                real_x0 = predicted_x0(judged, self.real(judged, judge_sigma, cond, guidance), judge_sigma)
                fake_x0 = predicted_x0(judged, self.fake(judged, judge_sigma, cond, guidance), judge_sigma)
            generator_loss = dmd_loss(sample, dmd_gradient(sample.detach(), real_x0, fake_x0))
            logged["dmd"] = float(generator_loss.detach())
            loss = loss + generator_loss
            if self.settings.regression_weight > 0:
                regression = F.mse_loss(sample, self.ode_solution(inputs, step_sigma, cond, guidance))
                logged["regression"] = float(regression.detach())
                loss = loss + self.settings.regression_weight * regression
        clean = sample.detach()
        fake_inputs = noised(clean, fake_noise, fake_sigma)
        fake_loss = F.mse_loss(self.fake(fake_inputs, fake_sigma, cond, guidance), fake_noise - clean)
        logged["fake"] = float(fake_loss.detach())
        loss = loss + fake_loss
        if self.head is None:
            return loss, logged
        gan_sigma, gan_noise = batch.sigmas[:, 3], batch.noises[:, 3]
        realism_fake = self.realism(noised(clean, gan_noise, gan_sigma), gan_sigma, cond, guidance)
        realism_real = self.realism(noised(x0, gan_noise, gan_sigma), gan_sigma, cond, guidance)
        critic = F.softplus(realism_fake).mean() + F.softplus(-realism_real).mean()
        logged.update(critic=float(critic.detach()), realism_real=float(realism_real.detach().mean()),
                      realism_fake=float(realism_fake.detach().mean()))
        loss = loss + self.settings.gan_critic_weight * critic
        if batch.generator_step:
            gan_gradient, gan = self.gan_gradient(clean, gan_noise, gan_sigma, cond, guidance)
            logged["gan"] = gan
            loss = loss + self.settings.gan_weight * (sample * gan_gradient).sum()
        return loss, logged

    def gan_gradient(self, sample: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor, condition: Condition,
                     guidance: torch.Tensor) -> tuple[torch.Tensor, float]:
        """The gradient of the generator's ``softplus(-D(sample))`` with respect to its sample, and that loss: taken
        by ``autograd.grad`` so that the classifier and the fake model, which it runs through, get none of it."""
        probe = sample.detach().requires_grad_(True)
        with torch.enable_grad():
            realism = self.realism(noised(probe, noise, sigma), sigma, condition, guidance)
            gan = F.softplus(-realism).mean()
            (gradient,) = torch.autograd.grad(gan, probe)
        return gradient.detach(), float(gan.detach())

    @torch.no_grad()
    def simulate(self, noise: torch.Tensor, sigma: torch.Tensor, condition: Condition,
                 guidance: torch.Tensor) -> torch.Tensor:
        """DMD2's backward simulation: each sample's input at its step as sampling makes it, the generator's own
        Euler steps from pure noise down to ``sigma`` (one sample may stop earlier than another)."""
        schedule = self.schedule.tolist()
        latents = noise
        for current, following in zip(schedule[:-1], schedule[1:]):
            moving = sigma < current - 1e-6  # samples whose step lies below this level
            if not bool(moving.any()):
                break
            level = torch.full_like(sigma, current)
            step = (following - current) * velocity(self.generator, latents, level, condition, guidance)
            latents = torch.where(moving.view(-1, 1, 1, 1, 1), latents + step, latents)
        return latents

    @torch.no_grad()
    def ode_solution(self, latents: torch.Tensor, sigma: torch.Tensor, condition: Condition,
                     guidance: torch.Tensor) -> torch.Tensor:
        """The real model's Euler solution from ``latents`` at ``sigma`` down to noise level 0."""
        steps = self.settings.regression_steps
        for k in range(steps):
            current = sigma * (1 - k / steps)
            following = sigma * (1 - (k + 1) / steps)
            latents = latents + (following - current).view(-1, 1, 1, 1, 1) * self.real(latents, current, condition, guidance)
        return latents

    def after_step(self, step: int) -> None:
        if step % self.settings.fake_updates == 0:
            self.ema.update(self.generator, self.settings.ema_decay)

    def student(self) -> torch.nn.Module:
        """The generator with its EMA weights."""
        self.generator.load_state_dict(self.ema.state_for(self.generator))
        return self.generator


@dataclass(frozen=True)
class DistillStage:
    """CFG distillation (``kind="cfg"``) or DMD2 (``kind="dmd2"``) of ``teacher`` on a latent cache."""

    kind: str
    preset: Preset
    teacher: Teacher
    cache: Path
    cache_fingerprint: str
    cfg: CfgSettings = field(default_factory=CfgSettings)
    dmd2: Dmd2Settings = field(default_factory=Dmd2Settings)

    @property
    def name(self) -> str:
        return self.kind

    @property
    def unused_parameters(self) -> bool:
        """DMD2's generator has no gradient on fake-only steps."""
        return self.kind == "dmd2"

    def describe(self) -> dict[str, Any]:
        settings = asdict(self.cfg) if self.kind == "cfg" else asdict(self.dmd2)
        return {"preset": self.preset.name, "transformer": asdict(self.preset.transformer), "cache": self.cache_fingerprint,
                "teacher": self.teacher.fingerprint, "settings": settings}

    def build(self, seed: int) -> torch.nn.Module:
        torch.manual_seed(seed)
        if self.kind == "cfg":
            return CfgTrainee(self.teacher.transformer(), self.teacher.transformer(), self.cfg.lambda_cfg)
        base = self.teacher.transformer()
        if self.dmd2.fake == "lora":
            return Dmd2Trainee(self.teacher.transformer(), add_fake_lora(base, self.dmd2.lora_rank), self.dmd2,
                               self.dmd2.schedule(self.preset.flow_shift))
        return Dmd2Trainee(self.teacher.transformer(), base.requires_grad_(False), self.dmd2,
                           self.dmd2.schedule(self.preset.flow_shift), full_fake=self.teacher.transformer())

    def batch(self, seed: int, step: int, samples: Sequence[int]) -> DistillBatch:
        shift = self.preset.flow_shift
        if self.kind == "cfg":
            return distill_batch(self.cache, samples, seed, step, image_to_video=self.teacher.image_to_video,
                                 w_range=(self.cfg.w_min, self.cfg.w_max), sigma_draws=[partial(training_level, shift)],
                                 image_frames=self.teacher.image_frames)
        draws = [partial(step_level, self.dmd2.schedule(shift)), partial(judge_level, shift),
                 partial(training_level, shift)]
        if self.dmd2.gan_weight > 0:
            draws.append(uniform_level)  # where the classifier judges real windows and samples
        return distill_batch(self.cache, samples, seed, step, image_to_video=self.teacher.image_to_video,
                             w_range=(self.dmd2.w_min, self.dmd2.w_max), sigma_draws=draws,
                             generator_step=step % self.dmd2.fake_updates == 0, image_frames=self.teacher.image_frames)

    def save(self, trainee: torch.nn.Module, folder: Path) -> None:
        """The teacher's weights folder with the student's transformer, which records how it was distilled."""
        from magic141.weights import read_convention, read_prompt_format, write_declarations, write_distillation

        student = trainee.student if self.kind == "cfg" else trainee.student()
        components = self.teacher.components
        for name, source in components.items():
            shutil.copytree(source, folder / name)
        target = folder / "transformer" if components else folder
        student.save_pretrained(target, safe_serialization=True)
        teacher = self.teacher.transformer_folder
        write_declarations(target, read_prompt_format(teacher), read_convention(teacher), self.teacher.image_frames)
        settings = asdict(self.cfg) if self.kind == "cfg" else asdict(self.dmd2)
        write_distillation(target, {
            "kind": self.kind, "teacher": str(self.teacher.source), "teacher_fingerprint": self.teacher.fingerprint,
            "settings": settings, "steps": self.dmd2.steps if self.kind == "dmd2" else None,
        })

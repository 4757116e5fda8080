"""T2V -> I2V: the widened patch embedding reproduces the text-to-video model on its own latent."""

import copy
from pathlib import Path

import pytest
import torch
from diffusers import HunyuanVideoTransformer3DModel

from magic141.adaptation import widen_patch_embedding
from magic141.components import build_transformer
from magic141.presets import get_preset


@pytest.fixture
def t2v() -> HunyuanVideoTransformer3DModel:
    preset = get_preset("tiny")
    torch.manual_seed(0)
    model = build_transformer(preset.transformer, preset.text)
    config = {**model.config, "in_channels": 16, "image_condition_type": None}
    torch.manual_seed(0)
    return HunyuanVideoTransformer3DModel.from_config(config).eval()


def forward(model, hidden):
    torch.manual_seed(1)
    text = torch.randn(1, 7, 32)
    return model(hidden_states=hidden, timestep=torch.tensor([500.0]), encoder_hidden_states=text,
                 encoder_attention_mask=torch.ones(1, 7), pooled_projections=torch.randn(1, 16),
                 guidance=torch.tensor([6000.0]), return_dict=False)[0]


@torch.no_grad()
def test_zero_image_and_mask_channels_reproduce_the_t2v_output(t2v, tmp_path: Path):
    latent = torch.randn(1, 16, 3, 4, 6)
    expected = forward(t2v, latent)
    i2v = widen_patch_embedding(copy.deepcopy(t2v))
    assert i2v.config.in_channels == 33 and i2v.config.image_condition_type == "latent_concat"
    assert i2v.x_embedder.proj.weight.shape[1] == 33
    zeros = torch.zeros(1, 17, 3, 4, 6)
    torch.testing.assert_close(forward(i2v, torch.cat([latent, zeros], dim=1)), expected, rtol=0, atol=0)
    assert torch.count_nonzero(i2v.x_embedder.proj.weight[:, 16:]) == 0
    torch.testing.assert_close(i2v.x_embedder.proj.weight[:, :16], t2v.x_embedder.proj.weight)

    i2v.save_pretrained(tmp_path)
    reloaded = HunyuanVideoTransformer3DModel.from_pretrained(tmp_path).eval()
    torch.testing.assert_close(forward(reloaded, torch.cat([latent, zeros], dim=1)), expected)


def test_widening_an_i2v_model_is_refused(t2v):
    i2v = widen_patch_embedding(t2v)
    with pytest.raises(ValueError, match="already conditioned on images"):
        widen_patch_embedding(i2v)

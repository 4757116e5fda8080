"""T2V -> I2V adaptation (paper Sec. 3.1): widen the patch embedding from C to 2C+1 input channels.

The first C input channels keep the text-to-video weights; the C image-latent channels and the mask
channel start at zero, so before any I2V training the widened model computes exactly what the T2V
model computed on the noisy latent.
"""

from __future__ import annotations

import torch
from diffusers import HunyuanVideoTransformer3DModel

from magic141.utils import InputError


def widen_patch_embedding(transformer: HunyuanVideoTransformer3DModel) -> HunyuanVideoTransformer3DModel:
    """Turn a T2V transformer (C input channels) into an I2V one (2C+1, ``latent_concat``), in place."""
    proj = transformer.x_embedder.proj
    channels = proj.in_channels
    if transformer.config.image_condition_type is not None:
        raise InputError(
            f"transformer is already conditioned on images ({transformer.config.image_condition_type!r}); "
            "widen only a text-to-video transformer"
        )
    if channels != transformer.config.out_channels:
        raise InputError(
            f"a text-to-video transformer has as many input as output channels, got {channels} in and "
            f"{transformer.config.out_channels} out"
        )
    widened = torch.nn.Conv3d(
        2 * channels + 1,
        proj.out_channels,
        kernel_size=proj.kernel_size,
        stride=proj.stride,
        padding=proj.padding,
        bias=proj.bias is not None,
        device=proj.weight.device,
        dtype=proj.weight.dtype,
    )
    with torch.no_grad():
        widened.weight.zero_()
        widened.weight[:, :channels] = proj.weight  # (out, in, t, h, w): copy the latent channels
        if proj.bias is not None:
            widened.bias.copy_(proj.bias)
    transformer.x_embedder.proj = widened
    transformer.register_to_config(in_channels=2 * channels + 1, image_condition_type="latent_concat")
    return transformer

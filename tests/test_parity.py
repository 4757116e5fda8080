"""magic141's sampler against diffusers' HunyuanVideoImageToVideoPipeline on the same tiny random weights."""

import numpy as np
import PIL.Image
import torch

from magic141.pipeline import Magic141Pipeline
from magic141.sampler import SamplerConfig, sample_window
from magic141.windows import Window


def test_one_window_matches_diffusers_image_to_video(tiny_pipeline: Magic141Pipeline, prior_image: PIL.Image.Image):
    pipe = tiny_pipeline
    preset = pipe.preset
    window = Window(index=0, latent_start=0, latent_stop=preset.window_latent_frames, start=0, keep=preset.window_frames)
    noise = pipe.noise(seed=11, window=window)
    prompt = "a lighthouse in a storm"
    config = SamplerConfig(steps=4, guidance_scale=6.0, flow_shift=preset.flow_shift)

    expected = pipe.components.diffusers_pipeline()(
        image=prior_image,
        prompt=prompt,
        height=preset.height,
        width=preset.width,
        num_frames=preset.window_frames,
        num_inference_steps=config.steps,
        guidance_scale=config.guidance_scale,
        latents=noise.clone(),
        prompt_template=pipe.components.prompt_template,
        max_sequence_length=preset.text.max_sequence_length,
        output_type="latent",
    ).frames

    embeddings, _ = pipe.encode_prompt(prior_image, prompt)
    image_latents = pipe.encode_image(pipe.image_pixels(prior_image))
    latents = sample_window(pipe.components.transformer, noise, image_latents, embeddings, config)

    # diffusers returns the generated latent frames without the conditioning frame 0.
    assert expected.shape == latents[:, :, 1:].shape
    torch.testing.assert_close(latents[:, :, 1:], expected, rtol=1e-5, atol=1e-5)
    assert not np.allclose(latents.numpy(), noise.numpy())

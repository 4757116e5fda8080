"""Real-weights path at tiny size: components saved to folders load back exactly; int8 loads pre-quantized."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from optimum.quanto import quantization_map
from safetensors.torch import load_file, save_file

from magic141.pipeline import Magic141Pipeline
from magic141.quantization import weight_bytes
from magic141.sampler import SamplerConfig
from magic141.weights import WeightPaths, quantize_weights_folder, read_prompt_format, save_i2v_components


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory, tiny_pipeline: Magic141Pipeline) -> Path:
    root = tmp_path_factory.mktemp("weights")
    save_i2v_components(tiny_pipeline.components, root)
    return root


def frames(pipe: Magic141Pipeline, image, seed: int = 2) -> np.ndarray:
    return np.concatenate([w.frames for w in pipe(image, "a harbour at dusk", num_frames=20, seed=seed,
                                                  sampler=SamplerConfig())])


def test_folder_weights_reproduce_the_in_memory_model(weights_dir, tiny_pipeline, prior_image):
    loaded = Magic141Pipeline.from_preset("tiny", weights=weights_dir, dtype=torch.float32)
    assert loaded.weights_fingerprint == tiny_pipeline.weights_fingerprint
    assert np.array_equal(frames(loaded, prior_image), frames(tiny_pipeline, prior_image))


def test_json_config_names_each_component(weights_dir, tmp_path):
    config = tmp_path / "weights.json"
    names = ["transformer", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "image_processor"]
    config.write_text(json.dumps({name: str(weights_dir / name) for name in names}))
    assert WeightPaths.resolve(config).transformer == weights_dir / "transformer"
    config.write_text(json.dumps({"transformer": "t", "vea": "v"}))
    with pytest.raises(ValueError, match="unknown component\\(s\\) vea"):
        WeightPaths.resolve(config)


def test_missing_and_misshaped_tensors_stop_the_load_with_their_names(weights_dir, tmp_path):
    broken = tmp_path / "broken"
    save_i2v_components(Magic141Pipeline.from_preset("tiny").components, broken)
    file = broken / "transformer" / "diffusion_pytorch_model.safetensors"
    tensors = load_file(file)
    del tensors["proj_out.bias"]
    tensors["norm_out.linear.bias"] = torch.zeros(3)
    save_file(tensors, file)
    with pytest.raises(ValueError) as error:
        Magic141Pipeline.from_preset("tiny", weights=broken)
    message = str(error.value)
    assert "transformer weights" in message and "norm_out.linear.bias" in message
    assert "\n" not in message


def test_components_of_different_models_are_refused_by_name(weights_dir, tmp_path):
    from transformers import CLIPTextConfig, CLIPTextModel

    other = CLIPTextModel(CLIPTextConfig(hidden_size=24, intermediate_size=48, num_hidden_layers=1,
                                         num_attention_heads=2, vocab_size=1000))
    other.save_pretrained(tmp_path / "other_clip", safe_serialization=True)
    config = tmp_path / "weights.json"
    names = ("transformer", "vae", "text_encoder", "tokenizer", "tokenizer_2", "image_processor")
    config.write_text(json.dumps({**{n: str(weights_dir / n) for n in names}, "text_encoder_2": "other_clip"}))
    with pytest.raises(ValueError, match=r"text_encoder_2 in .*other_clip has hidden size 24, but the transformer in "
                                         r".* expects 16 \(pooled_projection_dim\); use components of one model"):
        Magic141Pipeline.from_preset("tiny", weights=config)


def test_missing_folder_is_named(tmp_path):
    with pytest.raises(ValueError, match="weights folder .* does not exist"):
        WeightPaths.resolve(tmp_path / "nowhere")


def test_int8_folder_loads_pre_quantized_and_stays_close(weights_dir, tiny_pipeline, prior_image, tmp_path):
    out = quantize_weights_folder(weights_dir, tmp_path / "int8", "int8")
    quantized = Magic141Pipeline.from_preset("tiny", weights=out, dtype=torch.float32)
    # The quantized folder keeps bf16 weights beside the int8 ones, as it would for deployment.
    on_the_fly = Magic141Pipeline.from_preset("tiny", weights=weights_dir, quantize="int8", dtype=torch.bfloat16)
    for name in ("transformer", "text_encoder", "text_encoder_2"):
        module = getattr(quantized.components, name)
        assert quantization_map(module), f"{name} is quantized as saved"
        assert weight_bytes(module) < weight_bytes(getattr(tiny_pipeline.components, name))
    restored = frames(quantized, prior_image).astype(float)
    assert np.abs(restored - frames(on_the_fly, prior_image)).mean() < 2, "same int8 weights as quantizing on the fly (bf16 rounding aside)"
    reference = frames(tiny_pipeline, prior_image).astype(float)
    assert np.abs(frames(quantized, prior_image) - reference).mean() < 8, "int8 stays close to full precision"
    with pytest.raises(ValueError, match="not empty"):
        quantize_weights_folder(weights_dir, out, "int8")


def test_prompt_format_travels_with_the_transformer_folder(tiny_pipeline, tmp_path):
    official = dataclasses.replace(tiny_pipeline.components, prompt_format="magic141")
    root = save_i2v_components(official, tmp_path / "weights")
    loaded = Magic141Pipeline.from_preset("tiny", weights=root, dtype=torch.float32)
    assert loaded.components.prompt_format == "magic141"
    assert loaded.weights_fingerprint != tiny_pipeline.weights_fingerprint, "same tensors, different conditioning"
    quantized = quantize_weights_folder(root, tmp_path / "int8", "int8")
    assert read_prompt_format(quantized / "transformer") == "magic141"
    assert read_prompt_format(tmp_path / "nowhere") == "hunyuan-i2v"
    (root / "transformer" / "magic141.json").write_text('{"prompt_format": "t5"}')
    with pytest.raises(ValueError, match=r"not a valid prompt-format file .*unknown prompt format 't5'"):
        Magic141Pipeline.from_preset("tiny", weights=root, dtype=torch.float32)


def test_cli_quantization_levels_match_the_library():
    from magic141.quantization import LEVELS
    from tasks.request import QUANTIZATION_LEVELS

    assert set(QUANTIZATION_LEVELS) == set(LEVELS)

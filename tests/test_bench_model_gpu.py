"""bench/model_gpu.py: its counted FLOPs and prompt length are the model's, and it runs end to end on the tiny preset."""

import importlib.util
import json
import sys
from pathlib import Path

import PIL.Image
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from magic141.components import build_transformer
from magic141.pipeline import Magic141Pipeline
from magic141.presets import TransformerConfig, get_preset

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def model_gpu():
    sys.path.insert(0, str(ROOT / "bench"))
    spec = importlib.util.spec_from_file_location("bench_model_gpu", ROOT / "bench" / "model_gpu.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    yield module
    sys.path.remove(str(ROOT / "bench"))


def torch_counted_flops(config: TransformerConfig, text, latent: tuple[int, int, int], text_tokens: int, device: str) -> int:
    """FLOPs of one forward as torch's FlopCounterMode counts them (on "meta": shapes only, nothing computed)."""
    dtype = torch.bfloat16 if device == "meta" else torch.float32
    with torch.device(device):
        model = build_transformer(config, text).to(dtype).eval()
        frames, height, width = latent
        inputs = {
            "hidden_states": torch.randn(1, config.in_channels, frames, height, width, dtype=dtype),
            "timestep": torch.tensor([500.0]),
            "encoder_hidden_states": torch.randn(1, text_tokens, text.llm_hidden_size, dtype=dtype),
            "encoder_attention_mask": torch.ones(1, text_tokens),
            "pooled_projections": torch.randn(1, text.clip_hidden_size, dtype=dtype),
            "guidance": torch.tensor([6000.0], dtype=dtype) if config.guidance_embeds else None,
        }
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(**inputs, return_dict=False)
    return counter.get_total_flops()


@pytest.mark.parametrize(
    ("config", "latent", "text_tokens"),
    [
        (get_preset("tiny").transformer, (9, 6, 8), 37),
        (
            TransformerConfig(
                num_attention_heads=3,
                attention_head_dim=8,
                num_layers=2,
                num_single_layers=3,
                num_refiner_layers=2,
                rope_axes_dim=(2, 2, 4),
                guidance_embeds=False,
            ),
            (4, 4, 6),
            9,
        ),
    ],
)
def test_counted_flops_equal_torch_flop_counter_on_small_models(model_gpu, config, latent, text_tokens):
    text = get_preset("tiny").text
    counted = model_gpu.transformer_flops(config, text, *latent, text_tokens)
    assert counted["total"] == torch_counted_flops(config, text, latent, text_tokens, "cpu")
    assert counted["total"] == sum(value for part, value in counted.items() if part != "total")


def test_counted_flops_equal_torch_flop_counter_on_the_full_540p_window(model_gpu):
    preset = get_preset("full-540p")
    latent = (preset.window_latent_frames, preset.height // 8, preset.width // 8)
    tokens = model_gpu.prompt_tokens(preset.text)
    counted = model_gpu.transformer_flops(preset.transformer, preset.text, *latent, tokens)
    assert counted["total"] == torch_counted_flops(preset.transformer, preset.text, latent, tokens, "meta")
    assert 1.5e15 < counted["total"] < 2.5e15  # about 2 PFLOP per step for 21 x 68 x 120 latents


def test_prompt_tokens_is_the_length_the_encoder_gives(model_gpu, tiny_pipeline: Magic141Pipeline, prior_image: PIL.Image.Image):
    embeddings, _ = tiny_pipeline.encode_prompt(prior_image, "a lighthouse in a storm")
    assert embeddings.embeds.shape[1] == model_gpu.prompt_tokens(tiny_pipeline.preset.text)


def test_benchmark_measures_every_section_on_the_tiny_preset(model_gpu, tmp_path: Path):
    out = tmp_path / "figures.json"
    status = model_gpu.main(
        ["--preset", "tiny", "--device", "cpu", "--steps", "2", "--repeats", "1", "--no-write", "--json", str(out)]
    )
    assert status == 0
    results = json.loads(out.read_text())
    for level in ("bf16", "int8"):
        assert results[level]["step_seconds"] > 0
        assert results[level]["tflops"] > 0
        assert results[level]["window_seconds"] > 0
        video_seconds = get_preset("tiny").window_frames / get_preset("tiny").fps
        assert results[level]["video_seconds_per_wall_second"] == pytest.approx(video_seconds / results[level]["window_seconds"])
    assert results["int8"]["weight_bytes"] < results["bf16"]["weight_bytes"]
    assert results["vae_decode_seconds"] > 0
    # Same weights, noise and embeddings: diffusers' pipeline renders the same pixels.
    assert results["diffusers"]["max_pixel_difference"] < 1e-2
    assert results["diffusers"]["ratio"] > 0
    assert results["window"]["frames"] == get_preset("tiny").window_frames


def test_benchmark_refuses_cuda_without_a_gpu(model_gpu, capsys):
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is visible")
    with pytest.raises(SystemExit) as exit_info:
        model_gpu.main(["--no-write"])
    assert exit_info.value.code == 2
    assert "no CUDA device is visible" in capsys.readouterr().err

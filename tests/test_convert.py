"""Official Magic 1-For-1 checkpoint -> diffusers transformer: keys, fused splits, modulation order."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from diffusers import HunyuanVideoTransformer3DModel

from magic141.convert import convert_official_checkpoint, convert_official_transformer, convert_state_dict
from magic141.weights import read_prompt_format
from magic141.presets import get_preset


def original_state_dict(hidden: int, head_dim: int, double: int, single: int, refiner: int, text_dim: int,
                        pooled_dim: int, latent: int = 16, mlp_ratio: int = 4, device: str = "cpu") -> dict[str, torch.Tensor]:
    """Random tensors named and shaped as the official Magic141VideoDiffusionTransformer's state dict."""
    mlp = mlp_ratio * hidden
    shapes: dict[str, tuple[int, ...]] = {
        "img_in.proj.weight": (hidden, 2 * latent + 1, 1, 2, 2), "img_in.proj.bias": (hidden,),
        "time_in.mlp.0.weight": (hidden, 256), "time_in.mlp.0.bias": (hidden,),
        "time_in.mlp.2.weight": (hidden, hidden), "time_in.mlp.2.bias": (hidden,),
        "vector_in.in_layer.weight": (hidden, pooled_dim), "vector_in.in_layer.bias": (hidden,),
        "vector_in.out_layer.weight": (hidden, hidden), "vector_in.out_layer.bias": (hidden,),
        "text_guidance_in.mlp.0.weight": (hidden, 256), "text_guidance_in.mlp.0.bias": (hidden,),
        "text_guidance_in.mlp.2.weight": (hidden, hidden), "text_guidance_in.mlp.2.bias": (hidden,),
        "txt_in.input_embedder.weight": (hidden, text_dim), "txt_in.input_embedder.bias": (hidden,),
        "txt_in.t_embedder.mlp.0.weight": (hidden, 256), "txt_in.t_embedder.mlp.0.bias": (hidden,),
        "txt_in.t_embedder.mlp.2.weight": (hidden, hidden), "txt_in.t_embedder.mlp.2.bias": (hidden,),
        "txt_in.c_embedder.linear_1.weight": (hidden, text_dim), "txt_in.c_embedder.linear_1.bias": (hidden,),
        "txt_in.c_embedder.linear_2.weight": (hidden, hidden), "txt_in.c_embedder.linear_2.bias": (hidden,),
        "final_layer.linear.weight": (4 * latent, hidden), "final_layer.linear.bias": (4 * latent,),
        "final_layer.adaLN_modulation.1.weight": (2 * hidden, hidden), "final_layer.adaLN_modulation.1.bias": (2 * hidden,),
    }
    linear = {"qkv": (3 * hidden, hidden), "proj": (hidden, hidden), "fc1": (mlp, hidden), "fc2": (hidden, mlp)}
    for n in range(refiner):
        p = f"txt_in.individual_token_refiner.blocks.{n}."
        for name, shape in (("norm1", (hidden,)), ("norm2", (hidden,)), ("self_attn_qkv", linear["qkv"]),
                            ("self_attn_proj", linear["proj"]), ("mlp.fc1", linear["fc1"]), ("mlp.fc2", linear["fc2"]),
                            ("adaLN_modulation.1", (2 * hidden, hidden))):
            shapes[p + name + ".weight"] = shape
            shapes[p + name + ".bias"] = (shape[0],)
    for n in range(double):
        p = f"double_blocks.{n}."
        for side in ("img", "txt"):
            for name, shape in ((f"{side}_mod.linear", (6 * hidden, hidden)), (f"{side}_attn_qkv", linear["qkv"]),
                                (f"{side}_attn_proj", linear["proj"]), (f"{side}_mlp.fc1", linear["fc1"]),
                                (f"{side}_mlp.fc2", linear["fc2"])):
                shapes[p + name + ".weight"] = shape
                shapes[p + name + ".bias"] = (shape[0],)
            shapes[p + f"{side}_attn_q_norm.weight"] = (head_dim,)
            shapes[p + f"{side}_attn_k_norm.weight"] = (head_dim,)
    for n in range(single):
        p = f"single_blocks.{n}."
        for name, shape in (("linear1", (3 * hidden + mlp, hidden)), ("linear2", (hidden, hidden + mlp)),
                            ("modulation.linear", (3 * hidden, hidden))):
            shapes[p + name + ".weight"] = shape
            shapes[p + name + ".bias"] = (shape[0],)
        shapes[p + "q_norm.weight"] = (head_dim,)
        shapes[p + "k_norm.weight"] = (head_dim,)
    generator = torch.Generator().manual_seed(0)
    if device == "meta":
        return {k: torch.empty(s, device="meta") for k, s in shapes.items()}
    return {k: torch.randn(s, generator=generator) * 0.1 for k, s in shapes.items()}


@pytest.fixture(scope="module")
def official() -> dict[str, torch.Tensor]:
    return original_state_dict(hidden=32, head_dim=16, double=2, single=2, refiner=1, text_dim=24, pooled_dim=12)


@pytest.fixture(scope="module")
def converted(official) -> HunyuanVideoTransformer3DModel:
    return convert_official_transformer(official, torch.float32)


def test_config_is_read_off_the_checkpoint(converted):
    c = converted.config
    assert (c.in_channels, c.out_channels, c.num_attention_heads, c.attention_head_dim) == (33, 16, 2, 16)
    assert (c.num_layers, c.num_single_layers, c.num_refiner_layers) == (2, 2, 1)
    assert (c.text_embed_dim, c.pooled_projection_dim, c.guidance_embeds) == (24, 12, False)
    assert c.image_condition_type == "latent_concat"


@torch.no_grad()
def test_fused_projections_split_into_q_k_v(official, converted):
    x = torch.randn(5, 32)
    block = converted.transformer_blocks[1]
    qkv = F.linear(x, official["double_blocks.1.img_attn_qkv.weight"], official["double_blocks.1.img_attn_qkv.bias"])
    torch.testing.assert_close(torch.cat([block.attn.to_q(x), block.attn.to_k(x), block.attn.to_v(x)], -1), qkv)
    txt = F.linear(x, official["double_blocks.1.txt_attn_qkv.weight"], official["double_blocks.1.txt_attn_qkv.bias"])
    torch.testing.assert_close(
        torch.cat([block.attn.add_q_proj(x), block.attn.add_k_proj(x), block.attn.add_v_proj(x)], -1), txt)
    single = converted.single_transformer_blocks[0]
    fused = F.linear(x, official["single_blocks.0.linear1.weight"], official["single_blocks.0.linear1.bias"])
    parts = [single.attn.to_q(x), single.attn.to_k(x), single.attn.to_v(x), single.proj_mlp(x)]
    torch.testing.assert_close(torch.cat(parts, -1), fused)
    refiner = converted.context_embedder.token_refiner.refiner_blocks[0]
    ref = F.linear(x, official["txt_in.individual_token_refiner.blocks.0.self_attn_qkv.weight"],
                   official["txt_in.individual_token_refiner.blocks.0.self_attn_qkv.bias"])
    torch.testing.assert_close(torch.cat([refiner.attn.to_q(x), refiner.attn.to_k(x), refiner.attn.to_v(x)], -1), ref)


@torch.no_grad()
def test_modulation_matches_the_original_computation(official, converted):
    x, c = torch.randn(1, 5, 32), torch.randn(1, 32)
    # Double-stream block: original img_mod gives (shift, scale, gate) x 2 on LayerNorm(x) without affine.
    shift, scale, gate, *_ = F.linear(F.silu(c), official["double_blocks.0.img_mod.linear.weight"],
                                      official["double_blocks.0.img_mod.linear.bias"]).chunk(6, dim=-1)
    expected = F.layer_norm(x, (32,), eps=1e-6) * (1 + scale[:, None]) + shift[:, None]
    normed, gate_msa, *_ = converted.transformer_blocks[0].norm1(x, emb=c)
    torch.testing.assert_close(normed, expected)
    torch.testing.assert_close(gate_msa, gate)
    # Final layer: the original orders its modulation (shift, scale); diffusers' norm_out expects (scale, shift).
    shift, scale = F.linear(F.silu(c), official["final_layer.adaLN_modulation.1.weight"],
                            official["final_layer.adaLN_modulation.1.bias"]).chunk(2, dim=-1)
    original = F.linear(F.layer_norm(x, (32,), eps=1e-6) * (1 + scale[:, None]) + shift[:, None],
                        official["final_layer.linear.weight"], official["final_layer.linear.bias"])
    torch.testing.assert_close(converted.proj_out(converted.norm_out(x, c)), original)


def test_full_size_keys_and_shapes_match_diffusers():
    preset = get_preset("full-540p")
    t = preset.transformer
    official = original_state_dict(t.hidden_size, t.attention_head_dim, t.num_layers, t.num_single_layers,
                                   t.num_refiner_layers, preset.text.llm_hidden_size, preset.text.clip_hidden_size,
                                   device="meta")
    assert len(official) == 856, "852 transformer tensors and the 4 unused text_guidance_in tensors"
    model = convert_official_transformer(official)
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(12.8e9, rel=0.01)


def test_unknown_missing_and_misshaped_keys_are_named(official):
    with pytest.raises(ValueError, match=r"not part of the Magic 1-For-1 transformer: double_blocks.0.extra.weight"):
        convert_state_dict({**official, "double_blocks.0.extra.weight": torch.zeros(1)})
    missing = {k: v for k, v in official.items() if k != "single_blocks.1.q_norm.weight"}
    with pytest.raises(ValueError, match=r"1 missing: single_transformer_blocks.1.attn.norm_q.weight"):
        convert_official_transformer(missing)
    wrong = {**official, "final_layer.linear.bias": torch.zeros(3)}
    with pytest.raises(ValueError, match=r"wrong shape: proj_out.bias \(3,\) != \(64,\)"):
        convert_official_transformer(wrong)
    narrow = {**official, "img_in.proj.weight": torch.zeros(32, 16, 1, 2, 2)}
    with pytest.raises(ValueError, match="2C\\+1"):
        convert_official_transformer(narrow)


def test_convert_command_writes_safetensors_that_load(official, converted, tmp_path: Path):
    checkpoint = tmp_path / "dmd_4_step_i2v.pth"
    torch.save({"state_dict": {f"model.{k}": v for k, v in official.items()}}, checkpoint)
    out = convert_official_checkpoint(checkpoint, tmp_path / "transformer", dtype=torch.float32)
    assert (out / "diffusion_pytorch_model.safetensors").is_file() and (out / "config.json").is_file()
    assert read_prompt_format(out) == "magic141", "official weights are declared for the official conditioning"
    loaded = HunyuanVideoTransformer3DModel.from_pretrained(out)
    for key, value in converted.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value)
    with pytest.raises(ValueError, match="not empty"):
        convert_official_checkpoint(checkpoint, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dmd_4_step_i2v.pth", "transformer"]


class NotATensor:
    """A pickled object that a weights-only load must refuse to construct."""


def test_checkpoints_with_arbitrary_objects_are_not_unpickled(official, tmp_path: Path):
    checkpoint = tmp_path / "unsafe.pth"
    torch.save({"state_dict": official, "extra": NotATensor()}, checkpoint)
    with pytest.raises(ValueError, match="not unpickled for safety"):
        convert_official_checkpoint(checkpoint, tmp_path / "out")
    assert not (tmp_path / "out").exists()

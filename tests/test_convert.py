"""Official Magic 1-For-1 checkpoint -> diffusers transformer: keys, fused splits, modulation order."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from diffusers import HunyuanVideoTransformer3DModel
from official_checkpoint import original_state_dict

from magic141.convert import convert_official_checkpoint, convert_official_transformer, convert_state_dict
from magic141.presets import get_preset
from magic141.weights import read_convention, read_prompt_format

ROPE = (4, 6, 6)  # the rotary split of the small checkpoint's 16-wide heads


@pytest.fixture(scope="module")
def official() -> dict[str, torch.Tensor]:
    return original_state_dict(hidden=32, head_dim=16, double=2, single=2, refiner=1, text_dim=24, pooled_dim=12)


@pytest.fixture(scope="module")
def converted(official) -> HunyuanVideoTransformer3DModel:
    return convert_official_transformer(official, torch.float32, rope_axes_dim=ROPE)


def test_config_is_read_off_the_checkpoint(converted):
    c = converted.config
    assert (c.in_channels, c.out_channels, c.num_attention_heads, c.attention_head_dim) == (33, 16, 2, 16)
    assert (c.num_layers, c.num_single_layers, c.num_refiner_layers) == (2, 2, 1)
    assert (c.text_embed_dim, c.pooled_projection_dim, c.guidance_embeds) == (24, 12, False)
    assert c.image_condition_type == "latent_concat" and tuple(c.rope_axes_dim) == ROPE


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
    assert tuple(model.config.rope_axes_dim) == t.rope_axes_dim, "128-wide heads get HunyuanVideo's rotary split"


def test_heads_of_another_width_need_their_rotary_split_named(official):
    with pytest.raises(ValueError, match="16 wide, not HunyuanVideo's 128; name their rotary split with --rope-axes"):
        convert_official_transformer(official)
    for axes in ((4, 6, 7), (4, 4, 4), (8, 8), (0, 8, 8)):
        with pytest.raises(ValueError, match="do not fit 16-wide attention heads; give three even numbers"):
            convert_official_transformer(official, rope_axes_dim=axes)


def test_unknown_missing_and_misshaped_keys_are_named(official):
    with pytest.raises(ValueError, match=r"not part of the Magic 1-For-1 transformer: double_blocks.0.extra.weight"):
        convert_state_dict({**official, "double_blocks.0.extra.weight": torch.zeros(1)})
    missing = {k: v for k, v in official.items() if k != "single_blocks.1.q_norm.weight"}
    with pytest.raises(ValueError, match=r"1 missing: single_transformer_blocks.1.attn.norm_q.weight"):
        convert_official_transformer(missing, rope_axes_dim=ROPE)
    wrong = {**official, "final_layer.linear.bias": torch.zeros(3)}
    with pytest.raises(ValueError, match=r"wrong shape: proj_out.bias \(3,\) != \(64,\)"):
        convert_official_transformer(wrong, rope_axes_dim=ROPE)
    narrow = {**official, "img_in.proj.weight": torch.zeros(32, 16, 1, 2, 2)}
    with pytest.raises(ValueError, match="2C\\+1"):
        convert_official_transformer(narrow, rope_axes_dim=ROPE)


def test_convert_command_writes_safetensors_that_load(official, converted, tmp_path: Path):
    checkpoint = tmp_path / "dmd_4_step_i2v.pth"
    torch.save({"state_dict": {f"model.{k}": v for k, v in official.items()}}, checkpoint)
    out, guidance = convert_official_checkpoint(checkpoint, tmp_path / "transformer", dtype=torch.float32,
                                                rope_axes_dim=ROPE)
    assert guidance is None  # the official checkpoint has no guidance_in tensors to speak of
    assert (out / "diffusion_pytorch_model.safetensors").is_file() and (out / "config.json").is_file()
    assert read_prompt_format(out) == "magic141", "official weights are declared for the official conditioning"
    assert read_convention(out) == "official", "and sample as the official inference does"
    loaded = HunyuanVideoTransformer3DModel.from_pretrained(out)
    for key, value in converted.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value)
    with pytest.raises(ValueError, match="not empty"):
        convert_official_checkpoint(checkpoint, out, rope_axes_dim=ROPE)
    with pytest.raises(ValueError, match="missing' does not exist; create it or choose another --out"):
        convert_official_checkpoint(checkpoint, tmp_path / "missing" / "transformer", rope_axes_dim=ROPE)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dmd_4_step_i2v.pth", "transformer"]


class NotATensor:
    """A pickled object that a weights-only load must refuse to construct."""


def test_checkpoints_with_arbitrary_objects_are_not_unpickled(official, tmp_path: Path):
    checkpoint = tmp_path / "unsafe.pth"
    torch.save({"state_dict": official, "extra": NotATensor()}, checkpoint)
    with pytest.raises(ValueError, match="not unpickled for safety"):
        convert_official_checkpoint(checkpoint, tmp_path / "out", rope_axes_dim=ROPE)
    assert not (tmp_path / "out").exists()


def test_guidance_in_tensors_are_dropped_as_the_official_class_does_or_kept_on_request(official, tmp_path: Path):
    hidden = official["img_in.proj.weight"].shape[0]
    generator = torch.Generator().manual_seed(1)
    embedder = {"guidance_in.mlp.0.weight": torch.randn(hidden, 256, generator=generator),
                "guidance_in.mlp.0.bias": torch.randn(hidden, generator=generator),
                "guidance_in.mlp.2.weight": torch.randn(hidden, hidden, generator=generator),
                "guidance_in.mlp.2.bias": torch.randn(hidden, generator=generator)}
    checkpoint = tmp_path / "guided.pth"
    torch.save({**official, **embedder}, checkpoint)
    dropped, said = convert_official_checkpoint(checkpoint, tmp_path / "dropped", torch.float32, ROPE)
    assert said.startswith("dropped its guidance_in tensors, as the official model class does")
    assert HunyuanVideoTransformer3DModel.load_config(dropped)["guidance_embeds"] is False
    kept, said = convert_official_checkpoint(checkpoint, tmp_path / "kept", torch.float32, ROPE, keep_guidance=True)
    assert said.startswith("kept its guidance_in tensors as the guidance embedding")
    model = HunyuanVideoTransformer3DModel.from_pretrained(kept)
    assert model.config.guidance_embeds is True
    torch.testing.assert_close(model.time_text_embed.guidance_embedder.linear_1.weight, embedder["guidance_in.mlp.0.weight"])

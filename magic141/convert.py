"""Convert the official Magic 1-For-1 transformer checkpoint to diffusers' HunyuanVideo layout.

The official ``Magic141VideoDiffusionTransformer`` keeps HunyuanVideo's original parameter names:
fused ``[q | k | v]`` projections, a fused ``[q | k | v | mlp]`` input projection in single-stream
blocks, and a final modulation ordered ``[shift, scale]`` where diffusers expects ``[scale, shift]``.
Its ``text_guidance_in`` embedder is built but never used by its forward pass (and its 4-step
config disables guidance embedding), so it is dropped: guidance is baked into the weights. A checkpoint
that carries ``guidance_in`` tensors (a guidance embedder the official class would drop) loses them too,
unless ``keep_guidance`` makes them the diffusers guidance embedder; the converter says which it did.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from diffusers import HunyuanVideoTransformer3DModel
from safetensors.torch import load_file

from magic141.presets import get_preset
from magic141.utils import InputError, first_line
from magic141.weights import check_new_folder, check_state_dict, write_declarations

logger = logging.getLogger(__name__)

# Keys of the official checkpoint that have no counterpart in the diffusers model.
DROPPED_PREFIXES = ("text_guidance_in.", "audio_guidance_in.", "vae.")
# Wrappers that training code puts around the transformer's own keys.
WRAPPER_PREFIXES = ("hydit_unimodel.guidance_model.feedforward_model.", "_orig_mod.", "module.", "model.")
CONTAINER_KEYS = ("state_dict", "module", "model")
# HunyuanVideo-13B's rotary split of a 128-wide attention head over (time, height, width), which the
# checkpoint does not record; checkpoints with other head widths must name theirs.
HUNYUAN_ROPE_AXES = get_preset("full-540p").transformer.rope_axes_dim

# Top-level modules: original prefix -> diffusers prefix.
TOP_LEVEL = {
    "img_in.proj.": "x_embedder.proj.",
    "time_in.mlp.0.": "time_text_embed.timestep_embedder.linear_1.",
    "time_in.mlp.2.": "time_text_embed.timestep_embedder.linear_2.",
    "vector_in.in_layer.": "time_text_embed.text_embedder.linear_1.",
    "vector_in.out_layer.": "time_text_embed.text_embedder.linear_2.",
    "guidance_in.mlp.0.": "time_text_embed.guidance_embedder.linear_1.",
    "guidance_in.mlp.2.": "time_text_embed.guidance_embedder.linear_2.",
    "txt_in.input_embedder.": "context_embedder.proj_in.",
    "txt_in.t_embedder.mlp.0.": "context_embedder.time_text_embed.timestep_embedder.linear_1.",
    "txt_in.t_embedder.mlp.2.": "context_embedder.time_text_embed.timestep_embedder.linear_2.",
    "txt_in.c_embedder.linear_1.": "context_embedder.time_text_embed.text_embedder.linear_1.",
    "txt_in.c_embedder.linear_2.": "context_embedder.time_text_embed.text_embedder.linear_2.",
    "final_layer.linear.": "proj_out.",
    "final_layer.adaLN_modulation.1.": "norm_out.linear.",
}

# Inside numbered blocks: original module -> diffusers module, or the modules a fused tensor splits into.
BLOCKS: dict[str, tuple[str, dict[str, str | tuple[str, ...]]]] = {
    "txt_in.individual_token_refiner.blocks": (
        "context_embedder.token_refiner.refiner_blocks",
        {
            "norm1": "norm1",
            "norm2": "norm2",
            "self_attn_qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
            "self_attn_proj": "attn.to_out.0",
            "mlp.fc1": "ff.net.0.proj",
            "mlp.fc2": "ff.net.2",
            "adaLN_modulation.1": "norm_out.linear",
        },
    ),
    "double_blocks": (
        "transformer_blocks",
        {
            "img_mod.linear": "norm1.linear",
            "txt_mod.linear": "norm1_context.linear",
            "img_attn_qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
            "txt_attn_qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
            "img_attn_q_norm": "attn.norm_q",
            "img_attn_k_norm": "attn.norm_k",
            "txt_attn_q_norm": "attn.norm_added_q",
            "txt_attn_k_norm": "attn.norm_added_k",
            "img_attn_proj": "attn.to_out.0",
            "txt_attn_proj": "attn.to_add_out",
            "img_mlp.fc1": "ff.net.0.proj",
            "img_mlp.fc2": "ff.net.2",
            "txt_mlp.fc1": "ff_context.net.0.proj",
            "txt_mlp.fc2": "ff_context.net.2",
        },
    ),
    "single_blocks": (
        "single_transformer_blocks",
        {
            "linear1": ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"),
            "linear2": "proj_out",
            "q_norm": "attn.norm_q",
            "k_norm": "attn.norm_k",
            "modulation.linear": "norm.linear",
        },
    ),
}

_BLOCK_KEY = re.compile(r"^(?P<group>.+?)\.(?P<index>\d+)\.(?P<module>.+)\.(?P<param>weight|bias)$")


def unwrap_checkpoint(checkpoint: Any) -> dict[str, torch.Tensor]:
    """The transformer's own tensors: containers (``state_dict``, ``module``, ``model``) and wrapper prefixes removed."""
    while isinstance(checkpoint, Mapping) and not any(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        inner = next((checkpoint[key] for key in CONTAINER_KEYS if key in checkpoint), None)
        if inner is None:
            raise InputError(
                f"checkpoint holds no tensors and none of {', '.join(CONTAINER_KEYS)}; "
                f"found keys: {', '.join(list(checkpoint)[:8])}"
            )
        checkpoint = inner
    if not isinstance(checkpoint, Mapping):
        raise InputError(f"checkpoint is a {type(checkpoint).__name__}, not a state dict")
    state: dict[str, torch.Tensor] = {}
    for key, value in checkpoint.items():
        if not isinstance(value, torch.Tensor):
            continue
        for prefix in WRAPPER_PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix) :]
        state[key] = value
    return state


def load_official_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """Read an official checkpoint safely: safetensors, or a ``.pth`` through ``torch.load(weights_only=True)``."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"checkpoint {str(path)!r} does not exist or is not a file")
    if path.suffix == ".safetensors":
        return unwrap_checkpoint(load_file(path))
    try:
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:
            # Old (non-zip) pickles cannot be memory-mapped.
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        reason = first_line(exc)
        raise InputError(
            f"checkpoint {str(path)!r} holds Python objects besides tensors and is not unpickled for safety "
            f"({reason}); save its state dict alone, or as safetensors"
        ) from None
    return unwrap_checkpoint(checkpoint)


def _split(tensor: torch.Tensor, sizes: tuple[int, ...]) -> tuple[torch.Tensor, ...]:
    return tuple(part.contiguous() for part in torch.split(tensor, sizes, dim=0))


GUIDANCE_PREFIX = "guidance_in."


def convert_state_dict(state: Mapping[str, torch.Tensor], keep_guidance: bool = False) -> dict[str, torch.Tensor]:
    """Rename and split official keys into diffusers keys; unknown keys raise ``ValueError`` naming them.
    ``guidance_in`` tensors are dropped unless ``keep_guidance``."""
    hidden = state["img_in.proj.weight"].shape[0]
    converted: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    for key, tensor in state.items():
        if key.startswith(DROPPED_PREFIXES) or (key.startswith(GUIDANCE_PREFIX) and not keep_guidance):
            continue
        top = next((prefix for prefix in TOP_LEVEL if key.startswith(prefix)), None)
        if top is not None:
            if key.startswith("final_layer.adaLN_modulation.1."):
                shift, scale = tensor.chunk(2, dim=0)
                tensor = torch.cat([scale, shift], dim=0)
            converted[TOP_LEVEL[top] + key[len(top) :]] = tensor
            continue
        match = _BLOCK_KEY.match(key)
        block = BLOCKS.get(match["group"]) if match else None
        target = block[1].get(match["module"]) if block else None
        if target is None:
            unknown.append(key)
            continue
        prefix = f"{block[0]}.{match['index']}."
        param = match["param"]
        if isinstance(target, str):
            converted[f"{prefix}{target}.{param}"] = tensor
            continue
        sizes = (hidden,) * 3 + ((tensor.shape[0] - 3 * hidden,) if len(target) == 4 else ())
        for name, part in zip(target, _split(tensor, sizes), strict=True):
            converted[f"{prefix}{name}.{param}"] = part
    if unknown:
        raise InputError(
            f"{len(unknown)} key(s) of the checkpoint are not part of the Magic 1-For-1 transformer: "
            f"{', '.join(unknown[:10])}{' ...' if len(unknown) > 10 else ''}"
        )
    return converted


def rope_axes_for(head_dim: int, rope_axes_dim: tuple[int, ...] | None) -> tuple[int, int, int]:
    """The rotary split of a ``head_dim``-wide head: HunyuanVideo's for 128, else the given one, checked."""
    if rope_axes_dim is None:
        if head_dim != sum(HUNYUAN_ROPE_AXES):
            raise InputError(
                f"checkpoint's attention heads are {head_dim} wide, not HunyuanVideo's {sum(HUNYUAN_ROPE_AXES)}; "
                f"name their rotary split with --rope-axes T,H,W (even numbers summing to {head_dim})"
            )
        return HUNYUAN_ROPE_AXES
    axes = tuple(rope_axes_dim)
    if len(axes) != 3 or sum(axes) != head_dim or any(a <= 0 or a % 2 for a in axes):
        raise InputError(
            f"rope axes {','.join(map(str, axes))} do not fit {head_dim}-wide attention heads; "
            f"give three even numbers T,H,W summing to {head_dim}"
        )
    return axes[0], axes[1], axes[2]


def official_transformer_config(
    state: Mapping[str, torch.Tensor], rope_axes_dim: tuple[int, ...] | None = None, keep_guidance: bool = False
) -> dict[str, Any]:
    """The diffusers config of the transformer an official state dict belongs to, read off its shapes.

    The rotary split is not in the state dict: HunyuanVideo's for 128-wide heads, else ``rope_axes_dim``.
    """

    def count(prefix: str) -> int:
        return len({key.split(".")[len(prefix.split("."))] for key in state if key.startswith(prefix + ".")})

    patch = state["img_in.proj.weight"].shape
    hidden, in_channels = patch[0], patch[1]
    head_dim = state["double_blocks.0.img_attn_q_norm.weight"].shape[0]
    out_features = state["final_layer.linear.weight"].shape[0]
    patch_t, patch_h = patch[2], patch[3]
    return {
        "in_channels": in_channels,
        "out_channels": out_features // (patch_t * patch_h * patch[4]),
        "num_attention_heads": hidden // head_dim,
        "attention_head_dim": head_dim,
        "num_layers": count("double_blocks"),
        "num_single_layers": count("single_blocks"),
        "num_refiner_layers": count("txt_in.individual_token_refiner.blocks"),
        "mlp_ratio": state["double_blocks.0.img_mlp.fc1.weight"].shape[0] / hidden,
        "patch_size": patch_h,
        "patch_size_t": patch_t,
        "guidance_embeds": keep_guidance and "guidance_in.mlp.0.weight" in state,
        "text_embed_dim": state["txt_in.input_embedder.weight"].shape[1],
        "pooled_projection_dim": state["vector_in.in_layer.weight"].shape[1],
        "rope_axes_dim": rope_axes_for(head_dim, rope_axes_dim),
        "image_condition_type": "latent_concat",
    }


def convert_official_transformer(
    state: Mapping[str, torch.Tensor], dtype: torch.dtype = torch.bfloat16, rope_axes_dim: tuple[int, ...] | None = None,
    keep_guidance: bool = False,
) -> HunyuanVideoTransformer3DModel:
    """Build the diffusers transformer holding an official state dict's weights (in ``dtype``); ``keep_guidance``
    keeps a ``guidance_in`` embedder as the guidance embedding."""
    for key in ("img_in.proj.weight", "double_blocks.0.img_attn_q_norm.weight", "final_layer.linear.weight"):
        if key not in state:
            raise InputError(f"checkpoint lacks {key!r}; is it a Magic 1-For-1 / HunyuanVideo transformer?")
    config = official_transformer_config(state, rope_axes_dim, keep_guidance)
    latent = config["out_channels"]
    if config["in_channels"] != 2 * latent + 1:
        raise InputError(
            f"checkpoint's patch embedding takes {config['in_channels']} channels, expected 2C+1 = {2 * latent + 1} "
            f"for an image-to-video transformer with C = {latent}"
        )
    converted = convert_state_dict(state, keep_guidance)
    with torch.device("meta"):
        model = HunyuanVideoTransformer3DModel.from_config(config)
    check_state_dict(model.state_dict(), converted, source="converted checkpoint")
    model.load_state_dict({k: v.to(dtype) for k, v in converted.items()}, strict=True, assign=True)
    logger.info(
        "converted %d official tensors into %d diffusers tensors (%d double, %d single blocks)",
        len(state), len(converted), config["num_layers"], config["num_single_layers"],
    )
    return model.eval()


def convert_official_checkpoint(
    checkpoint: str | Path,
    out_dir: str | Path,
    dtype: torch.dtype = torch.bfloat16,
    rope_axes_dim: tuple[int, ...] | None = None,
    keep_guidance: bool = False,
) -> tuple[Path, str | None]:
    """``magic141 model convert``: write the converted transformer as safetensors in diffusers layout; return
    its folder and, for a checkpoint with ``guidance_in`` tensors, a line saying what became of them."""
    out = check_new_folder(out_dir)
    state = load_official_checkpoint(checkpoint)
    model = convert_official_transformer(state, dtype, rope_axes_dim, keep_guidance)
    guidance = None
    if any(key.startswith(GUIDANCE_PREFIX) for key in state):
        guidance = ("kept its guidance_in tensors as the guidance embedding: --guidance is a model input"
                    if keep_guidance else
                    "dropped its guidance_in tensors, as the official model class does (--guidance is then refused); "
                    "--keep-guidance keeps them as a guidance embedding")
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.absolute().parent))
    try:
        model.save_pretrained(staging, safe_serialization=True)
        write_declarations(staging, "magic141", "official")  # the official checkpoint was trained on that conditioning
        if out.exists():
            out.rmdir()
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out, guidance

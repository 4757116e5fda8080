"""State dicts named and shaped as the official Magic 1-For-1 transformer's, with random weights."""

from __future__ import annotations

import torch


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

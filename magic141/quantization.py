"""Weight-only quantization with optimum-quanto (paper Sec. 3.4: int8 weights, bf16 activations).

Quantized components are saved as safetensors with quanto's quantization map beside them and are
rebuilt with ``optimum.quanto.requantize``, which restores the int8/int4 tensors without re-quantizing.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from diffusers import ModelMixin
from optimum.quanto import freeze, qint4, qint8, quantization_map, quantize, requantize
from safetensors.torch import load_file, save_file
from transformers import AutoConfig

from magic141.utils import InputError

logger = logging.getLogger(__name__)

LEVELS = {"int8": qint8, "int4": qint4}
# Components quantized as in the paper: the DiT and the text encoders (the LLaVA VLM and CLIP text).
QUANTIZED_COMPONENTS = ("transformer", "text_encoder", "text_encoder_2")


def check_level(level: str) -> str:
    if level not in LEVELS:
        raise InputError(f"unknown quantization level {level!r}; choose one of: {', '.join(LEVELS)}")
    return level


def quantize_weights(module: torch.nn.Module, level: str = "int8") -> torch.nn.Module:
    """Quantize the weights of every linear layer of ``module`` in place and freeze them."""
    # The language-model head is tied to the token embeddings and never used for encoding: keep it as is.
    quantize(module, weights=LEVELS[check_level(level)], activations=None, exclude=["lm_head"])
    freeze(module)
    return module


def weight_bytes(module: torch.nn.Module) -> int:
    """Bytes of every tensor the module stores (quantized data and scales included; tied tensors once)."""
    seen = {id(t): t.numel() * t.element_size() for t in module.state_dict(keep_vars=True).values()}
    return sum(seen.values())


def parameter_count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


QMAP_FILE = "quanto_qmap.json"
WEIGHTS_FILE = "model.safetensors"


def is_quantized_folder(folder: str | Path) -> bool:
    return (Path(folder) / QMAP_FILE).is_file()


def save_quantized(module: torch.nn.Module, folder: str | Path) -> Path:
    """Save a quantized diffusers or transformers model: config, safetensors weights, quantization map."""
    qmap = quantization_map(module)
    if not qmap:
        raise InputError(f"{type(module).__name__} is not quantized; quantize it before saving")
    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    if isinstance(module, ModelMixin):
        module.save_config(root)
    else:
        module.config.save_pretrained(root)
    tensors = {name: tensor.contiguous() for name, tensor in module.state_dict().items()}
    save_file(tensors, root / WEIGHTS_FILE)
    (root / QMAP_FILE).write_text(json.dumps(qmap, indent=1))
    return root


def load_quantized(folder: str | Path, model_class: type) -> torch.nn.Module:
    """Rebuild a model saved by :func:`save_quantized` and restore its quantized weights as they are."""
    root = Path(folder)
    qmap = json.loads((root / QMAP_FILE).read_text())
    if issubclass(model_class, ModelMixin):
        with torch.device("meta"):
            model = model_class.from_config(model_class.load_config(root))
    else:
        # Built on the CPU: transformers models compute non-persistent buffers (position ids) in their
        # constructors, which a meta-device build would leave empty.
        model = model_class._from_config(AutoConfig.from_pretrained(root), dtype=torch.bfloat16)
    state = load_file(root / WEIGHTS_FILE)
    requantize(model, state_dict=state, quantization_map=qmap, device=torch.device("cpu"))
    missing = sorted(k for k in set(model.state_dict()) - set(state) if not _tied(model, k))
    if missing:
        raise InputError(f"quantized weights in {root} lack {len(missing)} tensor(s): {', '.join(missing[:8])}")
    return model.eval()


def _tied(model: torch.nn.Module, key: str) -> bool:
    return key == "lm_head.weight" and bool(getattr(model.config, "tie_word_embeddings", False))

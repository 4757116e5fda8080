"""Weight-only quantization with optimum-quanto (paper Sec. 3.4: int8 weights, bf16 activations).

Quantized components are saved with quanto's own serialisation (safetensors + a quantization map)
and reload without re-quantizing.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from diffusers import ModelMixin
from optimum.quanto import QuantizedDiffusersModel, QuantizedTransformersModel, freeze, qint4, qint8, quantize
from transformers import AutoModel, AutoModelForImageTextToText, PreTrainedModel

logger = logging.getLogger(__name__)

LEVELS = {"int8": qint8, "int4": qint4}
QMAP_FILES = (QuantizedDiffusersModel._qmap_name(), QuantizedTransformersModel._qmap_name())
# Components quantized as in the paper: the DiT and the text encoders (the LLaVA VLM and CLIP text).
QUANTIZED_COMPONENTS = ("transformer", "text_encoder", "text_encoder_2")


def check_level(level: str) -> str:
    if level not in LEVELS:
        raise ValueError(f"unknown quantization level {level!r}; choose one of: {', '.join(LEVELS)}")
    return level


def quantize_weights(module: torch.nn.Module, level: str = "int8") -> torch.nn.Module:
    """Quantize the weights of every linear layer of ``module`` in place and freeze them."""
    quantize(module, weights=LEVELS[check_level(level)], activations=None)
    freeze(module)
    return module


def weight_bytes(module: torch.nn.Module) -> int:
    """Bytes of every tensor the module stores (quantized data and scales included; tied tensors once)."""
    seen = {id(t): t.numel() * t.element_size() for t in module.state_dict(keep_vars=True).values()}
    return sum(seen.values())


def parameter_count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _wrapper_for(model_class: type) -> type:
    if issubclass(model_class, ModelMixin):
        return type(f"Quantized{model_class.__name__}", (QuantizedDiffusersModel,), {"base_class": model_class})
    if issubclass(model_class, PreTrainedModel):
        auto = AutoModelForImageTextToText if "ForConditionalGeneration" in model_class.__name__ else AutoModel
        return type(f"Quantized{model_class.__name__}", (QuantizedTransformersModel,), {"auto_class": auto})
    raise TypeError(f"cannot save or load a quantized {model_class.__name__}")


def is_quantized_folder(folder: str | Path) -> bool:
    return any((Path(folder) / name).is_file() for name in QMAP_FILES)


def save_quantized(module: torch.nn.Module, folder: str | Path) -> Path:
    """Save a quantized diffusers or transformers model (safetensors + quantization map)."""
    wrapper = _wrapper_for(type(module))
    wrapper(module).save_pretrained(Path(folder))
    return Path(folder)


def load_quantized(folder: str | Path, model_class: type) -> torch.nn.Module:
    """Reload a model saved by :func:`save_quantized`: quantized weights are restored as they are."""
    loaded = _wrapper_for(model_class).from_pretrained(Path(folder))
    return loaded._wrapped

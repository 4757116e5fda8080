"""Load and save the image-to-video components from local folders (diffusers / transformers layout).

A weights folder holds one subfolder per component, as diffusers' HunyuanVideo I2V pipeline does:
``transformer/ vae/ text_encoder/ text_encoder_2/ tokenizer/ tokenizer_2/ image_processor/``, and
optionally ``prior/`` (any diffusers text-to-image pipeline). A JSON file can instead name each
component's folder. Weights load only from safetensors. Quantized components (saved by
:func:`magic141.quantization.save_quantized`) are recognised by their quantization map and load
without re-quantizing.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from diffusers import (
    AutoencoderKLHunyuanVideo,
    FlowMatchEulerDiscreteScheduler,
    HunyuanVideoTransformer3DModel,
    ModelMixin,
)
from optimum.quanto import quantization_map
from transformers import AutoTokenizer, CLIPImageProcessor, CLIPTextModel, CLIPTokenizer, LlavaForConditionalGeneration

from magic141.components import I2VComponents
from magic141.conditioning import (
    CONVENTIONS,
    IMAGE_FRAMES,
    PROMPT_FORMATS,
    check_convention,
    check_image_frames,
    check_prompt_format,
    prompt_template_for,
)
from magic141.quantization import (
    QUANTIZED_COMPONENTS,
    check_level,
    is_quantized_folder,
    load_quantized,
    quantize_weights,
    save_quantized,
)
from magic141.utils import InputError
from magic141.weight_paths import WeightPaths

logger = logging.getLogger(__name__)


def _raise_mismatch(source: str, missing: list[str], unexpected: list[str], wrong: list[str]) -> None:
    problems = [
        f"{len(items)} {label}: {', '.join(sorted(items)[:8])}{' ...' if len(items) > 8 else ''}"
        for label, items in (("missing", missing), ("unexpected", unexpected), ("with wrong shape", wrong))
        if items
    ]
    if problems:
        raise InputError(f"{source} does not match the model: " + "; ".join(problems))


def check_state_dict(expected: Mapping[str, torch.Tensor], got: Mapping[str, torch.Tensor], source: str) -> None:
    """Raise ``ValueError`` naming every missing, unexpected and wrongly shaped key of ``got``."""
    wrong = [
        f"{key} {tuple(got[key].shape)} != {tuple(expected[key].shape)}"
        for key in sorted(set(expected) & set(got))
        if got[key].shape != expected[key].shape
    ]
    _raise_mismatch(source, sorted(set(expected) - set(got)), sorted(set(got) - set(expected)), wrong)


def _check_loading_info(info: Mapping[str, Any], source: str) -> None:
    """The same check on the loading info that diffusers' and transformers' ``from_pretrained`` return."""
    wrong = [str(item[0]) if isinstance(item, tuple) else str(item) for item in info.get("mismatched_keys", [])]
    _raise_mismatch(source, list(info.get("missing_keys", [])), list(info.get("unexpected_keys", [])), wrong)


def _load_model(cls: type, path: Path, dtype: torch.dtype, name: str) -> torch.nn.Module:
    if is_quantized_folder(path):
        logger.info("loading pre-quantized %s from %s", name, path)
        return load_quantized(path, cls)
    # transformers 5 names the argument dtype (torch_dtype is deprecated there); diffusers still names it torch_dtype.
    dtype_argument = {"torch_dtype" if issubclass(cls, ModelMixin) else "dtype": dtype}
    try:
        model, info = cls.from_pretrained(path, use_safetensors=True, output_loading_info=True, **dtype_argument)
    except (OSError, ValueError, RuntimeError) as exc:
        reason = " ".join(str(exc).split())
        raise InputError(f"{name} weights in {path} cannot be loaded: {reason}") from None
    _check_loading_info(info, f"{name} weights in {path}")
    return model


# Written beside a transformer's config: its prompt format, convention and image-frames layout when not the
# defaults (converted official weights, the toy models), and how a distilled transformer was made.
PROMPT_FORMAT_FILE = "magic141.json"


def _declared(transformer_folder: str | Path, key: str, default: str, check: Callable[[str], str]) -> str:
    marker = Path(transformer_folder) / PROMPT_FORMAT_FILE
    if not marker.is_file():
        return default
    try:
        return check(json.loads(marker.read_text()).get(key, default))
    except (json.JSONDecodeError, AttributeError, TypeError, ValueError) as exc:
        raise InputError(f"{marker} is not a valid prompt-format file ({exc}); rewrite it or delete it") from None


def read_prompt_format(transformer_folder: str | Path) -> str:
    """The prompt format a transformer folder declares; ``hunyuan-i2v`` when it declares none."""
    return _declared(transformer_folder, "prompt_format", PROMPT_FORMATS[0], check_prompt_format)


def read_convention(transformer_folder: str | Path) -> str:
    """The prompt-and-sampling convention a transformer folder declares; ``diffusers`` when it declares none."""
    return _declared(transformer_folder, "convention", CONVENTIONS[0], check_convention)


def read_image_frames(transformer_folder: str | Path) -> str:
    """The image-frames layout a transformer folder declares; ``first`` (the paper's) when it declares none."""
    return _declared(transformer_folder, "image_frames", IMAGE_FRAMES[0], check_image_frames)


def write_declarations(
    transformer_folder: str | Path, prompt_format: str, convention: str, image_frames: str = IMAGE_FRAMES[0]
) -> None:
    """Record a non-default prompt format, convention and image-frames layout in a transformer folder (defaults need
    no file)."""
    declared = {}
    if check_prompt_format(prompt_format) != PROMPT_FORMATS[0]:
        declared["prompt_format"] = prompt_format
    if check_convention(convention) != CONVENTIONS[0]:
        declared["convention"] = convention
    if check_image_frames(image_frames) != IMAGE_FRAMES[0]:
        declared["image_frames"] = image_frames
    if declared:
        (Path(transformer_folder) / PROMPT_FORMAT_FILE).write_text(json.dumps(declared) + "\n")


def read_distillation(transformer_folder: str | Path) -> dict[str, Any] | None:
    """How a distilled transformer was made (its teacher's fingerprint, the settings), or None for a teacher."""
    marker = Path(transformer_folder) / PROMPT_FORMAT_FILE
    if not marker.is_file():
        return None
    try:
        return json.loads(marker.read_text()).get("distillation")
    except (json.JSONDecodeError, AttributeError) as exc:
        raise InputError(f"{marker} is not a valid JSON object ({exc}); rewrite it or delete it") from None


def write_distillation(transformer_folder: str | Path, record: dict[str, Any]) -> None:
    """Record how a distilled transformer was made beside its prompt format."""
    marker = Path(transformer_folder) / PROMPT_FORMAT_FILE
    content = json.loads(marker.read_text()) if marker.is_file() else {}
    marker.write_text(json.dumps({**content, "distillation": record}, indent=2) + "\n")


def load_i2v_components(paths: WeightPaths, flow_shift: float, dtype: torch.dtype = torch.bfloat16) -> I2VComponents:
    """The image-to-video components from local folders, on the CPU in ``dtype`` (the VAE in float32)."""
    tokenizer = AutoTokenizer.from_pretrained(paths.tokenizer)
    text_encoder = _load_model(LlavaForConditionalGeneration, paths.text_encoder, dtype, "text_encoder")
    if getattr(text_encoder.config, "pad_token_id", None) is None:
        text_encoder.config.pad_token_id = tokenizer.pad_token_id
    vision = text_encoder.config.vision_config
    components = I2VComponents(
        transformer=_load_model(HunyuanVideoTransformer3DModel, paths.transformer, dtype, "transformer"),
        vae=_load_model(AutoencoderKLHunyuanVideo, paths.vae, torch.float32, "vae"),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        text_encoder_2=_load_model(CLIPTextModel, paths.text_encoder_2, dtype, "text_encoder_2"),
        tokenizer_2=CLIPTokenizer.from_pretrained(paths.tokenizer_2),
        image_processor=CLIPImageProcessor.from_pretrained(paths.image_processor),
        scheduler=FlowMatchEulerDiscreteScheduler(shift=flow_shift),
        prompt_template=prompt_template_for(tokenizer, (vision.image_size // vision.patch_size) ** 2),
        prompt_format=read_prompt_format(paths.transformer),
        convention=read_convention(paths.transformer),
        image_frames=read_image_frames(paths.transformer),
    )
    if components.convention == "official":
        tokenizer.padding_side = "right"  # as the official inference forces, whatever the tokenizer folder says
    if components.transformer.config.image_condition_type != "latent_concat":
        raise InputError(
            f"transformer in {paths.transformer} is not a 2C+1 image-to-video model "
            f"(image_condition_type={components.transformer.config.image_condition_type!r})"
        )
    check_components_fit(components, paths)
    for module in components.modules().values():
        module.eval().requires_grad_(False)
    return components


def check_components_fit(components: I2VComponents, paths: WeightPaths) -> None:
    """Refuse component folders of different models, naming the widths that disagree."""
    transformer = components.transformer.config
    for name, what, width, expected, field in (
        ("text_encoder", "hidden size", components.text_encoder.config.text_config.hidden_size,
         transformer.text_embed_dim, "text_embed_dim"),
        ("text_encoder_2", "hidden size", components.text_encoder_2.config.hidden_size,
         transformer.pooled_projection_dim, "pooled_projection_dim"),
        ("vae", "latent channels", components.vae.config.latent_channels, transformer.out_channels, "out_channels"),
    ):
        if width != expected:
            raise InputError(
                f"{name} in {getattr(paths, name)} has {what} {width}, but the transformer in {paths.transformer} "
                f"expects {expected} ({field}); use components of one model"
            )


def save_i2v_components(components: I2VComponents, folder: str | Path) -> Path:
    """Write every component in the weights-folder layout that :func:`load_i2v_components` reads."""
    root = Path(folder)
    for name, module in components.modules().items():
        module.save_pretrained(root / name, safe_serialization=True)
    write_declarations(root / "transformer", components.prompt_format, components.convention,
                       components.image_frames)
    components.tokenizer.save_pretrained(root / "tokenizer")
    components.tokenizer_2.save_pretrained(root / "tokenizer_2")
    components.image_processor.save_pretrained(root / "image_processor")
    return root


def check_new_folder(out: str | Path) -> Path:
    """``out`` as a folder a command may fill: absent or empty, in a folder that exists."""
    target = Path(out)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise InputError(f"output folder {str(target)!r} is not empty; choose a new folder")
    if not target.absolute().parent.is_dir():
        raise InputError(f"folder {str(target.absolute().parent)!r} does not exist; create it or choose another --out")
    return target


def quantize_weights_folder(source: str | Path, out: str | Path, level: str, flow_shift: float = 7.0) -> Path:
    """``magic141 model quantize``: a weights folder whose transformer and text encoders are pre-quantized.

    Written to a temporary sibling folder and renamed when complete, so ``out`` never holds a partial copy.
    """
    target = check_new_folder(out)
    check_level(level)
    paths = WeightPaths.resolve(source)
    components = load_i2v_components(paths, flow_shift, torch.bfloat16)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.absolute().parent))
    try:
        for name in QUANTIZED_COMPONENTS:
            module = getattr(components, name)
            if not quantization_map(module):
                quantize_weights(module, level)
        for name, module in components.modules().items():
            if name in QUANTIZED_COMPONENTS:
                save_quantized(module, staging / name)
            else:
                module.save_pretrained(staging / name, safe_serialization=True)
        write_declarations(staging / "transformer", components.prompt_format, components.convention,
                           components.image_frames)
        components.tokenizer.save_pretrained(staging / "tokenizer")
        components.tokenizer_2.save_pretrained(staging / "tokenizer_2")
        components.image_processor.save_pretrained(staging / "image_processor")
        if paths.prior is not None:
            shutil.copytree(paths.prior, staging / "prior")
        if target.exists():
            target.rmdir()
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    logger.info("wrote %s-quantized weights to %s", level, target)
    return target

"""The generation request (:mod:`tasks.request.parts`) and the checks of its fields (:mod:`tasks.request.checks`)."""

from tasks.request.checks import QUANTIZATION_LEVELS, check_steps, check_workers, printable_text, prior_image_path
from tasks.request.parts import GenerateRequest, ModelSpec, OutputSpec, PriorSpec, PromptSpec, RenderSpec

__all__ = [
    "QUANTIZATION_LEVELS",
    "GenerateRequest",
    "ModelSpec",
    "OutputSpec",
    "PriorSpec",
    "PromptSpec",
    "RenderSpec",
    "check_steps",
    "check_workers",
    "printable_text",
    "prior_image_path",
]

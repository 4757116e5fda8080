"""Contrastive training of the retrieval index's CLIP model on the toy world's frames and captions.

Each sample is one frame of a toy-world video and a description of it: the full caption, or the caption
without its motion, background, or both ("a red circle"). A description matches every frame whose
object and background agree with the words it has, so the contrastive targets spread over all matching
pairs of the batch instead of the diagonal alone. A frame of the named object on another background than the
one named is a lesser target (``OBJECT_CREDIT``): the object is what a query looks for, so where a corpus has
no red circle on white, "a red circle on a white background" finds a red circle before a red triangle on white. The trained model is an open_clip folder
(``open_clip_config.json`` and ``open_clip_model.safetensors``) that ``index build --clip-model DIR`` loads.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from magic141.toy_world import BACKGROUNDS, COLOURS, SHAPES, Caption, render_frame, sample_scene, split_captions
from magic141.training.loop import sample_rng

CLIP_CONFIG: dict[str, Any] = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": [48, 64], "patch_size": 8, "width": 96, "layers": 3, "head_width": 32},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
PREPROCESS: dict[str, Any] = {
    "size": [48, 64],
    "resize_mode": "squash",
    "mean": [0.5, 0.5, 0.5],
    "std": [0.5, 0.5, 0.5],
    "interpolation": "bicubic",
}
SECONDS = 4.0  # frames are drawn from the first seconds of each video
OBJECT_CREDIT = 0.25  # the target weight of a frame of the named object on another background than the named one


@lru_cache(maxsize=2)
def _tokenizer(context_length: int) -> Any:
    import open_clip

    return open_clip.tokenizer.SimpleTokenizer(context_length=context_length)


def describe_words(caption: Caption, keep_motion: bool, keep_background: bool) -> str:
    """The caption with some of its phrases left out."""
    text = f"a {caption.colour} {caption.shape}"
    if keep_motion:
        text += f" {caption.motion}"
    if keep_background:
        text += f" on a {caption.background} background"
    return text


@dataclass(frozen=True)
class ClipBatch:
    pixels: torch.Tensor  # (B, 3, H, W) normalised
    tokens: torch.Tensor  # (B, context)
    words: torch.Tensor  # (B, 4) long: colour, shape and background of the frame, whether the text names the background


def _gather(tensor: torch.Tensor) -> torch.Tensor:
    """The whole global batch on every rank; gradients flow back to the rank that computed each part."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return tensor
    from torch.distributed.nn import all_gather

    return torch.cat(all_gather(tensor))


def contrastive_targets(words: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The (image, text) target weights of a batch's ``words`` (B, 4): 1 where the text's words all fit the frame,
    ``OBJECT_CREDIT`` where its colour and shape do and only its background does not; and the full matches (bool)."""
    same = words[:, None, :3] == words[None, :, :3]  # (image, text, word)
    objects = same[..., 0] & same[..., 1]
    full = objects & (same[..., 2] | (words[None, :, 3] == 0))
    return full.float() + OBJECT_CREDIT * (objects & ~full).float(), full


def _divergence(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The mean KL divergence of the rows' softmax from their targets' distribution: the soft-target cross
    entropy less the targets' own entropy (same gradient), so a model that matches the targets scores 0."""
    wanted = targets / targets.sum(1, keepdim=True)
    return F.cross_entropy(logits, wanted) - torch.special.entr(wanted).sum(1).mean()


class ClipTrainee(torch.nn.Module):
    """The contrastive loss over the global batch: data-parallel ranks gather every rank's embeddings, so the
    loss does not depend on how the batch is split."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: ClipBatch) -> tuple[torch.Tensor, dict[str, float]]:
        image = _gather(self.model.encode_image(batch.pixels, normalize=True))
        text = _gather(self.model.encode_text(batch.tokens, normalize=True))
        words = _gather(batch.words)
        logits = self.model.logit_scale.exp().clamp(max=100) * image @ text.T
        targets, full = contrastive_targets(words)
        loss = (_divergence(logits, targets) + _divergence(logits.T, targets.T)) / 2
        accuracy = full.float().gather(1, logits.argmax(1, keepdim=True)).mean()
        return loss, {"top1": float(accuracy)}


@dataclass(frozen=True)
class ClipStage:
    """The toy world's CLIP: frames of the training captions only."""

    width: int = 64
    height: int = 48
    config: dict[str, Any] = field(default_factory=lambda: json.loads(json.dumps(CLIP_CONFIG)))
    name: str = "clip"

    def describe(self) -> dict[str, Any]:
        return {"model": self.config, "preprocess": PREPROCESS, "frame": [self.width, self.height],
                "object_credit": OBJECT_CREDIT}

    def build(self, seed: int) -> torch.nn.Module:
        import open_clip
        from open_clip.model import CLIPTextCfg, CLIPVisionCfg

        torch.manual_seed(seed)
        model = open_clip.CLIP(
            embed_dim=self.config["embed_dim"],
            vision_cfg=CLIPVisionCfg(**self.config["vision_cfg"]),
            text_cfg=CLIPTextCfg(**self.config["text_cfg"]),
        )
        return ClipTrainee(model)

    def batch(self, seed: int, step: int, samples: Sequence[int]) -> ClipBatch:
        captions = split_captions("train")
        frames, texts, parts = [], [], []
        for index in samples:
            rng = sample_rng(seed, step, index)
            caption = captions[int(torch.randint(len(captions), (1,), generator=rng))]
            keep_motion, keep_background = (torch.rand(2, generator=rng) < 0.5).tolist()
            scene_seed = int(torch.randint(2**31, (1,), generator=rng))
            t = float(torch.rand(1, generator=rng)) * SECONDS
            frames.append(render_frame(sample_scene(caption, self.width, self.height, scene_seed), t, self.width, self.height))
            texts.append(describe_words(caption, keep_motion, keep_background))
            parts.append([list(COLOURS).index(caption.colour), SHAPES.index(caption.shape),
                          list(BACKGROUNDS).index(caption.background), int(keep_background)])
        pixels = torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).float() / 127.5 - 1
        pixels = F.interpolate(pixels, size=tuple(PREPROCESS["size"]), mode="bicubic", align_corners=False)
        return ClipBatch(pixels, _tokenizer(self.config["text_cfg"]["context_length"])(texts), torch.tensor(parts))

    def save(self, trainee: torch.nn.Module, folder: Path) -> None:
        folder.mkdir(parents=True)
        (folder / "open_clip_config.json").write_text(
            json.dumps({"model_cfg": self.config, "preprocess_cfg": PREPROCESS}, indent=2) + "\n"
        )
        state = {k: v.detach().contiguous() for k, v in trainee.model.state_dict().items()}
        save_file(state, folder / "open_clip_model.safetensors")

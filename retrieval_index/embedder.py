"""CLIP embeddings with open_clip: a model spec, the loaded model, and L2-normalised image/text vectors.

``EmbedderSpec("tiny")`` is a small open_clip CLIP with random weights drawn from a fixed seed, so
every process that builds it gets the same weights (the index builder and its readers run in
different processes). A folder holding ``open_clip_config.json`` and ``open_clip_model.safetensors``
(open_clip's own layout, as ``magic141 train clip`` writes it) is a model with its weights. Any other
spec names an open_clip architecture and a local weights file (``.safetensors``, or a PyTorch
checkpoint that open_clip reads with ``weights_only=True``); nothing is ever downloaded.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import torch

from retrieval_index.errors import RetrievalIndexError

logger = logging.getLogger(__name__)

TINY = "tiny"
TOY = "toy"  # the CLIP trained on the toy world, shipped with the toy preset's weights
TINY_SEED = 1141
FOLDER_CONFIG = "open_clip_config.json"
FOLDER_WEIGHTS = "open_clip_model.safetensors"
# A small ViT/transformer CLIP: 64-d embeddings of 32 px images; uses open_clip's bundled BPE vocabulary.
TINY_CONFIG: dict[str, Any] = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 64, "layers": 2, "head_width": 32},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}

_load_lock = threading.Lock()


def toy_clip_folder() -> Path:
    """The toy world's trained CLIP: ``clip/`` in the toy preset's shipped weights folder."""
    from magic141.presets import get_preset

    return get_preset("toy").weights_folder / "clip"


@lru_cache(maxsize=8)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _file_digest(path: Path) -> str:
    info = path.stat()
    return _file_sha256(str(path), info.st_size, info.st_mtime_ns)


@dataclass(frozen=True)
class EmbedderSpec:
    """Which CLIP model embeds images and texts: ``tiny`` (random), ``toy`` (trained on the toy world, shipped),
    a trained model folder, or an open_clip model name plus a local weights file."""

    model: str = TINY
    pretrained: str | None = None

    def check(self) -> EmbedderSpec:
        """Return the spec with an absolute weights path; raise :class:`RetrievalIndexError` if it cannot load."""
        if self.model == TINY:
            if self.pretrained is not None:
                raise RetrievalIndexError(
                    "the tiny CLIP model has built-in random weights and takes no weights file; "
                    "drop the weights file or name an open_clip model such as ViT-B-32"
                )
            return self
        folder = toy_clip_folder() if self.model == TOY else Path(self.model)
        if (folder / FOLDER_CONFIG).is_file():
            if self.pretrained is not None:
                raise RetrievalIndexError(
                    f"CLIP folder {str(folder)!r} holds its own weights and takes no weights file; drop the weights file"
                )
            if not (folder / FOLDER_WEIGHTS).is_file():
                raise RetrievalIndexError(f"CLIP folder {self.model!r} has no {FOLDER_WEIGHTS}; train or copy it there")
            return EmbedderSpec(str(folder.absolute()))
        import open_clip

        if self.model not in open_clip.list_models():
            raise RetrievalIndexError(
                f"unknown CLIP model {self.model!r}; use 'tiny', a trained model folder (holding {FOLDER_CONFIG}) "
                "or an open_clip model name such as ViT-B-32"
            )
        if self.pretrained is None:
            raise RetrievalIndexError(
                f"CLIP model {self.model!r} needs a local weights file; pass its path (nothing is downloaded)"
            )
        weights = Path(self.pretrained).absolute()
        if not weights.is_file():
            raise RetrievalIndexError(
                f"CLIP weights file {str(weights)!r} does not exist; pass the path of a local "
                f".safetensors or .pt checkpoint for {self.model}"
            )
        return EmbedderSpec(self.model, str(weights))

    @property
    def model_id(self) -> str:
        """Names the exact weights: the architecture plus a fingerprint of the config (tiny) or weights file."""
        spec = self.check()
        if spec.model == TINY:
            config = json.dumps({"config": TINY_CONFIG, "seed": TINY_SEED}, sort_keys=True).encode()
            return f"open_clip:{TINY}@{hashlib.sha256(config).hexdigest()[:16]}"
        if spec.pretrained is None:  # a model folder: its config and weights name it
            folder = Path(spec.model)
            digests = [_file_digest(folder / name) for name in (FOLDER_CONFIG, FOLDER_WEIGHTS)]
            return f"open_clip:{folder.name}@{hashlib.sha256(''.join(digests).encode()).hexdigest()[:16]}"
        return f"open_clip:{spec.model}@{_file_digest(Path(spec.pretrained))[:16]}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Embedder:
    """A loaded CLIP model: ``embed_images`` and ``embed_texts`` return float32 rows of unit length."""

    def __init__(self, model: torch.nn.Module, preprocess: Any, tokenizer: Any, model_id: str, device: str) -> None:
        self.model = model
        self.preprocess = preprocess
        self.tokenizer = tokenizer
        self.model_id = model_id
        self.device = device
        self.dimension = int(self.embed_texts([""]).shape[1])

    def preprocess_image(self, image: PIL.Image.Image) -> torch.Tensor:
        """One image as the model's input tensor (3, H, W)."""
        return self.preprocess(image.convert("RGB"))

    @torch.inference_mode()
    def embed_pixels(self, pixels: torch.Tensor) -> np.ndarray:
        """Embeddings (N, D) of preprocessed images (N, 3, H, W)."""
        features = self.model.encode_image(pixels.to(self.device), normalize=True)
        return features.float().cpu().numpy()

    def embed_images(self, images: Sequence[PIL.Image.Image]) -> np.ndarray:
        """Embeddings (N, D) of PIL images."""
        return self.embed_pixels(torch.stack([self.preprocess_image(image) for image in images]))

    @torch.inference_mode()
    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Embeddings (N, D) of texts, in the same space as the images."""
        tokens = self.tokenizer(list(texts)).to(self.device)
        features = self.model.encode_text(tokens, normalize=True)
        return features.float().cpu().numpy()


def _build_tiny(device: str) -> tuple[torch.nn.Module, Any, Any]:
    import open_clip
    from open_clip.model import CLIPTextCfg, CLIPVisionCfg

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SEED)
        model = open_clip.CLIP(
            embed_dim=TINY_CONFIG["embed_dim"],
            vision_cfg=CLIPVisionCfg(**TINY_CONFIG["vision_cfg"]),
            text_cfg=CLIPTextCfg(**TINY_CONFIG["text_cfg"]),
        )
    preprocess = open_clip.image_transform(TINY_CONFIG["vision_cfg"]["image_size"], is_train=False)
    tokenizer = open_clip.tokenizer.SimpleTokenizer(context_length=TINY_CONFIG["text_cfg"]["context_length"])
    return model.to(device), preprocess, tokenizer


def _load_pretrained(spec: EmbedderSpec, device: str) -> tuple[torch.nn.Module, Any, Any]:
    import open_clip

    name = spec.model if spec.pretrained is not None else f"local-dir:{spec.model}"
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(
            name, pretrained=spec.pretrained, device=device, weights_only=True, pretrained_text=False
        )
    except (RuntimeError, KeyError, ValueError, OSError) as exc:
        raise RetrievalIndexError(
            f"cannot load CLIP weights {spec.pretrained!r} into {spec.model}: {' '.join(str(exc).split())[:300]}; "
            f"check the file is an open_clip checkpoint for that model"
        ) from exc
    return model, preprocess, open_clip.get_tokenizer(name)


@lru_cache(maxsize=4)
def _cached_embedder(spec: EmbedderSpec, device: str) -> Embedder:
    model_id = spec.model_id
    if spec.model == TINY:
        model, preprocess, tokenizer = _build_tiny(device)
    else:
        model, preprocess, tokenizer = _load_pretrained(spec, device)
    model.eval()
    embedder = Embedder(model, preprocess, tokenizer, model_id, device)
    logger.info("loaded CLIP %s on %s (%d-d embeddings)", model_id, device, embedder.dimension)
    return embedder


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_embedder(spec: EmbedderSpec, device: str | None = None) -> Embedder:
    """The CLIP model of ``spec`` on ``device`` (GPU when visible), loaded once per process."""
    with _load_lock:
        return _cached_embedder(spec.check(), device or default_device())

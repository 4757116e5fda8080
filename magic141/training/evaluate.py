"""Held-out evaluations of the trained toy-world components that need no video model.

- retrieval: recall@1 of a CLIP model over a toy corpus, read off the returned image by simple vision
  (its colour and shape, and its background when the query names one);
- VAE: PSNR of frames through the VAE, for single images (the I2V first frame) and whole windows, what simple
  vision reads off the decoded frames, and how often the decoder draws a blob the video does not have.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import PIL.Image
import torch

from magic141.metrics import psnr
from magic141.toy_eval import read_frame
from magic141.toy_world import BACKGROUNDS, COLOURS, SHAPES, evaluation_captions, render_video, sample_scene


def retrieval_queries() -> list[tuple[str, str, str, str | None]]:
    """(text, colour, shape, background or None): every 'a {colour} {shape}' and '... on a {background} background'."""
    queries: list[tuple[str, str, str, str | None]] = []
    for colour in COLOURS:
        for shape in SHAPES:
            queries.append((f"a {colour} {shape}", colour, shape, None))
            queries.extend((f"a {colour} {shape} on a {bg} background", colour, shape, bg) for bg in BACKGROUNDS)
    return queries


def retrieval_recall(index_dir: Path, queries: Sequence[tuple[str, str, str, str | None]]) -> dict[str, float]:
    """Fraction of queries whose best match shows the right colour and shape (and background when named)."""
    from retrieval_index import open_index

    reader = open_index(index_dir, device="cpu")
    hits = {"colour": 0, "shape": 0, "colour_and_shape": 0, "all_named": 0}
    for text, colour, shape, background in queries:
        best = reader.search_text(text, k=1)[0]
        seen = read_frame(np.asarray(PIL.Image.open(best.path).convert("RGB")))
        hits["colour"] += seen.colour == colour
        hits["shape"] += seen.shape == shape
        both = seen.colour == colour and seen.shape == shape
        hits["colour_and_shape"] += both
        hits["all_named"] += both and (background is None or seen.background == background)
    return {name: count / len(queries) for name, count in hits.items()}


STRAY_DISTANCE = 60.0  # a decoded pixel this far (RGB) from the background is drawn
STRAY_MARGIN = 3  # ... and stray when more than this many pixels from the rendered object
STRAY_PIXELS = 6  # a frame with this many stray pixels shows a blob that is not in the video


def stray_pixels(decoded: np.ndarray, rendered: np.ndarray) -> int:
    """How many pixels of the decoded frame (H, W, 3) uint8 are drawn (``STRAY_DISTANCE`` from the rendered
    frame's plain background) more than ``STRAY_MARGIN`` pixels away from the rendered object."""
    background = rendered[0, 0].astype(np.float32)
    rendered_object = np.abs(rendered.astype(np.float32) - background).max(-1) > 0
    padded = np.pad(rendered_object, STRAY_MARGIN)
    height, width = rendered_object.shape
    span = range(2 * STRAY_MARGIN + 1)
    near = np.any([padded[dy : dy + height, dx : dx + width] for dy in span for dx in span], axis=0)
    drawn = np.linalg.norm(decoded.astype(np.float32) - background, axis=-1) > STRAY_DISTANCE
    return int((drawn & ~near).sum())


@torch.no_grad()
def vae_scores(vae: torch.nn.Module, split: str, count: int, frames: int, fps: int, width: int, height: int,
               seed: int = 0) -> dict[str, float]:
    """``count`` videos of ``split`` through the VAE, their first frame alone and ``frames``-frame clips: the
    median PSNR (dB) of each, and the fraction of decoded clip frames whose colour, shape and background simple
    vision (:func:`magic141.toy_eval.read_frame`) still reads as the caption's, and the share of clips with a
    stray blob (a decoded frame with ``STRAY_PIXELS`` or more :func:`stray_pixels`). A video model cannot show
    more than its VAE decodes."""
    image_scores, clip_scores, readings, blobs = [], [], [], []
    for index, caption in enumerate(evaluation_captions(split, count)):
        video = render_video(sample_scene(caption, width, height, seed + index), frames, fps, width, height)
        pixels = torch.from_numpy(video).permute(3, 0, 1, 2)[None].float() / 127.5 - 1
        for scores, clip in ((image_scores, pixels[:, :, :1]), (clip_scores, pixels)):
            decoded = vae.decode(vae.encode(clip).latent_dist.mean).sample
            out = ((decoded[0].clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 3, 0).numpy()
            scores.append(np.median([psnr(a, b) for a, b in zip(out, video[: clip.shape[2]])]))
        blobs.append(max(stray_pixels(a, b) for a, b in zip(out, video)) >= STRAY_PIXELS)
        for frame in out:
            seen = read_frame(frame)
            readings.append((seen.colour == caption.colour, seen.shape == caption.shape,
                             seen.background == caption.background))
    colour, shape, background = np.mean(readings, axis=0)
    return {"image_psnr": float(np.median(image_scores)), "clip_psnr": float(np.median(clip_scores)),
            "colour": float(colour), "shape": float(shape), "background": float(background),
            "stray_blobs": float(np.mean(blobs))}


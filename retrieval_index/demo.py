"""A small synthetic image corpus for the demo and the tests: distinct drawn shapes, optionally broken files."""

from __future__ import annotations

import argparse
import colorsys
import logging
from pathlib import Path

import PIL.Image
import PIL.ImageDraw

logger = logging.getLogger(__name__)

_SHAPES = ("circle", "square", "triangle", "stripes", "ring", "cross")


def _draw(index: int, size: int) -> PIL.Image.Image:
    hue = (index * 0.61803398875) % 1.0
    background = tuple(int(255 * c) for c in colorsys.hsv_to_rgb((hue + 0.5) % 1.0, 0.3, 0.95))
    colour = tuple(int(255 * c) for c in colorsys.hsv_to_rgb(hue, 0.9, 0.85))
    image = PIL.Image.new("RGB", (size, size), background)
    draw = PIL.ImageDraw.Draw(image)
    shape = _SHAPES[index % len(_SHAPES)]
    scale = 0.25 + 0.5 * ((index // len(_SHAPES)) % 4) / 3
    half = size * scale / 2
    centre = size / 2
    box = (centre - half, centre - half, centre + half, centre + half)
    if shape == "circle":
        draw.ellipse(box, fill=colour)
    elif shape == "square":
        draw.rectangle(box, fill=colour)
    elif shape == "triangle":
        draw.polygon([(centre, centre - half), (centre + half, centre + half), (centre - half, centre + half)], fill=colour)
    elif shape == "stripes":
        step = max(2, int(size / (4 + index % 5)))
        for x in range(0, size, 2 * step):
            draw.rectangle((x, 0, x + step - 1, size), fill=colour)
    elif shape == "ring":
        draw.ellipse(box, outline=colour, width=max(2, size // 12))
    else:
        width = max(2, int(half / 2))
        draw.rectangle((centre - width, 0, centre + width, size), fill=colour)
        draw.rectangle((0, centre - width, size, centre + width), fill=colour)
    return image


def make_demo_corpus(
    folder: Path | str, n: int = 12, *, start: int = 0, size: int = 64, broken: bool = False
) -> list[Path]:
    """Write ``n`` distinct images (PNG and JPEG, in two subfolders) into ``folder``; return their paths.

    Image ``i`` is always the same picture: ``start`` picks where the numbering begins, so corpora
    made with disjoint ranges share no image. With ``broken`` also write four files that are not
    usable images, at the top of ``folder`` and not in the returned list: ``truncated.png`` (a PNG
    cut off half-way), ``notes.jpg`` (text with an image suffix), ``empty.png`` (an empty file) and
    ``README.txt`` (a text file).
    """
    folder = Path(folder)
    written = []
    for index in range(start, start + n):
        subfolder = folder / ("shapes" if index % 2 == 0 else "more")
        subfolder.mkdir(parents=True, exist_ok=True)
        suffix = "png" if index % 3 else "jpg"
        path = subfolder / f"{_SHAPES[index % len(_SHAPES)]}-{index:03d}.{suffix}"
        _draw(index, size).save(path, quality=95)
        written.append(path)
    if broken:
        folder.mkdir(parents=True, exist_ok=True)
        truncated = folder / "truncated.png"
        _draw(start + n, size).save(truncated)
        truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
        (folder / "notes.jpg").write_text("not a picture\n")
        (folder / "empty.png").write_bytes(b"")
        (folder / "README.txt").write_text("demo corpus\n")
    return written


def main() -> None:
    """``python -m retrieval_index.demo FOLDER [--n N] [--broken]``: write a demo corpus."""
    parser = argparse.ArgumentParser(description="Write a small synthetic image corpus for the retrieval index.")
    parser.add_argument("folder", type=Path)
    parser.add_argument("--n", type=int, default=24, help="number of distinct images")
    parser.add_argument("--broken", action="store_true", help="also write files that are not usable images")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    written = make_demo_corpus(args.folder, args.n, broken=args.broken)
    logger.info("wrote %d images to %s", len(written), args.folder)


if __name__ == "__main__":
    main()

"""Prompt CSVs for bulk production: read a file, validate each row on its own, key each video by content.

The contract (also in the README):

- The first non-blank row names the columns, case-insensitively: ``prompt`` (required), ``id``,
  ``image``, ``seconds``, ``fps``, ``seed``, ``guidance``, ``negative_prompt``, ``prior``
  (``auto|user|retrieve|generate``, default ``auto``), ``windows`` (``chained|parallel``,
  default ``chained``) and ``size`` (``auto`` or one of the preset's sizes as ``WxH``, default
  ``auto``: the size nearest the first frame's aspect ratio). An empty cell means the default.
- Standard CSV (RFC 4180): commas between cells, double quotes around cells that hold commas,
  quotes or line breaks. UTF-8 with or without a byte-order mark; LF or CRLF line ends (a line
  break inside a cell is kept as LF). Blank rows are skipped.
- **Row numbers** are the row numbers a spreadsheet shows for the file: the header is row 1 when
  it is the first line, the first data row is row 2, a cell spanning several lines is one row,
  and blank rows are counted but skipped.
- **Row keys**: the ``id`` cell, or for a row without one ``row-`` followed by the first 16 hex
  digits of the sha256 of the row's non-empty cells, so the key stays the same when rows are
  added or moved.
- Each row is checked on its own and every problem it has is reported in one line; a bad row is
  rejected and the rest go on. Checks: an empty prompt; a number that is not plain decimal
  (``nan``, ``inf``, ``1_000``, ``5s``) or out of the range ``magic141 generate`` accepts; a
  ``prior``, ``windows`` or ``size`` value outside its list; ``prior user`` without an image, or an image
  with ``prior retrieve|generate``; ``prior retrieve`` when the run has no retrieval index; an
  image that does not exist, is not a readable image, or resolves (symlinks included) outside
  the image roots (default: the CSV's folder; relative paths are taken from the CSV's folder); an
  ``id`` used by an earlier row, or a row without an id whose cells repeat an earlier row's; more
  cells than the header has columns.
- **Unknown columns** do not refuse the file: a row with a value in a column the contract does
  not name is rejected with the column's name, and rows that leave it empty go on (a spreadsheet
  often carries a notes column that is empty for the rows meant to run).
- An image with ``prior auto`` means ``user``. A row without a seed gets one derived from its row
  key (:func:`default_seed`), so running the file again reproduces the same videos.
- The whole file is refused, with one ``ValueError`` line, when it cannot be read, is empty,
  binary, UTF-16 or otherwise not UTF-8, has broken quoting, names a column twice, or has no
  ``prompt`` column.

:func:`content_key` says exactly what makes two videos the same; it is the catalog's
``videos.content_key`` and ``batch_rows.content_key``.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import math
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from magic141.presets import Preset, default_preset_name, get_preset
from magic141.utils import sha256_file
from magic141.windows import WINDOW_MODES
from tasks.prior_policy import PRIOR_MODES
from tasks.request import (
    MAX_PROMPT_CHARS,
    GenerateRequest,
    ModelSpec,
    check_duration,
    check_fps,
    check_guidance,
    check_image,
    check_seconds,
    check_seed,
    check_size,
    clean_prompt,
)

logger = logging.getLogger(__name__)

COLUMNS = ("prompt", "id", "image", "seconds", "fps", "seed", "guidance", "negative_prompt", "prior", "windows", "size")
MAX_ID_LENGTH = 255
CONTENT_KEY_VERSION = 1
_REQUEST_DEFAULTS = {f.name: f.default for f in fields(GenerateRequest)}
DEFAULT_SECONDS: float = _REQUEST_DEFAULTS["seconds"]
DEFAULT_PRIOR = "auto"
DEFAULT_WINDOWS = "chained"
_DECIMAL = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?", re.ASCII)
_INTEGER = re.compile(r"[+-]?\d+", re.ASCII)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
MAX_CELL_CHARS = MAX_PROMPT_CHARS  # any cell; the prompt's own check names the same limit
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")
RETRIEVE_WITHOUT_INDEX = (
    "prior 'retrieve' needs a retrieval index and none is configured; pass --index-dir DIR (or set "
    "MAGIC141_INDEX_DIR) to an index built with `magic141 index build`, or set prior to auto or generate"
)
NO_GUIDANCE_INPUT = (
    "guidance {guidance:g} would do nothing: the model's transformer takes no guidance scale (no guidance embedding); "
    "empty the guidance cell"
)
NO_TEXT_TO_IMAGE = (
    "prior {prior!r} may make the first frame with the text-to-image model, and the weights have none (prior/); "
    "fill the image cell or add a prior/ folder to the weights"
)


@dataclass(frozen=True)
class ValidRow:
    """A row that passed every check, with defaults filled in and the image path made absolute."""

    row_number: int
    row_key: str
    prompt: str
    negative_prompt: str | None
    image: str | None
    image_sha256: str | None
    seconds: float
    fps: int
    seed: int
    guidance: float | None
    prior: str
    windows: str
    size: str = "auto"

    @property
    def num_frames(self) -> int:
        return round(self.seconds * self.fps)

    def to_request(self, out: str, catalog_url: str, model: ModelSpec, steps: int) -> GenerateRequest:
        """The generation request for this row (the image only when the prior is the user's)."""
        return GenerateRequest(
            prompt=self.prompt,
            out=out,
            catalog_url=catalog_url,
            image=self.image if self.prior == "user" else None,
            seconds=self.seconds,
            fps=self.fps,
            seed=self.seed,
            steps=steps,
            guidance=self.guidance,
            negative_prompt=self.negative_prompt,
            preset=model.preset,
            weights=model.weights,
            quantize=model.quantize,
            low_memory=model.low_memory,
            windows=self.windows,
            size=self.size,
        )


@dataclass(frozen=True)
class RejectedRow:
    """A row that failed a check: ``reason`` names every problem; ``cells`` are the row as read."""

    row_number: int
    row_key: str | None
    reason: str
    cells: dict[str, str]


@dataclass(frozen=True)
class PromptCsv:
    """A read prompt CSV: its identity, its header, and every non-blank row, valid or rejected."""

    path: str
    sha256: str
    columns: tuple[str, ...]
    unknown_columns: tuple[str, ...]
    valid: tuple[ValidRow, ...]
    rejected: tuple[RejectedRow, ...]


def default_seed(row_key: str) -> int:
    """The seed of a row that gives none: 31 bits of sha256 of its row key, stable across runs."""
    digest = hashlib.sha256(f"magic141 seed:{row_key}".encode()).digest()
    return int.from_bytes(digest[:4], "big") >> 1


def content_key(
    *,
    prompt: str,
    negative_prompt: str | None,
    seconds: float,
    fps: int,
    seed: int,
    guidance: float,
    steps: int,
    windows: str,
    prior: str,
    image_sha256: str | None,
    preset: str,
    model_fingerprint: str,
    prior_settings: Mapping[str, float | int | str] | None = None,
    size: str = "auto",
) -> str:
    """sha256 hex naming the video these inputs make; equal keys mean the same video.

    It hashes the canonical JSON (sorted keys, no spaces, UTF-8, floats as floats) of: the key
    version, ``prompt``, ``negative_prompt`` (None and "" are the same), ``seconds``, ``fps``,
    ``seed``, ``guidance`` (resolved: the preset's default when the row gives none), ``steps``,
    ``windows`` mode, ``size`` as asked (only when not ``auto``, so keys made before sizes existed
    hold), ``prior`` mode as asked, ``prior_settings`` (e.g. the retrieval threshold
    and img2img strength of ``auto``; None when not used), ``image_sha256`` of the row's own
    image (None without one), ``preset`` and ``model_fingerprint`` (the weights fingerprint of
    every model involved). The retrieval index version is not part of it: rebuilding the index
    does not re-render videos already made.
    """
    document = {
        "version": CONTENT_KEY_VERSION,
        "prompt": prompt,
        "negative_prompt": negative_prompt or None,
        "seconds": float(seconds),
        "fps": int(fps),
        "seed": int(seed),
        "guidance": float(guidance),
        "steps": int(steps),
        "windows": windows,
        "prior": prior,
        "prior_settings": None if prior_settings is None else dict(prior_settings),
        "image_sha256": image_sha256,
        "preset": preset,
        "model_fingerprint": model_fingerprint,
    }
    if size != "auto":
        document["size"] = size
    canonical = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _decode(path: Path, data: bytes) -> str:
    """The file's text, or one ``ValueError`` saying why it is not a UTF-8 CSV."""
    shown = str(path)
    if not data.strip():
        raise ValueError(f"prompt CSV {shown!r} is empty; its first row must name the columns, e.g. prompt,seconds,seed")
    if data.startswith(_UTF16_BOMS):
        raise ValueError(f"prompt CSV {shown!r} is UTF-16 text; save it as UTF-8 CSV")
    if b"\x00" in data:
        raise ValueError(f"prompt CSV {shown!r} is a binary file, not CSV text; give a UTF-8 CSV file")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ValueError(
            f"prompt CSV {shown!r} is not UTF-8 text (byte 0x{data[exc.start]:02x} on line {line}); save it as UTF-8 CSV"
        ) from None


def _records(path: Path, text: str) -> Iterator[tuple[int, list[str]]]:
    """(spreadsheet row number, cells) for every record, blank ones included."""
    # Long cells are read whole and rejected with their row (MAX_CELL_CHARS), not left to the csv module's limit,
    # which would refuse the whole file.
    csv.field_size_limit(max(csv.field_size_limit(), len(text) + 1))
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    number = 0
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise ValueError(
                f"prompt CSV {str(path)!r} is not valid CSV on line {reader.line_num}: {exc}; "
                f"put cells that hold commas, quotes or line breaks in double quotes, and double inner quotes"
            ) from None
        number += 1
        yield number, [cell.replace("\r\n", "\n").replace("\r", "\n").strip() for cell in cells]


def _header(path: Path, cells: list[str]) -> tuple[str, ...]:
    columns = tuple(cell.lower() for cell in cells)
    seen: set[str] = set()
    for column in columns:
        if column and column in seen:
            raise ValueError(f"prompt CSV {str(path)!r} names column {column!r} twice in its header; keep one")
        seen.add(column)
    if "prompt" not in columns:
        found = ", ".join(repr(c) for c in columns if c) or "no names"
        hint = ""
        if len(columns) == 1 and (";" in columns[0] or "\t" in columns[0]):
            hint = " (it looks separated by ';' or tabs; CSV cells are separated by commas)"
        raise ValueError(
            f"prompt CSV {str(path)!r} has no 'prompt' column (header: {found}){hint}; "
            f"make the first row name the columns, e.g. prompt,seconds,seed"
        )
    return columns


def _number(column: str, text: str, integer: bool) -> float | int:
    pattern, example = (_INTEGER, "24") if integer else (_DECIMAL, "2.5")
    if not pattern.fullmatch(text):
        kind = "a whole number" if integer else "a number"
        raise ValueError(f"{column} {text!r} is not {kind}; write e.g. {example}")
    value = int(text) if integer else float(text)
    if not integer and not math.isfinite(value):
        raise ValueError(f"{column} {text!r} is out of range; write e.g. {example}")
    return value


def _row_key(cells: Mapping[str, str]) -> str:
    if cells.get("id"):
        return cells["id"]
    content = {name: value for name, value in sorted(cells.items()) if value and name != "id"}
    digest = hashlib.sha256(json.dumps(content, sort_keys=True, ensure_ascii=False).encode("utf-8")).hexdigest()
    return f"row-{digest[:16]}"


def _resolve_image(text: str, csv_dir: Path, roots: Sequence[Path]) -> Path:
    """The image's real path, checked to lie inside an image root and to be a readable image."""
    given = Path(text)
    resolved = (given if given.is_absolute() else csv_dir / given).resolve()
    if not any(resolved.is_relative_to(root) for root in roots):
        folders = ", ".join(str(root) for root in roots)
        raise ValueError(
            f"image {text!r} resolves to {str(resolved)!r}, outside the image folders ({folders}); "
            f"move it into one of them or add its folder to the image roots"
        )
    check_image(str(resolved))
    return resolved


class _RowChecker:
    """Validates rows one by one; remembers keys to reject later duplicates."""

    def __init__(
        self, columns: tuple[str, ...], csv_dir: Path, roots: Sequence[Path], index_configured: bool, text_to_image: bool,
        preset: Preset, default_guidance: float | None = None,
    ) -> None:
        self.columns = columns
        self.preset = preset
        self.default_fps = preset.fps
        self.default_guidance = default_guidance  # None: the model takes any guidance scale
        self.csv_dir = csv_dir
        self.roots = roots
        self.index_configured = index_configured
        self.text_to_image = text_to_image
        self.first_row_of_key: dict[str, int] = {}

    def check(self, number: int, raw: list[str]) -> ValidRow | RejectedRow:
        cells = {column: raw[i] if i < len(raw) else "" for i, column in enumerate(self.columns) if column}
        problems: list[str] = []

        def attempt(check: Any, *args: Any) -> Any:
            try:
                return check(*args)
            except ValueError as exc:
                problems.append(str(exc))
                return None

        if len(raw) > len(self.columns) and any(raw[len(self.columns):]):
            problems.append(
                f"row has {len(raw)} cells but the header names {len(self.columns)} columns; "
                f"quote cells that contain commas"
            )
        unknown = [
            column or f"(unnamed column {i + 1})"
            for i, column in enumerate(self.columns)
            if column not in COLUMNS and i < len(raw) and raw[i]
        ]
        if unknown:
            problems.append(
                f"unknown column(s) {', '.join(repr(c) for c in unknown)} hold values; "
                f"known columns are {', '.join(COLUMNS)}; empty those cells or remove the column"
            )
        key = _row_key({column: cells[column] for column in cells if column in COLUMNS})
        problems.extend(self._key_problems(number, key, cells.get("id", "")))

        for column, value in cells.items():
            if len(value) > MAX_CELL_CHARS and column != "prompt":
                problems.append(f"{column} is {len(value):,} characters; at most {MAX_CELL_CHARS:,}")
        prompt = attempt(clean_prompt, cells.get("prompt", "")) or ""
        negative_prompt = None
        if cells.get("negative_prompt") and len(cells["negative_prompt"]) <= MAX_CELL_CHARS:
            negative_prompt = attempt(clean_prompt, cells["negative_prompt"], "negative prompt")
        seconds = attempt(_number, "seconds", cells.get("seconds") or str(DEFAULT_SECONDS), False)
        fps = attempt(_number, "fps", cells.get("fps") or str(self.default_fps), True)
        known_problems = len(problems)
        if seconds is not None:
            attempt(check_seconds, seconds)
        if fps is not None:
            attempt(check_fps, fps)
        if seconds is not None and fps is not None and len(problems) == known_problems:
            attempt(check_duration, seconds, fps)
        seed = default_seed(key) if not cells.get("seed") else attempt(_number, "seed", cells["seed"], True)
        if seed is not None:
            attempt(check_seed, seed)
        guidance = attempt(_number, "guidance", cells["guidance"], False) if cells.get("guidance") else None
        if guidance is not None:
            attempt(check_guidance, guidance)
            if self.default_guidance is not None and guidance != self.default_guidance:
                problems.append(NO_GUIDANCE_INPUT.format(guidance=guidance))
        prior = (cells.get("prior") or DEFAULT_PRIOR).lower()
        if prior not in PRIOR_MODES:
            problems.append(f"prior {cells['prior']!r} is not one of {', '.join(PRIOR_MODES)}")
        windows = (cells.get("windows") or DEFAULT_WINDOWS).lower()
        if windows not in WINDOW_MODES:
            problems.append(f"windows {cells['windows']!r} is not one of {', '.join(WINDOW_MODES)}")
        size = attempt(check_size, cells.get("size") or "auto", self.preset.name)
        image_text = cells.get("image", "")
        image: Path | None = None
        if image_text:
            if prior in ("retrieve", "generate"):
                problems.append(
                    f"an image is given but prior {prior!r} would ignore it; empty the image cell or set prior to user"
                )
            image = attempt(_resolve_image, image_text, self.csv_dir, self.roots)
            if prior == "auto":
                prior = "user"
        elif prior == "user":
            problems.append("prior 'user' needs an image; fill the image cell or choose another prior")
        if prior == "retrieve" and not self.index_configured:
            problems.append(RETRIEVE_WITHOUT_INDEX)
        if prior in ("auto", "generate") and not self.text_to_image:
            problems.append(NO_TEXT_TO_IMAGE.format(prior=prior))

        if problems:
            return RejectedRow(number, key, "; ".join(problems), cells)
        return ValidRow(
            row_number=number,
            row_key=key,
            prompt=prompt,
            negative_prompt=negative_prompt,
            image=None if image is None else str(image),
            image_sha256=None if image is None else sha256_file(image),
            seconds=float(seconds),
            fps=int(fps),
            seed=int(seed),
            guidance=guidance,
            prior=prior,
            windows=windows,
            size=size,
        )

    def _key_problems(self, number: int, key: str, given_id: str) -> list[str]:
        problems = []
        if given_id and len(given_id) > MAX_ID_LENGTH:
            problems.append(f"id is {len(given_id)} characters long; use at most {MAX_ID_LENGTH}")
        if given_id and _CONTROL.search(given_id):
            problems.append("id contains a line break or control character; use a single-line id")
        first = self.first_row_of_key.setdefault(key, number)
        if first != number:
            if given_id:
                problems.append(f"duplicate id {given_id!r}: row {first} already uses it; give each row its own id")
            else:
                problems.append(
                    f"same cells as row {first}, which makes the same video; change a value (e.g. the seed) or drop the row"
                )
        return problems


def read_prompt_csv(
    path: str | os.PathLike[str],
    image_roots: Sequence[str | os.PathLike[str]] | None = None,
    *,
    index_configured: bool = False,
    text_to_image: bool = True,
    preset: str | None = None,
    guidance_input: bool = True,
) -> PromptCsv:
    """Read and validate a prompt CSV; raise one ``ValueError`` line if the file as a whole is unusable.

    ``image_roots`` are the folders row images must lie in after resolving symlinks (default:
    the CSV's own folder). ``index_configured`` says the run has a retrieval index; without one,
    rows asking for prior ``retrieve`` are rejected (``auto`` then generates text-to-image).
    ``text_to_image`` says the run has a text-to-image model; without one, rows without an image
    whose prior is ``auto`` or ``generate`` are rejected. Rows without an ``fps`` get the frame rate of
    ``preset`` (default: :func:`magic141.presets.default_preset_name`). ``guidance_input`` says the model
    takes a guidance scale; without one, rows whose guidance differs from the preset's are rejected.
    """
    chosen = get_preset(preset or default_preset_name())
    default_guidance = None if guidance_input else chosen.guidance_scale
    file = Path(path).absolute()
    try:
        data = file.read_bytes()
    except FileNotFoundError:
        raise ValueError(f"prompt CSV {str(path)!r} does not exist; give the path of a CSV file") from None
    except IsADirectoryError:
        raise ValueError(f"prompt CSV {str(path)!r} is a folder; give the path of a CSV file") from None
    except OSError as exc:
        raise ValueError(f"prompt CSV {str(path)!r} cannot be read ({exc.strerror}); check its permissions") from None
    text = _decode(file, data)
    csv_dir = file.parent.resolve()
    roots = [csv_dir] if image_roots is None else [Path(root).absolute().resolve() for root in image_roots]
    columns: tuple[str, ...] | None = None
    checker: _RowChecker | None = None
    valid: list[ValidRow] = []
    rejected: list[RejectedRow] = []
    for number, raw in _records(file, text):
        if not any(raw):
            continue
        if columns is None or checker is None:
            columns = _header(file, raw)
            checker = _RowChecker(columns, csv_dir, roots, index_configured, text_to_image, chosen, default_guidance)
            continue
        row = checker.check(number, raw)
        if isinstance(row, ValidRow):
            valid.append(row)
        else:
            rejected.append(row)
    if columns is None:
        raise ValueError(f"prompt CSV {str(path)!r} is empty; its first row must name the columns, e.g. prompt,seconds,seed")
    unknown = tuple(column for column in columns if column and column not in COLUMNS)
    if unknown:
        logger.warning("prompt CSV %s has unknown column(s) %s; rows with values there are rejected", file, ", ".join(unknown))
    logger.info("read prompt CSV %s: %d valid row(s), %d rejected", file, len(valid), len(rejected))
    return PromptCsv(
        path=str(file),
        sha256=hashlib.sha256(data).hexdigest(),
        columns=columns,
        unknown_columns=unknown,
        valid=tuple(valid),
        rejected=tuple(rejected),
    )

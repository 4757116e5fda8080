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
- The whole file is refused, with one ``InputError`` line, when it cannot be read, is empty,
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
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from magic141.utils import InputError, sha256_file
from tasks.request import ModelSpec, PriorSpec, PromptSpec, RenderSpec
from tasks.request.checks import MAX_PROMPT_CHARS
from tasks.request.parts import DEFAULT_SECONDS

logger = logging.getLogger(__name__)
_last_read: dict[tuple[Any, ...], PromptCsv] = {}  # this process's last reading (see read_prompt_csv)
_last_read_lock = threading.Lock()

COLUMNS = ("prompt", "id", "image", "seconds", "fps", "seed", "guidance", "negative_prompt", "prior", "windows", "size")
MAX_ID_LENGTH = 255
CONTENT_KEY_VERSION = 1
DEFAULT_PRIOR = "auto"
DEFAULT_WINDOWS = "chained"
_DECIMAL = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?", re.ASCII)
_INTEGER = re.compile(r"[+-]?\d+", re.ASCII)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
MAX_CELL_CHARS = MAX_PROMPT_CHARS  # any cell; the prompt's own check names the same limit
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")
@dataclass(frozen=True)
class RowDefaults:
    """What a batch gives every row: the model, the sampler steps, the render pool and the prior's settings.

    ``prior`` holds the batch's retrieval index (checked once for the batch), threshold and strength; each row
    chooses its own mode and image.
    """

    model: ModelSpec = field(default_factory=ModelSpec)
    prior: PriorSpec = field(default_factory=PriorSpec)
    steps: int | None = None
    workers: int = 0
    ray_address: str | None = None


@dataclass(frozen=True)
class ValidRow:
    """A row that passed every check: the parts of its generation request (defaults filled in, paths absolute)."""

    row_number: int
    row_key: str
    prompt: PromptSpec
    render: RenderSpec
    prior: PriorSpec
    image_sha256: str | None


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
    """The file's text, or one ``InputError`` saying why it is not a UTF-8 CSV."""
    shown = str(path)
    if not data.strip():
        raise InputError(f"prompt CSV {shown!r} is empty; its first row must name the columns, e.g. prompt,seconds,seed")
    if data.startswith(_UTF16_BOMS):
        raise InputError(f"prompt CSV {shown!r} is UTF-16 text; save it as UTF-8 CSV")
    if b"\x00" in data:
        raise InputError(f"prompt CSV {shown!r} is a binary file, not CSV text; give a UTF-8 CSV file")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise InputError(
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
            raise InputError(
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
            raise InputError(f"prompt CSV {str(path)!r} names column {column!r} twice in its header; keep one")
        seen.add(column)
    if "prompt" not in columns:
        found = ", ".join(repr(c) for c in columns if c) or "no names"
        hint = ""
        if len(columns) == 1 and (";" in columns[0] or "\t" in columns[0]):
            hint = " (it looks separated by ';' or tabs; CSV cells are separated by commas)"
        raise InputError(
            f"prompt CSV {str(path)!r} has no 'prompt' column (header: {found}){hint}; "
            f"make the first row name the columns, e.g. prompt,seconds,seed"
        )
    return columns


def _number(column: str, text: str, integer: bool) -> float | int:
    pattern, example = (_INTEGER, "24") if integer else (_DECIMAL, "2.5")
    if not pattern.fullmatch(text):
        kind = "a whole number" if integer else "a number"
        raise InputError(f"{column} {text!r} is not {kind}; write e.g. {example}")
    value = int(text) if integer else float(text)
    if not integer and not math.isfinite(value):
        raise InputError(f"{column} {text!r} is out of range; write e.g. {example}")
    return value


def _row_key(cells: Mapping[str, str]) -> str:
    if cells.get("id"):
        return cells["id"]
    content = {name: value for name, value in sorted(cells.items()) if value and name != "id"}
    digest = hashlib.sha256(json.dumps(content, sort_keys=True, ensure_ascii=False).encode("utf-8")).hexdigest()
    return f"row-{digest[:16]}"


def _resolve_image(text: str, csv_dir: Path, roots: Sequence[Path]) -> Path:
    """The image's real path, checked to lie inside an image root (its content is checked by the prior)."""
    given = Path(text)
    resolved = (given if given.is_absolute() else csv_dir / given).resolve()
    if not any(resolved.is_relative_to(root) for root in roots):
        folders = ", ".join(str(root) for root in roots)
        raise InputError(
            f"image {text!r} resolves to {str(resolved)!r}, outside the image folders ({folders}); "
            f"move it into one of them or add its folder to the image roots"
        )
    return resolved


class _RowChecker:
    """Validates rows one by one into request parts; remembers keys to reject later duplicates."""

    def __init__(self, columns: tuple[str, ...], csv_dir: Path, roots: Sequence[Path], defaults: RowDefaults) -> None:
        self.columns = columns
        self.defaults = defaults
        self.csv_dir = csv_dir
        self.roots = roots
        self.first_row_of_key: dict[str, int] = {}

    def check(self, number: int, raw: list[str]) -> ValidRow | RejectedRow:
        cells = {column: raw[i] if i < len(raw) else "" for i, column in enumerate(self.columns) if column}
        problems: list[str] = []

        def attempt(check: Any, *args: Any) -> Any:
            try:
                return check(*args)
            except InputError as exc:
                problems.append(exc.in_csv)
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
        negative = cells.get("negative_prompt", "")
        prompt = attempt(PromptSpec, cells.get("prompt", ""), negative if len(negative) <= MAX_CELL_CHARS else None)

        def number_cell(column: str, integer: bool, default: float | int | None) -> Any:
            """The cell's number; a bad one is a problem, and the default stands in so later checks still run."""
            if not cells.get(column):
                return default
            value = attempt(_number, column, cells[column], integer)
            return default if value is None else value

        defaults, model = self.defaults, self.defaults.model
        render = attempt(
            lambda: RenderSpec.resolve(
                model, seconds=number_cell("seconds", False, DEFAULT_SECONDS), fps=number_cell("fps", True, None),
                seed=number_cell("seed", True, default_seed(key)), guidance=number_cell("guidance", False, None),
                windows=(cells.get("windows") or DEFAULT_WINDOWS).lower(), size=cells.get("size") or "auto",
                steps=defaults.steps, workers=defaults.workers, ray_address=defaults.ray_address,
            )
        )
        mode = (cells.get("prior") or DEFAULT_PRIOR).lower()
        image = attempt(_resolve_image, cells["image"], self.csv_dir, self.roots) if cells.get("image") else None
        if image is not None and mode == "auto":
            mode = "user"
        template = defaults.prior
        prior = attempt(lambda: PriorSpec.choose(
            model, mode, None if image is None else str(image), template.index_dir, template.threshold,
            template.strength, index_checked=True,
        ))
        if problems or prompt is None or render is None or prior is None:
            return RejectedRow(number, key, "; ".join(problems), cells)
        return ValidRow(number, key, prompt, render, prior, None if image is None else sha256_file(image))

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
    defaults: RowDefaults | None = None,
) -> PromptCsv:
    """Read and validate a prompt CSV; raise one ``InputError`` line if the file as a whole is unusable.

    ``image_roots`` are the folders row images must lie in after resolving symlinks (default:
    the CSV's own folder). Each valid row becomes the parts of a generation request under ``defaults``
    (the batch's model, steps, render pool and prior settings; default: the default preset, no retrieval
    index). So rows are rejected when they need what the run lacks: a retrieval index for prior
    ``retrieve``, a text-to-image model (weights without ``prior/``) for ``auto`` or ``generate`` without an
    image, a guidance input (converted official weights) for a guidance scale other than the preset's.

    The file is parsed once per process: reading the same content again (its sha256) with the same roots and
    defaults returns the same reading. So ``magic141 bulk`` reads the CSV before it starts the flow (a refused
    file stops it at once, and only a row to make loads the models), and the flow's read takes that reading.
    """
    defaults = RowDefaults() if defaults is None else defaults
    file = Path(path).absolute()
    try:
        data = file.read_bytes()
    except FileNotFoundError:
        raise InputError(f"prompt CSV {str(path)!r} does not exist; give the path of a CSV file") from None
    except IsADirectoryError:
        raise InputError(f"prompt CSV {str(path)!r} is a folder; give the path of a CSV file") from None
    except OSError as exc:
        raise InputError(f"prompt CSV {str(path)!r} cannot be read ({exc.strerror}); check its permissions") from None
    roots_key = None if image_roots is None else tuple(str(root) for root in image_roots)
    identity = (str(file), hashlib.sha256(data).hexdigest(), roots_key, defaults)
    with _last_read_lock:
        if identity in _last_read:
            return _last_read[identity]
    table = _parse(file, path, data, identity[1], image_roots, defaults)
    with _last_read_lock:
        _last_read.clear()
        _last_read[identity] = table
    return table


def _parse(
    file: Path, path: str | os.PathLike[str], data: bytes, sha256: str,
    image_roots: Sequence[str | os.PathLike[str]] | None, defaults: RowDefaults,
) -> PromptCsv:
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
            checker = _RowChecker(columns, csv_dir, roots, defaults)
            continue
        row = checker.check(number, raw)
        if isinstance(row, ValidRow):
            valid.append(row)
        else:
            rejected.append(row)
    if columns is None:
        raise InputError(f"prompt CSV {str(path)!r} is empty; its first row must name the columns, e.g. prompt,seconds,seed")
    unknown = tuple(column for column in columns if column and column not in COLUMNS)
    if unknown:
        logger.warning("prompt CSV %s has unknown column(s) %s; rows with values there are rejected", file, ", ".join(unknown))
    logger.info("read prompt CSV %s: %d valid row(s), %d rejected", file, len(valid), len(rejected))
    return PromptCsv(
        path=str(file),
        sha256=sha256,
        columns=columns,
        unknown_columns=unknown,
        valid=tuple(valid),
        rejected=tuple(rejected),
    )

"""Corpus scanning: image files from folder trees and manifests, hashed, deduplicated, checked.

A source is a folder (walked recursively; hidden entries are ignored; symlinks whose target lies
outside the folder are reported and not followed) or a manifest: a ``.csv`` or ``.parquet`` file
with a ``path`` column, relative paths taken from the manifest's folder. A manifest's entries must
lie inside the manifest's folder after symlinks: an absolute or ``..`` path leading elsewhere, or a
symlink whose target lies elsewhere, is reported and never read. Every candidate file is read
once: its sha256 names its content (the first path with a given content wins, later ones are
reported as duplicates) and its header must identify an image. Nothing a file contains can stop a
scan: unreadable, non-image and otherwise unusable files are returned as :class:`Skipped` with the
reason.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import os
import stat
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import PIL.Image

from magic141.utils import typed_line
from retrieval_index.errors import RetrievalIndexError

logger = logging.getLogger(__name__)

MANIFEST_SUFFIXES = (".csv", ".parquet")
MANIFEST_PATH_COLUMN = "path"
_READ_WORKERS = 8

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class CorpusFile:
    """One distinct image of the corpus: where it is (absolute, not resolved) and what it contains."""

    path: str
    sha256: str
    size: int
    mtime_ns: int


@dataclass(frozen=True)
class Skipped:
    """A file left out of the index and why."""

    path: str
    reason: str


@dataclass
class ScanResult:
    """The distinct images found, in a stable order, and every file left out."""

    files: list[CorpusFile] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    reused_hashes: int = 0


def check_sources(sources: Sequence[Path | str]) -> list[Path]:
    """Return the sources as absolute paths; raise :class:`RetrievalIndexError` for one that cannot be a corpus."""
    if not sources:
        raise RetrievalIndexError("no corpus given; pass a folder of images or a .csv/.parquet manifest of paths")
    checked = []
    for source in sources:
        path = Path(source).absolute()
        if path.is_dir():
            checked.append(path)
        elif path.is_file() and path.suffix.lower() in MANIFEST_SUFFIXES:
            checked.append(path)
        elif path.exists():
            raise RetrievalIndexError(
                f"corpus {str(path)!r} is neither a folder nor a manifest; "
                f"pass a folder of images or a .csv/.parquet file with a {MANIFEST_PATH_COLUMN!r} column"
            )
        else:
            raise RetrievalIndexError(f"corpus {str(path)!r} does not exist; pass an existing folder or manifest")
    return checked


def read_manifest(manifest: Path, skipped: list[Skipped]) -> list[str]:
    """The paths a manifest lists, made absolute against the manifest's folder, that lie inside that folder.

    An entry leading outside the folder (absolute, through ``..``, or through a symlink) is
    appended to ``skipped`` with the reason, naming the folder; it is never read.
    """
    try:
        if manifest.suffix.lower() == ".parquet":
            import pyarrow.parquet as pq

            table = pq.read_table(manifest)
            if MANIFEST_PATH_COLUMN not in table.column_names:
                raise RetrievalIndexError(
                    f"manifest {str(manifest)!r} has no {MANIFEST_PATH_COLUMN!r} column "
                    f"(columns: {', '.join(table.column_names)}); add one listing the image paths"
                )
            values = table.column(MANIFEST_PATH_COLUMN).to_pylist()
        else:
            with manifest.open(newline="", encoding="utf-8-sig") as handle:
                reader = csv.DictReader(handle)
                if reader.fieldnames is None or MANIFEST_PATH_COLUMN not in reader.fieldnames:
                    raise RetrievalIndexError(
                        f"manifest {str(manifest)!r} has no {MANIFEST_PATH_COLUMN!r} column in its header; "
                        f"make the first line name the columns, one of them {MANIFEST_PATH_COLUMN!r}"
                    )
                values = [row[MANIFEST_PATH_COLUMN] for row in reader]
    except RetrievalIndexError:
        raise
    except (OSError, UnicodeDecodeError, csv.Error, ValueError) as exc:
        raise RetrievalIndexError(
            f"cannot read manifest {str(manifest)!r}: {typed_line(exc)}; check it is a readable CSV or Parquet file"
        ) from exc
    folder = manifest.parent
    paths = [str(folder / value.strip()) for value in values if isinstance(value, str) and value.strip()]
    return [path for path in paths if _confined(path, str(folder), skipped)]


def _confined(path: str, root: str, skipped: list[Skipped]) -> bool:
    """Whether ``path`` lies inside ``root`` after symlinks; if not, say why in ``skipped``."""
    try:
        target = os.path.realpath(path)
    except (OSError, ValueError) as exc:
        skipped.append(Skipped(path, f"not a usable path: {typed_line(exc)}"))
        return False
    if _is_inside(target, os.path.realpath(root)):
        return True
    if _is_inside(os.path.normpath(path), os.path.normpath(root)):
        reason = f"symlink leading outside the manifest's folder {root}; not followed"
    else:
        reason = f"path outside the manifest's folder {root}; not read (list only files inside that folder)"
    skipped.append(Skipped(path, reason))
    return False


def _is_inside(path: str, root: str) -> bool:
    return os.path.commonpath([path, root]) == root


def _walk(root: Path, skipped: list[Skipped]) -> Iterator[str]:
    """Files under root in sorted order; symlinks leaving root are reported, never followed."""
    real_root = os.path.realpath(root)
    for folder, dirnames, filenames in os.walk(root, followlinks=False):
        kept_dirs = []
        for name in sorted(dirnames):
            if name.startswith("."):
                continue
            path = os.path.join(folder, name)
            if os.path.islink(path):
                if not _is_inside(os.path.realpath(path), real_root):
                    skipped.append(Skipped(path, "symlink to a folder outside the corpus root; not followed"))
                continue  # a link inside the root points at a folder the walk reaches anyway
            kept_dirs.append(name)
        dirnames[:] = kept_dirs
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            path = os.path.join(folder, name)
            if os.path.islink(path):
                target = os.path.realpath(path)
                if not _is_inside(target, real_root):
                    skipped.append(Skipped(path, "symlink to a file outside the corpus root; not followed"))
                    continue
            yield path


def _candidates(sources: Sequence[Path], skipped: list[Skipped]) -> list[str]:
    found: list[str] = []
    for source in sources:
        if source.is_dir():
            found.extend(_walk(source, skipped))
        else:
            found.extend(read_manifest(source, skipped))
    return found


@dataclass(frozen=True)
class _Read:
    path: str
    file: CorpusFile | None = None
    reason: str | None = None
    reused: bool = False


def _read(path: str, known: Mapping[str, tuple[int, int, str]]) -> _Read:
    """Hash one candidate file and check its header names an image format."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        reason = "broken symlink" if os.path.islink(path) else "file not found"
        return _Read(path, reason=reason)
    except OSError as exc:
        return _Read(path, reason=f"cannot stat: {typed_line(exc)}")
    if not stat.S_ISREG(info.st_mode):
        return _Read(path, reason="not a regular file")
    previous = known.get(path)
    if previous is not None and previous[:2] == (info.st_size, info.st_mtime_ns):
        return _Read(path, CorpusFile(path, previous[2], info.st_size, info.st_mtime_ns), reused=True)
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as exc:
        return _Read(path, reason=f"unreadable: {typed_line(exc)}")
    if not data:
        return _Read(path, reason="empty file")
    try:
        with PIL.Image.open(io.BytesIO(data)) as image:
            image_format = image.format
    except PIL.UnidentifiedImageError:
        return _Read(path, reason="not an image: no image format recognises its content")
    except Exception as exc:  # PIL raises many types for bad headers; any of them means "not usable"
        return _Read(path, reason=f"not an image: {typed_line(exc)}")
    if image_format is None:
        return _Read(path, reason="not an image: unknown format")
    return _Read(path, CorpusFile(path, hashlib.sha256(data).hexdigest(), len(data), info.st_mtime_ns))


def _ordered_reads(candidates: Sequence[str], known: Mapping[str, tuple[int, int, str]]) -> Iterable[_Read]:
    workers = min(_READ_WORKERS, 2 * (os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="scan") as pool:
        yield from pool.map(lambda path: _read(path, known), candidates)


def scan_corpus(
    sources: Sequence[Path | str],
    known: Mapping[str, tuple[int, int, str]] | None = None,
    progress: Progress | None = None,
) -> ScanResult:
    """Find the distinct images of the corpus.

    ``known`` maps an absolute path to ``(size, mtime_ns, sha256)`` from an earlier build: a file
    whose size and modification time are unchanged keeps its hash without being read again.
    ``progress(done, total)`` is called as files are read.
    """
    result = ScanResult()
    candidates = _candidates(check_sources(sources), result.skipped)
    known = known or {}
    first_path: dict[str, str] = {}
    total = len(candidates)
    if progress is not None:
        progress(0, total)
    for done, read in enumerate(_ordered_reads(candidates, known), start=1):
        if read.file is None:
            result.skipped.append(Skipped(read.path, read.reason or "unusable"))
        elif read.file.sha256 in first_path:
            result.skipped.append(Skipped(read.path, f"duplicate of {first_path[read.file.sha256]}"))
        else:
            first_path[read.file.sha256] = read.path
            result.files.append(read.file)
            result.reused_hashes += read.reused
        if progress is not None:
            progress(done, total)
    logger.info(
        "scanned %d candidate files: %d distinct images, %d skipped (%d hashes reused)",
        total, len(result.files), len(result.skipped), result.reused_hashes,
    )
    return result

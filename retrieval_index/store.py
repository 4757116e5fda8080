"""Layout of an index folder: immutable versions, an atomically switched ``current`` pointer, a build lock.

::

    INDEX_DIR/
      current                 the published version's name (replaced atomically)
      versions/<version>/     manifest.json, index.faiss, metadata.parquet, embeddings.npy, skipped.json
      staging/<version>/      a build in progress; never read by readers, cleared by the next build
      cache/<model>/          embeddings by image hash (see retrieval_index.cache)
      build.lock              held by the one build that may run at a time

A version folder is complete before ``current`` names it, and ``manifest.json`` (written last)
holds the sha256 of every other file, checked when the version is opened.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import secrets
import shutil
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from magic141.utils import fsync_path, sha256_file, write_text_atomic
from retrieval_index.errors import RetrievalIndexError

logger = logging.getLogger(__name__)

FORMAT = 1
CURRENT = "current"
VERSIONS = "versions"
STAGING = "staging"
CACHE = "cache"
LOCK = "build.lock"
MANIFEST = "manifest.json"
INDEX_FILE = "index.faiss"
METADATA_FILE = "metadata.parquet"
EMBEDDINGS_FILE = "embeddings.npy"
SKIPPED_FILE = "skipped.json"
KEEP_VERSIONS = 3
INDEX_DIR_ENV = "MAGIC141_INDEX_DIR"
DEFAULT_INDEX_DIR = Path("out") / "index"


def resolve_index_dir(explicit: str | Path | None) -> Path:
    """The index folder: explicit, else ``$MAGIC141_INDEX_DIR``, else ``out/index``; absolute."""
    chosen = explicit or os.environ.get(INDEX_DIR_ENV) or DEFAULT_INDEX_DIR
    return Path(chosen).absolute()


def build_hint(index_dir: Path) -> str:
    return f"build one with `magic141 index build CORPUS --index-dir {index_dir}`"


def new_version() -> str:
    """A fresh version name; names sort in creation order."""
    return f"{datetime.now(UTC).strftime('%Y%m%dT%H%M%S%fZ')}-{secrets.token_hex(3)}"


@contextlib.contextmanager
def build_lock(index_dir: Path) -> Iterator[None]:
    """Hold the index folder's build lock (released when the process ends, however it ends)."""
    index_dir.mkdir(parents=True, exist_ok=True)
    with open(index_dir / LOCK, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            raise RetrievalIndexError(
                f"another build of the index at {index_dir} is running (process {holder}); wait for it to finish"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        try:
            yield
        finally:
            handle.seek(0)
            handle.truncate()
            fcntl.flock(handle, fcntl.LOCK_UN)


def current_version(index_dir: Path) -> str | None:
    """The published version's name, or None if nothing was published yet."""
    try:
        name = (index_dir / CURRENT).read_text().strip()
    except FileNotFoundError:
        return None
    return name or None


def version_dir(index_dir: Path, version: str) -> Path:
    return index_dir / VERSIONS / version


def published_versions(index_dir: Path) -> list[str]:
    """Names of the complete version folders, oldest first."""
    folder = index_dir / VERSIONS
    if not folder.is_dir():
        return []
    return sorted(entry.name for entry in folder.iterdir() if (entry / MANIFEST).is_file())


def read_manifest(folder: Path) -> dict[str, Any]:
    """The manifest of one version folder; raise :class:`RetrievalIndexError` if it is missing or unreadable."""
    path = folder / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise RetrievalIndexError(
            f"version folder {folder} has no {MANIFEST}; rebuild the index"
        ) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RetrievalIndexError(f"manifest {path} is unreadable ({exc}); rebuild the index") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise RetrievalIndexError(
            f"manifest {path} is not a format-{FORMAT} index manifest; rebuild the index with this version of magic141"
        )
    return manifest


def file_entry(path: Path) -> dict[str, Any]:
    return {"sha256": sha256_file(path), "bytes": path.stat().st_size}


def verify(folder: Path, manifest: dict[str, Any], names: Sequence[str]) -> None:
    """Check the named files against the manifest's sha256; raise :class:`RetrievalIndexError` on any mismatch."""
    recorded = manifest.get("files", {})
    for name in names:
        path = folder / name
        expected = recorded.get(name, {}).get("sha256")
        if expected is None:
            raise RetrievalIndexError(f"manifest of {folder} lists no checksum for {name}; rebuild the index")
        if not path.is_file():
            raise RetrievalIndexError(f"index file {path} is missing; rebuild the index")
        if sha256_file(path) != expected:
            raise RetrievalIndexError(
                f"index file {path} is corrupt (sha256 does not match the manifest); "
                f"rebuild the index with `magic141 index build`"
            )


def open_current(index_dir: Path) -> tuple[str, Path, dict[str, Any]]:
    """(version, folder, manifest) of the published version; raise :class:`RetrievalIndexError` if there is none."""
    index_dir = Path(index_dir).absolute()
    version = current_version(index_dir)
    if version is None:
        raise RetrievalIndexError(f"no index at {index_dir}; {build_hint(index_dir)}")
    folder = version_dir(index_dir, version)
    if not folder.is_dir():
        raise RetrievalIndexError(
            f"the current version {version} of the index at {index_dir} is missing; {build_hint(index_dir)}"
        )
    return version, folder, read_manifest(folder)


def clear_staging(index_dir: Path) -> None:
    """Remove what interrupted builds left behind (call only while holding the build lock)."""
    staging = index_dir / STAGING
    if not staging.is_dir():
        return
    for leftover in staging.iterdir():
        logger.warning("removing %s left by an interrupted build", leftover)
        shutil.rmtree(leftover, ignore_errors=True)


def promote(staging_folder: Path, index_dir: Path, version: str) -> Path:
    """Move a complete staged build into ``versions/`` (not yet current)."""
    target = version_dir(index_dir, version)
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(staging_folder, target)
    fsync_path(target.parent)
    return target


def switch_current(index_dir: Path, version: str) -> None:
    """Point ``current`` at ``version`` in one atomic rename."""
    if not (version_dir(index_dir, version) / MANIFEST).is_file():
        raise RetrievalIndexError(f"version {version} of {index_dir} is incomplete; it cannot become current")
    write_text_atomic(index_dir / CURRENT, f"{version}\n")
    logger.info("index %s now serves version %s", index_dir, version)


def prune(index_dir: Path, keep: int = KEEP_VERSIONS) -> list[str]:
    """Delete all but the newest ``keep`` versions, never the current one; return the deleted names."""
    current = current_version(index_dir)
    try:
        versions = [name for name in published_versions(index_dir) if name != current]
    except OSError as exc:
        logger.warning("cannot list old index versions of %s to delete them: %s", index_dir, exc)
        return []
    doomed = versions[: max(0, len(versions) - (keep - 1))]
    for name in doomed:
        shutil.rmtree(version_dir(index_dir, name), ignore_errors=True)
    if doomed:
        logger.info("deleted old index versions %s", ", ".join(doomed))
    return doomed

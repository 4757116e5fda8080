"""A full disk, recognised however it shows: an ``OSError``, ffmpeg's exit status or message, SQLite's error.

Every one becomes :class:`DiskFullError`, whose message names the folder and its free space:
``no space left on /data/videos: 0 B free; free space and rerun``.
"""

from __future__ import annotations

import errno
import shutil
from pathlib import Path

NO_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
FFMPEG_NO_SPACE_EXIT = 256 - errno.ENOSPC  # ffmpeg exits with AVERROR(ENOSPC), 228 as an exit status
NO_SPACE_TEXTS = ("no space left on device", "database or disk is full", "disk quota exceeded",
                  f"ffmpeg exited with code {FFMPEG_NO_SPACE_EXIT}")
SQLITE_IO_ERROR = "disk i/o error"  # what SQLite says when the journal cannot grow; full only if no space is left
NEARLY_FULL_BYTES = 1 << 20


class DiskFullError(OSError):
    """The disk of a folder the command writes to is full; nothing partial was published."""

    def __init__(self, folder: str | Path) -> None:
        super().__init__(errno.ENOSPC, f"no space left on {folder}: {_free(folder)} free; free space and rerun")

    def __str__(self) -> str:
        return self.strerror


def _free_bytes(folder: str | Path) -> int | None:
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def _free(folder: str | Path) -> str:
    free = _free_bytes(folder)
    if free is None:
        return "unknown"
    size = float(free)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{free} B"


def is_disk_full(exc: BaseException, folder: str | Path) -> bool:
    """Whether ``exc`` (or an exception it was raised from) says the disk under ``folder`` is full."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in NO_SPACE_ERRNOS:
            return True
        text = str(current).lower()
        if any(marker in text for marker in NO_SPACE_TEXTS):
            return True
        if SQLITE_IO_ERROR in text:
            free = _free_bytes(folder)
            if free is not None and free < NEARLY_FULL_BYTES:
                return True
        current = current.__cause__ or current.__context__
    return False

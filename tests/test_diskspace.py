"""A full disk is recognised however it shows, and named with its folder and free space."""

from __future__ import annotations

import errno
import sqlite3
from pathlib import Path

import pytest

from tasks.runtime import diskspace
from tasks.runtime.diskspace import DiskFullError, is_disk_full
from tasks.runtime.ffmpeg import EncodeError


@pytest.mark.parametrize("error", [
    OSError(errno.ENOSPC, "No space left on device"),
    OSError(errno.EDQUOT, "Disk quota exceeded"),
    EncodeError("ffmpeg exited with code 228: Error writing trailer: No space left on device"),
    sqlite3.OperationalError("database or disk is full"),
])
def test_every_form_of_a_full_disk_is_recognised(tmp_path: Path, error: Exception) -> None:
    assert is_disk_full(error, tmp_path)
    wrapped = RuntimeError("the row failed")
    wrapped.__cause__ = error
    assert is_disk_full(wrapped, tmp_path), "also as the cause of another error"


def test_other_errors_are_not_a_full_disk(tmp_path: Path) -> None:
    assert not is_disk_full(OSError(errno.EACCES, "Permission denied"), tmp_path)
    assert not is_disk_full(EncodeError("ffmpeg exited with code 1: Invalid argument"), tmp_path)


def test_sqlites_io_error_counts_only_when_no_space_is_left(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    error = sqlite3.OperationalError("disk I/O error")
    assert not is_disk_full(error, tmp_path)
    monkeypatch.setattr(diskspace, "_free_bytes", lambda folder: 512)
    assert is_disk_full(error, tmp_path)
    assert str(DiskFullError(tmp_path)) == f"no space left on {tmp_path}: 512 B free; free space and rerun"

"""The shared helpers: files published complete or absent (normal permissions, nothing left behind on failure),
and errors told on one line."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import PIL.Image
import pytest

from magic141.utils import (
    atomic_file,
    atomic_path,
    first_line,
    last_line,
    one_line,
    typed_line,
    write_atomic,
    write_json_atomic,
)


@pytest.fixture
def umask() -> Iterator[None]:
    """Run the test under umask 022 and restore the caller's umask afterwards."""
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


class WriterFailed(Exception):
    pass


def test_bytes_text_and_path_writers_publish_complete_files(tmp_path: Path, umask: None) -> None:
    write_atomic(tmp_path / "data.bin", lambda handle: handle.write(b"\x00\x01" * 1000))
    with atomic_file(tmp_path / "notes.txt", "w") as sink:
        sink.write("first line ✓\nsecond line\n")
    with atomic_path(tmp_path / "picture.png") as temporary:
        assert temporary.parent == tmp_path and temporary.suffix == ".png" and temporary.name.startswith(".")
        PIL.Image.new("RGB", (8, 8), (250, 0, 0)).save(temporary)

    assert (tmp_path / "data.bin").read_bytes() == b"\x00\x01" * 1000
    assert (tmp_path / "notes.txt").read_text(encoding="utf-8") == "first line ✓\nsecond line\n"
    with PIL.Image.open(tmp_path / "picture.png") as picture:
        assert picture.format == "PNG" and picture.getpixel((3, 3)) == (250, 0, 0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.bin", "notes.txt", "picture.png"]
    assert {mode(path) for path in tmp_path.iterdir()} == {0o644}, "0666 less the umask, not mkstemp's 0600"


def test_permissions_follow_the_umask(tmp_path: Path) -> None:
    previous = os.umask(0o027)
    try:
        write_json_atomic(tmp_path / "a.json", {"x": 1})
        with atomic_path(tmp_path / "b.jpg") as temporary:
            PIL.Image.new("RGB", (4, 4)).save(temporary)
    finally:
        os.umask(previous)
    assert mode(tmp_path / "a.json") == mode(tmp_path / "b.jpg") == 0o640


def test_a_replaced_file_gets_new_file_permissions(tmp_path: Path, umask: None) -> None:
    target = tmp_path / "current"
    target.write_text("old\n")
    target.chmod(0o600)
    write_json_atomic(target, "new")
    assert target.read_text() == '"new"\n' and mode(target) == 0o644


def failing_bytes(target: Path) -> None:
    def write(handle) -> None:
        handle.write(b"half of the new content")
        raise WriterFailed("disk full")

    write_atomic(target, write)


def failing_text(target: Path) -> None:
    with atomic_file(target, "w") as sink:
        sink.write("half of the new content")
        raise WriterFailed("catalog went away")


def failing_path(target: Path) -> None:
    with atomic_path(target) as temporary:
        temporary.write_bytes(b"half of the new content")
        raise WriterFailed("ffmpeg exited with status 1")


def interrupted_bytes(target: Path) -> None:
    def write(handle) -> None:
        handle.write(b"half of the new content")
        raise KeyboardInterrupt

    write_atomic(target, write)


@pytest.mark.parametrize("writer", [failing_bytes, failing_text, failing_path, interrupted_bytes])
def test_a_failing_writer_leaves_the_old_file_and_no_temporary_file(tmp_path: Path, writer) -> None:
    target = tmp_path / "sheet.jpg"
    target.write_bytes(b"the complete old content")

    with pytest.raises((WriterFailed, KeyboardInterrupt)):
        writer(target)

    assert target.read_bytes() == b"the complete old content"
    assert [p.name for p in tmp_path.iterdir()] == ["sheet.jpg"]


def test_a_failing_writer_of_a_new_file_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(WriterFailed):
        failing_path(tmp_path / "new.mp4")
    assert list(tmp_path.iterdir()) == []


def test_only_write_modes_are_accepted(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="mode must be 'wb' or 'w', got 'ab'"):
        atomic_file(tmp_path / "x", "ab")  # type: ignore[call-overload]
    assert list(tmp_path.iterdir()) == []


def test_errors_are_told_on_one_line_and_an_empty_message_by_its_type() -> None:
    remote = RuntimeError("Traceback (most recent call last):\n  File 'x.py'\n\nValueError: weights folder 'w' is gone\n")
    assert one_line(remote) == "Traceback (most recent call last): File 'x.py' ValueError: weights folder 'w' is gone"
    assert first_line(remote) == "Traceback (most recent call last):"
    assert last_line(remote) == "ValueError: weights folder 'w' is gone"
    assert [helper(KeyError()) for helper in (one_line, first_line, last_line, typed_line)] == ["KeyError"] * 4
    assert typed_line(OSError("disk  full\n")) == "OSError: disk full"
    assert (one_line(" \n "), first_line(""), last_line("")) == ("", "", "")

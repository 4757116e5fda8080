"""The project's shared helpers: the error of bad input, crash-safe file writes, checksums, and errors on one line.

A file is either absent or complete, never half-written. Every published file of the project goes
through :func:`atomic_file` (a file object) or :func:`atomic_path` (a path, for tools such as ffmpeg
or PIL that open the file themselves):
the content goes into a temporary sibling, which is fsynced and renamed over the target, and
the rename is made durable by fsyncing the folder. If the writer fails, the temporary file is
removed and an older file at the target is left as it was. New files get the permissions any
newly created file gets (``0666`` less the umask, e.g. ``0644``), not the owner-only ``0600``
of :func:`tempfile.mkstemp`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import IO, Any, BinaryIO, Literal, overload


class InputError(ValueError):
    """What was asked for cannot be done as given: a bad option, CSV cell, file or weights folder.

    The message is one line naming the problem and what to do. It decides what happens next: the CLI
    prints it and exits with status 2, and Prefect does not retry a task that raised it (bad input does not get better on
    retry). ``in_csv`` is the same problem worded for a prompt CSV's row (cells, not options) where the two differ.
    """

    def __init__(self, message: str, *, in_csv: str | None = None) -> None:
        super().__init__(message)
        self.in_csv = message if in_csv is None else in_csv


_NEW_FILE_MODE = 0o666  # the kernel applies the umask (and a folder's default ACL), as for any new file
_NAME_ATTEMPTS = 16


def fsync_path(path: Path) -> None:
    """Make a file's content, or a rename or creation inside a folder, durable."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _create_sibling(path: Path, suffix: str) -> tuple[int, Path]:
    """Create an empty, hidden, uniquely named file beside ``path``; return its open descriptor and path."""
    for _ in range(_NAME_ATTEMPTS):
        candidate = path.with_name(f".{path.name}.{secrets.token_hex(6)}{suffix}")
        try:
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
            return os.open(candidate, flags, _NEW_FILE_MODE), candidate
        except FileExistsError:
            continue
    raise FileExistsError(f"cannot find a free temporary name beside {path}; remove the .{path.name}.* files there")


@contextlib.contextmanager
def _publishing(path: Path, suffix: str) -> Iterator[tuple[int, Path]]:
    """Yield a new temporary sibling of ``path``; on success rename it onto ``path`` and fsync the folder.

    The body must leave the temporary file's data on disk (fsynced) before it returns. On any
    exception, ``KeyboardInterrupt`` included, the temporary file is removed and ``path`` is untouched.
    """
    descriptor, temporary = _create_sibling(path, suffix)
    try:
        yield descriptor, temporary
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    fsync_path(path.parent)


@overload
def atomic_file(path: Path, mode: Literal["wb"] = "wb", encoding: None = None) -> AbstractContextManager[BinaryIO]: ...


@overload
def atomic_file(path: Path, mode: Literal["w"], encoding: str = "utf-8") -> AbstractContextManager[IO[str]]: ...


def atomic_file(path: Path, mode: str = "wb", encoding: str | None = None) -> AbstractContextManager[IO[Any]]:
    """Open a temporary sibling of ``path`` for writing (``"wb"`` or text ``"w"``); it replaces ``path`` on exit.

    Usage: ``with atomic_file(out, "w") as sink: sink.write(text)``. ``path`` appears only after
    the block finished without an exception; if the block raises, nothing changes at ``path``.
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_file writes new files only: mode must be 'wb' or 'w', got {mode!r}")
    return _atomic_file(Path(path), mode, (encoding or "utf-8") if mode == "w" else None)


@contextlib.contextmanager
def _atomic_file(path: Path, mode: str, encoding: str | None) -> Iterator[IO[Any]]:
    with _publishing(path, ".tmp") as (descriptor, _):
        with os.fdopen(descriptor, mode, encoding=encoding) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield the path of an empty temporary sibling of ``path`` for a tool that writes to a path; publish it on exit.

    The temporary name keeps ``path``'s suffix (``.x.jpg`` stays a ``.jpg``), so tools that pick
    the format from the name (PIL, ffmpeg) write the right one. The file exists already, so write
    over it (ffmpeg needs ``-y``); it replaces ``path`` once the block finishes without an exception.
    """
    path = Path(path)
    with _publishing(path, f".tmp{path.suffix}") as (descriptor, temporary):
        os.close(descriptor)
        yield temporary
        fsync_path(temporary)


def write_atomic(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Write ``path`` through ``write(handle)`` (a binary file object); see :func:`atomic_file`."""
    with atomic_file(path) as handle:
        write(handle)


def write_text_atomic(path: Path, text: str) -> None:
    with atomic_file(path, "w") as handle:
        handle.write(text)


def write_json_atomic(path: Path, value: Any) -> None:
    write_text_atomic(path, json.dumps(value, indent=2, sort_keys=True) + "\n")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _message_lines(error: BaseException | str) -> list[str]:
    """The non-blank lines of an error's message, stripped; an exception without one gives its type name."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if not lines and isinstance(error, BaseException):
        return [type(error).__name__]
    return lines


def one_line(error: BaseException | str) -> str:
    """An error's message with its lines and runs of spaces joined; an exception's type name when it has none."""
    return " ".join(" ".join(_message_lines(error)).split())


def first_line(error: BaseException | str) -> str:
    """The first non-blank line of an error's message (a driver's or parser's, without what it echoes after)."""
    lines = _message_lines(error)
    return lines[0] if lines else ""


def last_line(error: BaseException | str) -> str:
    """The last non-blank line of an error's message: the ``Type: message`` that ends a remote traceback."""
    lines = _message_lines(error)
    return lines[-1] if lines else ""


def typed_line(error: BaseException) -> str:
    """``Type: message`` on one line (:func:`one_line`), or the type name alone when there is no message."""
    text = one_line(error)
    name = type(error).__name__
    return name if text == name else f"{name}: {text}"

"""Leases: files that say which process holds something, kept fresh by a heartbeat.

A lease records its owner (host name, machine identity, pid and the pid's start time) and what
it holds. A background thread touches every lease this process holds every :data:`HEARTBEAT_S`.
:func:`lease_expiry` tells whether an owner is gone: on the same machine, when its process no
longer runs (a reused pid does not count); for another machine, where a pid means nothing, when
the lease had no heartbeat for :data:`LEASE_S`. Bulk batches and the work folders of
:mod:`tasks.produce` are leased this way.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HEARTBEAT_S = 30.0
LEASE_S = 600.0


@dataclass(frozen=True)
class Owner:
    """The process that holds a lease.

    ``machine`` is the kernel boot id and pid namespace ("" where unknown): a pid is only
    meaningful on the same host name *and* machine. ``started`` is the process start time in
    clock ticks since boot (Linux), so a reused pid is not mistaken for the owner.
    """

    host: str
    machine: str
    pid: int
    started: str | None

    @classmethod
    def current(cls) -> Owner:
        return cls(socket.gethostname(), _machine(), os.getpid(), _process_start(os.getpid()))

    def is_local(self) -> bool:
        """Whether this process can see the owner's pid (same host name and machine identity)."""
        here = Owner.current()
        return (self.host, self.machine) == (here.host, here.machine)

    def describe(self) -> str:
        return f"process {self.pid} on {self.host}"


@dataclass(frozen=True)
class Lease:
    """A lease file as read: its owner, what it holds (``facts``) and when it was last touched."""

    path: Path
    owner: Owner
    facts: dict[str, Any]
    touched: float


def _machine() -> str:
    try:
        boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""
    return f"{boot_id} {namespace}"


def _process_start(pid: int) -> str | None:
    """The start time of a running process (None if it is gone, a zombie, or /proc is unavailable)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) ": state is field 3, starttime field 22
    return None if fields[0] in ("Z", "X") else fields[19]


def _process_alive(owner: Owner) -> bool:
    if owner.started is not None:
        return _process_start(owner.pid) == owner.started
    try:
        os.kill(owner.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class _Heartbeat:
    """Touches the lease files this process holds every :data:`HEARTBEAT_S` (one daemon thread)."""

    def __init__(self) -> None:
        self._paths: set[Path] = set()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def add(self, path: Path) -> None:
        with self._lock:
            self._paths.add(path)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._beat, name="magic141-lease-heartbeat", daemon=True)
                self._thread.start()

    def discard(self, path: Path) -> None:
        with self._lock:
            self._paths.discard(path)

    def _beat(self) -> None:
        while True:
            time.sleep(HEARTBEAT_S)
            with self._lock:
                paths = list(self._paths)
            for path in paths:
                with contextlib.suppress(OSError):
                    os.utime(path)


_HEARTBEAT = _Heartbeat()


def write_lease(path: Path, **facts: Any) -> None:
    """Create the lease file ``path`` for this process, with ``facts`` (JSON values); fails if it exists."""
    record = {**asdict(Owner.current()), "created_at": datetime.now(UTC).isoformat(), **facts}
    with open(path, "x", encoding="utf-8") as handle:
        try:
            json.dump(record, handle)
            handle.flush()
        except BaseException:  # a full disk, say: no empty or half-written lease is left behind
            path.unlink(missing_ok=True)
            raise


def read_lease(path: Path) -> Lease | None:
    """The lease at ``path``, or None when it is missing, unreadable or not a lease (e.g. still being written)."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        touched = path.stat().st_mtime
        started = record.pop("started")
        owner = Owner(str(record.pop("host")), str(record.pop("machine")), int(record.pop("pid")),
                      None if started is None else str(started))
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return Lease(path, owner, record, touched)


def lease_expiry(lease: Lease) -> str | None:
    """Why the lease's owner is gone, or None while it may still run.

    On the owner's machine the process itself is checked; for another machine only the age of
    the last heartbeat counts (a pid means nothing there).
    """
    if lease.owner.is_local():
        return None if _process_alive(lease.owner) else f"{lease.owner.describe()} is no longer running"
    silent = time.time() - lease.touched
    if silent < LEASE_S:
        return None
    return f"{lease.owner.describe()} sent no heartbeat for {silent:.0f} s"


@contextlib.contextmanager
def heartbeat(path: Path) -> Iterator[None]:
    """Touch the lease file ``path`` every :data:`HEARTBEAT_S` while the block runs."""
    _HEARTBEAT.add(path)
    try:
        yield
    finally:
        _HEARTBEAT.discard(path)


@contextlib.contextmanager
def held_lease(path: Path, **facts: Any) -> Iterator[None]:
    """Hold a lease file at ``path`` with a heartbeat while the block runs; it stays behind only if the process dies."""
    write_lease(path, **facts)
    try:
        with heartbeat(path):
            yield
    finally:
        path.unlink(missing_ok=True)

"""An inbox folder of prompt CSVs for the scheduled bulk deployment: claim settled files one at a time, file them.

Rules (also in the README): only ``*.csv`` files directly in the inbox are taken, and only once
they have not changed for ``settle_s`` seconds, so a CSV still being written is left for a later
run (writers that can should write ``name.csv.part`` and rename it to ``name.csv`` when complete).

A run claims one file at a time, oldest first, and claims the next only after the previous one is
filed. Claiming records the run's process in the lease ``.name.csv.lease`` (:mod:`tasks.runtime.leases`:
host, machine, pid and start time, touched every 30 s while the batch runs), then hard-links
``name.csv`` to ``name.csv.processing`` in place, which never replaces an existing file, and
removes ``name.csv`` (relative image paths still resolve from the inbox). Claims are made under
the lock file ``.inbox.lock``, so two runs never take the same file. A ``.processing`` file whose
lease owner is gone (a run that crashed or was killed) or that has no lease is taken over by the
next run and processed again, which renders only what the dead run had not catalogued; a live
run's claim is left alone. Afterwards the file moves to ``done/`` or ``failed/`` under its own
name, with a numbered suffix if that name is taken, never replacing a file, and its lease goes.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from prefect import get_run_logger, task
from prefect.runtime import flow_run

from magic141.utils import InputError
from tasks.runtime.leases import lease_expiry, read_lease, write_lease

PROCESSING_SUFFIX = ".processing"
LEASE_SUFFIX = ".lease"
LOCK_FILE = ".inbox.lock"
DEFAULT_SETTLE_S = 10.0


def dropped_name(path: str | Path) -> str:
    """The CSV's file name as the operator dropped it: a claim's ``.processing`` suffix removed."""
    return Path(path).name.removesuffix(PROCESSING_SUFFIX)


def claim_lease_path(processing: str | Path) -> Path:
    """The lease of the claim ``name.csv.processing``: ``.name.csv.lease`` beside it."""
    path = Path(processing)
    return path.with_name(f".{path.name.removesuffix(PROCESSING_SUFFIX)}{LEASE_SUFFIX}")


@contextlib.contextmanager
def _inbox_lock(folder: Path) -> Iterator[None]:
    """Hold the inbox's claim lock (released when the process ends, however it ends)."""
    with open(folder / LOCK_FILE, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _oldest_first(paths: Iterable[Path]) -> list[Path]:
    dated = []
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            dated.append((path.stat().st_mtime, path.name, path))
    return [path for _, _, path in sorted(dated)]


def _csv_name(name: str) -> bool:
    return name.lower().endswith(".csv") and not name.startswith(".")


def _is_csv(path: Path) -> bool:
    return _csv_name(path.name) and path.is_file()


def _is_claim(path: Path) -> bool:
    name = path.name.removesuffix(PROCESSING_SUFFIX)
    return name != path.name and _csv_name(name) and path.is_file()


def _unlink_if_same(path: Path, other: Path) -> None:
    """Remove ``path`` if it is the same file as ``other`` (a hard link of it), not a file dropped since."""
    with contextlib.suppress(FileNotFoundError):
        if os.path.samestat(os.stat(path), os.stat(other)):
            path.unlink()


def _owner_gone(lease_path: Path) -> str | None:
    """Why the claim's owner is gone (no lease counts as gone), or None while it may still run."""
    lease = read_lease(lease_path)
    if lease is None:
        return "it has no readable lease"
    return lease_expiry(lease)


def _lease(lease_path: Path, csv_name: str) -> None:
    write_lease(lease_path, csv=csv_name, flow_run_id=flow_run.get_id())


def _take_over_dead_claim(folder: Path) -> Path | None:
    """Take over the oldest ``.processing`` file whose owner is gone; None if every claim is held."""
    for processing in _oldest_first(path for path in folder.iterdir() if _is_claim(path)):
        lease_path = claim_lease_path(processing)
        gone = _owner_gone(lease_path)
        if gone is None:
            continue
        name = processing.name.removesuffix(PROCESSING_SUFFIX)
        lease_path.unlink(missing_ok=True)
        _lease(lease_path, name)
        _unlink_if_same(processing.with_name(name), processing)
        get_run_logger().warning("inbox: taking over %s (%s); processing it again", processing.name, gone)
        return processing
    return None


def _drop_dead_leases(folder: Path) -> None:
    """Remove leases of dead owners that claim no file (the owner died before linking or after filing)."""
    for lease_path in folder.iterdir():
        name = lease_path.name.removeprefix(".").removesuffix(LEASE_SUFFIX)
        if not (lease_path.name == f".{name}{LEASE_SUFFIX}" and _csv_name(name)):
            continue
        if not (folder / (name + PROCESSING_SUFFIX)).exists() and _owner_gone(lease_path) is not None:
            lease_path.unlink(missing_ok=True)


def _claim(path: Path) -> Path | None:
    """Lease and link ``path`` to its ``.processing`` name; None if a claim of that name exists or it vanished."""
    processing = path.with_name(path.name + PROCESSING_SUFFIX)
    lease_path = claim_lease_path(processing)
    try:
        _lease(lease_path, path.name)
    except FileExistsError:
        get_run_logger().info("inbox: an earlier %s is still being processed; leaving this one for a later run",
                              path.name)
        return None
    try:
        os.link(path, processing)
    except (FileExistsError, FileNotFoundError):
        lease_path.unlink()
        return None
    _unlink_if_same(path, processing)
    return processing


@task(name="inbox-claim")
def claim_next(inbox: str, settle_s: float = DEFAULT_SETTLE_S) -> str | None:
    """Claim the next CSV of ``inbox`` for this process and return its ``.processing`` path; None when none is left.

    A claim whose owner is gone comes first, then the oldest settled ``*.csv``.
    """
    folder = Path(inbox)
    if not folder.is_dir():
        raise InputError(f"inbox {inbox!r} does not exist or is not a folder; create it or fix the deployment")
    with _inbox_lock(folder):
        taken = _take_over_dead_claim(folder)
        if taken is not None:
            return str(taken)
        _drop_dead_leases(folder)
        now = time.time()
        for path in _oldest_first(path for path in folder.iterdir() if _is_csv(path)):
            age = now - path.stat().st_mtime
            if age < settle_s:
                get_run_logger().info("inbox: %s changed %.1f s ago; leaving it for a later run", path.name, age)
                continue
            claimed = _claim(path)
            if claimed is not None:
                return str(claimed)
    return None


@task(name="inbox-file")
def file_csv(processing: str, succeeded: bool) -> str:
    """Move a claimed CSV to ``done/`` or ``failed/`` beside it, under its original name; release the claim.

    Returns the new path.
    """
    source = Path(processing)
    name = dropped_name(source)
    folder = source.parent / ("done" if succeeded else "failed")
    folder.mkdir(exist_ok=True)
    stem, suffix = os.path.splitext(name)
    number = 0
    while True:
        target = folder / (name if number == 0 else f"{stem}-{number}{suffix}")
        try:
            os.link(source, target)
            break
        except FileExistsError:
            number += 1
    source.unlink()
    claim_lease_path(source).unlink(missing_ok=True)
    get_run_logger().info("inbox: %s -> %s", name, target)
    return str(target)

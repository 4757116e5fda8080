"""An inbox folder of prompt CSVs for the scheduled bulk deployment: claim settled files, file them when done.

Rules (also in the README): only ``*.csv`` files directly in the inbox are taken, and only once
they have not changed for ``settle_s`` seconds, so a CSV still being written is left for a later
run (writers that can should write ``name.csv.part`` and rename it to ``name.csv`` when complete).
A taken file is renamed ``name.csv.processing`` in place (atomic, so two runs never take the same
file, and relative image paths still resolve from the inbox); afterwards it moves to ``done/`` or
``failed/`` under its own name, with a numbered suffix if that name is taken, never replacing a file.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from prefect import get_run_logger, task

logger = logging.getLogger(__name__)

PROCESSING_SUFFIX = ".processing"
DEFAULT_SETTLE_S = 10.0


@task(name="inbox-claim")
def claim_inbox(inbox: str, settle_s: float = DEFAULT_SETTLE_S) -> list[str]:
    """Rename every settled ``*.csv`` in ``inbox`` to ``*.csv.processing`` and return the new paths, oldest first."""
    folder = Path(inbox)
    if not folder.is_dir():
        raise ValueError(f"inbox {inbox!r} does not exist or is not a folder; create it or fix the deployment")
    now = time.time()
    claimed: list[tuple[float, str]] = []
    for path in folder.iterdir():
        if path.suffix.lower() != ".csv" or path.name.startswith(".") or not path.is_file():
            continue
        modified = path.stat().st_mtime
        if now - modified < settle_s:
            get_run_logger().info("inbox: %s changed %.1f s ago; leaving it for a later run", path.name, now - modified)
            continue
        target = path.with_name(path.name + PROCESSING_SUFFIX)
        try:
            os.rename(path, target)
        except FileNotFoundError:
            continue
        claimed.append((modified, str(target)))
    return [path for _, path in sorted(claimed)]


@task(name="inbox-file")
def file_csv(processing: str, succeeded: bool) -> str:
    """Move a claimed CSV to ``done/`` or ``failed/`` beside it, under its original name; return the new path."""
    source = Path(processing)
    name = source.name.removesuffix(PROCESSING_SUFFIX)
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
    get_run_logger().info("inbox: %s -> %s", name, target)
    return str(target)

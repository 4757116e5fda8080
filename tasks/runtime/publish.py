"""Publishing a video's files: leased work folders, the final names, and the sweep of dead runs' folders.

Everything is made in a work folder beside the output and published only once complete:

- the mp4 is hard-linked to its final name, which fails if the name exists, so two writers never
  replace each other's finished file unnoticed (:func:`claim`);
- the other files replace theirs, keeping a hard link in the work folder (:func:`publish`), so a
  sweep after a crash can tell the files a run published; :func:`remove_if_ours` takes them back.

For a video with a content key (bulk rows), an existing final file is another writer's: when that
writer catalogues the key, this one discards its copy and reports the other's video; when no row
appears within :data:`ORPHAN_GRACE_S` of the file's creation, the file is an orphan of an
interrupted run and is replaced.

Work folders are leased (:mod:`tasks.runtime.leases`): each holds ``owner.json`` naming the process
that made it, kept fresh by a heartbeat. :func:`sweep_work_dirs` removes the work folders of runs
that are gone; a live run's folder is never touched. A process killed at any instant leaves nothing
a later sweep cannot place: a folder is made as ``.new``, holds its owner record before it is renamed
``.work``, and is renamed ``.gone`` (nobody's) before its contents are removed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from prefect.concurrency.sync import concurrency

from magic141.utils import InputError
from tasks.catalog import open_catalog, redact
from tasks.request import prior_image_path
from tasks.runtime.leases import LEASE_S, Lease, heartbeat, lease_expiry, read_lease, write_lease
from tasks.runtime.thumbnails import contact_sheet_path

logger = logging.getLogger(__name__)

PRIOR_FILE = "prior.png"  # the first frame, as made in the work folder
ORPHAN_GRACE_S = 60.0
OWNER_FILE = "owner.json"
STAGED_VIDEO = "video.mp4"
_POLL_S = 0.5
NEW_GRACE_S = 60.0  # a live run's ``.new`` folder holds its owner record within milliseconds
# tempfile.mkdtemp(prefix=".<stem>.", suffix=".new"): eight characters of [a-z0-9_] in between; the
# suffix is the folder's phase: .new (being leased), .work (leased), .gone (being removed).
_WORK_DIR_NAME = re.compile(r"\..+\.[a-z0-9_]{8}\.(new|work|gone)")


def _remove(folder: Path) -> None:
    """Rename ``folder`` to ``.gone`` and remove it: a kill part-way leaves a folder any sweep removes."""
    gone = folder.with_suffix(".gone")
    try:
        folder.rename(gone)
    except FileNotFoundError:  # another sweep took it
        return
    shutil.rmtree(gone, ignore_errors=True)


@contextlib.contextmanager
def work_folder(out: Path, catalog_url: str) -> Iterator[Path]:
    """A fresh hidden work folder beside ``out``, leased to this process, removed when the block ends."""
    staging = Path(tempfile.mkdtemp(prefix=f".{out.stem}.", suffix=".new", dir=out.parent))
    try:
        write_lease(staging / OWNER_FILE, output=str(out), catalog=redact(catalog_url))
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    work_dir = staging.with_suffix(".work")
    staging.rename(work_dir)
    try:
        with heartbeat(work_dir / OWNER_FILE):
            yield work_dir
    finally:
        _remove(work_dir)


def _last_change(folder: Path) -> float:
    times = [folder.stat().st_mtime]
    for entry in folder.iterdir():
        with contextlib.suppress(FileNotFoundError):
            times.append(entry.lstat().st_mtime)
    return max(times)


def _unowned(folder: Path) -> str | None:
    """Why a work folder without a readable owner record is abandoned, or None while it may be in use.

    A ``.gone`` folder is being removed by a run that finished with it; a ``.new`` one gets its
    owner record at once, so one without it past :data:`NEW_GRACE_S` was never taken into use; a
    ``.work`` folder without one predates owner records and counts as abandoned when nothing in it
    changed for :data:`LEASE_S`.
    """
    if folder.suffix == ".gone":
        return "its run had finished with it"
    idle = time.time() - _last_change(folder)
    if folder.suffix == ".new":
        return f"it never received its owner record ({idle:.0f} s)" if idle >= NEW_GRACE_S else None
    return f"it has no owner record and nothing in it changed for {idle:.0f} s" if idle >= LEASE_S else None


def _published_from(folder: Path, out: Path) -> dict[Path, int]:
    """Each final file that is still a hard link to its copy in the work folder, with that copy's inode."""
    staged = folder / STAGED_VIDEO
    copies = {
        out: staged, prior_image_path(out): folder / PRIOR_FILE, contact_sheet_path(out): contact_sheet_path(staged),
    }
    linked: dict[Path, int] = {}
    for final, copy in copies.items():
        with contextlib.suppress(FileNotFoundError):
            if os.path.samefile(final, copy):
                linked[final] = copy.stat().st_ino
    return linked


def _discard_uncatalogued_output(folder: Path, lease: Lease, catalog_url: str) -> None:
    """Remove the files a dead run published from ``folder`` when it died before cataloguing its video."""
    output = lease.facts.get("output")
    if not isinstance(output, str):
        return
    out = Path(output)
    published = _published_from(folder, out)
    if out not in published:
        return
    if lease.facts.get("catalog") != redact(catalog_url):
        logger.warning("%s was published by a dead run into catalog %s; it is left for that catalog's runs",
                       out, lease.facts.get("catalog"))
        return
    with open_catalog(catalog_url) as catalog:
        if catalog.find_video_by_output(str(out)) is not None:
            return
    logger.warning("removing %s: the run that published it died before cataloguing it", out)
    remove_if_ours(published)


def sweep_work_dirs(folder: str | os.PathLike[str], catalog_url: str) -> list[str]:
    """Remove the work folders in ``folder`` whose runs are gone; return their paths.

    A folder without an owner record (made before owner records existed) counts as abandoned
    when nothing in it changed for :data:`LEASE_S`. A video a dead run had published under its
    final name but not catalogued goes with its folder, so no file is left that the catalog does
    not know; catalogued files are never removed.
    """
    removed: list[str] = []
    for entry in sorted(Path(folder).iterdir()):
        if not _WORK_DIR_NAME.fullmatch(entry.name) or entry.is_symlink() or not entry.is_dir():
            continue
        lease = read_lease(entry / OWNER_FILE) if entry.suffix != ".gone" else None
        try:
            why = lease_expiry(lease) if lease is not None else _unowned(entry)
        except FileNotFoundError:
            continue
        if why is None:
            continue
        logger.warning("removing work folder %s: %s", entry, why)
        if lease is not None:
            _discard_uncatalogued_output(entry, lease, catalog_url)
        _remove(entry)
        removed.append(str(entry))
    return removed


@contextlib.contextmanager
def gpu_slot(limit: str | None) -> Iterator[None]:
    """Hold one slot of the global concurrency limit ``limit`` while the block runs (nothing if None)."""
    if limit is None:
        yield
        return
    with concurrency(limit, occupy=1, strict=False):
        yield


def claim(staged: Path, out: Path, catalog_url: str, content_key: str | None) -> str | None:
    """Put ``staged`` at ``out``; return None when it is ours there, or the id of the video another writer catalogued."""
    while True:
        try:
            os.link(staged, out)
            return None
        except FileExistsError:
            if content_key is None:
                raise InputError(f"output {str(out)!r} appeared while rendering; choose another --out") from None
        with open_catalog(catalog_url) as catalog:
            existing = catalog.find_video(content_key)
        if existing is not None:
            return str(existing["id"])
        try:
            age = time.time() - out.stat().st_ctime
        except FileNotFoundError:
            continue
        if age >= ORPHAN_GRACE_S:
            logger.warning("replacing %s: no catalog row names it after %.0f s, an interrupted run left it", out, age)
            os.replace(staged, out)
            return None
        time.sleep(min(_POLL_S, ORPHAN_GRACE_S - age))


def publish(work_dir: Path, made: Path, final: Path) -> int:
    """Put ``made`` at ``final``, replacing what is there, and keep it in the work folder too; return its inode.

    The work folder keeps a hard link, so a sweep after a crash can tell the files this run published.
    """
    spare = work_dir / f"{final.name}.publish"
    os.link(made, spare)
    os.replace(spare, final)
    return made.stat().st_ino


def remove_if_ours(files: dict[Path, int]) -> None:
    """Remove each published file that is still the one this run put there (same inode)."""
    for path, inode in files.items():
        with contextlib.suppress(FileNotFoundError):
            if path.stat().st_ino == inode:
                path.unlink()

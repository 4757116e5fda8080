"""One video from a validated request: prior -> render -> (contact sheet) -> publish -> record.

Shared by the ``generate`` flow and the rows of ``bulk_generate``. Everything is made in a work
folder beside the output and published only once complete:

- the mp4 is hard-linked to its final name, which fails if the name exists, so two writers never
  replace each other's finished file unnoticed;
- the catalog row is written after the files are in place, and if recording fails the published
  files are removed again: no catalog row points at a missing file, and no file is left that the
  catalog does not know about.

For a video with a content key (bulk rows), an existing final file is another writer's: when that
writer catalogues the key, this one discards its copy and reports the other's video; when no row
appears within :data:`ORPHAN_GRACE_S` of the file's creation, the file is an orphan of an
interrupted run and is replaced.

Work folders are leased (:mod:`tasks.leases`): each holds ``owner.json`` naming the process that
made it, kept fresh by a heartbeat. :func:`sweep_work_dirs` removes the work folders of runs that
are gone; a live run's folder is never touched.
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect.concurrency.sync import concurrency

from tasks.catalog import open_catalog, redact
from tasks.diskspace import DiskFullError, is_disk_full
from tasks.leases import LEASE_S, Lease, held_lease, lease_expiry, read_lease
from tasks.prior import PRIOR_FILE, PriorPolicy, prepare_prior
from tasks.provenance import combined_fingerprint, library_versions, model_details
from tasks.record import record_video, record_video_once
from tasks.render import RenderSettings, render_video
from tasks.request import GenerateRequest, prior_image_path
from tasks.thumbnails import contact_sheet_path, write_contact_sheet

logger = logging.getLogger(__name__)

ORPHAN_GRACE_S = 60.0
OWNER_FILE = "owner.json"
STAGED_VIDEO = "video.mp4"
_POLL_S = 0.5
# tempfile.mkdtemp(prefix=".<stem>.", suffix=".work"): eight characters of [a-z0-9_] in between.
_WORK_DIR_NAME = re.compile(r"\..+\.[a-z0-9_]{8}\.work")


@contextlib.contextmanager
def work_folder(out: Path, catalog_url: str) -> Iterator[Path]:
    """A fresh hidden work folder beside ``out``, leased to this process, removed when the block ends."""
    work_dir = Path(tempfile.mkdtemp(prefix=f".{out.stem}.", suffix=".work", dir=out.parent))
    try:
        with held_lease(work_dir / OWNER_FILE, output=str(out), catalog=redact(catalog_url)):
            yield work_dir
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)


def _last_change(folder: Path) -> float:
    times = [folder.stat().st_mtime]
    for entry in folder.iterdir():
        with contextlib.suppress(FileNotFoundError):
            times.append(entry.lstat().st_mtime)
    return max(times)


def _idle(folder: Path) -> str | None:
    """Why a work folder without an owner record is abandoned, or None while it may be in use."""
    idle = time.time() - _last_change(folder)
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
    _remove_if_ours(published)


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
        lease = read_lease(entry / OWNER_FILE)
        try:
            why = lease_expiry(lease) if lease is not None else _idle(entry)
        except FileNotFoundError:
            continue
        if why is None:
            continue
        logger.warning("removing work folder %s: %s", entry, why)
        if lease is not None:
            _discard_uncatalogued_output(entry, lease, catalog_url)
        shutil.rmtree(entry, ignore_errors=True)
        removed.append(str(entry))
    return removed


@dataclass(frozen=True)
class VideoJob:
    """A validated request and how to publish it.

    ``content_key`` (bulk rows) makes recording idempotent; ``batch_id`` links the video to its
    batch; ``thumbnail`` writes a contact sheet beside the video; ``gpu_limit`` names the Prefect
    global concurrency limit a render holds a slot of (None: no limit).
    """

    request: GenerateRequest
    policy: PriorPolicy | None = None
    content_key: str | None = None
    batch_id: str | None = None
    thumbnail: bool = False
    gpu_limit: str | None = None


@dataclass(frozen=True)
class ProducedVideo:
    """The catalogued video. ``added`` is False when another writer had already catalogued its content key."""

    video_id: str
    added: bool
    path: str
    sha256: str
    frames: int
    fps: int
    width: int
    height: int
    prior_source: str
    thumbnail_path: str | None
    stage_seconds: dict[str, float]


@contextlib.contextmanager
def gpu_slot(limit: str | None) -> Iterator[None]:
    """Hold one slot of the global concurrency limit ``limit`` while the block runs (nothing if None)."""
    if limit is None:
        yield
        return
    with concurrency(limit, occupy=1, strict=False):
        yield


def _claim(staged: Path, out: Path, catalog_url: str, content_key: str | None) -> str | None:
    """Put ``staged`` at ``out``; return None when it is ours there, or the id of the video another writer catalogued."""
    while True:
        try:
            os.link(staged, out)
            return None
        except FileExistsError:
            if content_key is None:
                raise ValueError(f"output {str(out)!r} appeared while rendering; choose another --out") from None
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


def _publish(work_dir: Path, made: Path, final: Path) -> int:
    """Put ``made`` at ``final``, replacing what is there, and keep it in the work folder too; return its inode.

    The work folder keeps a hard link, so a sweep after a crash can tell the files this run published.
    """
    spare = work_dir / f"{final.name}.publish"
    os.link(made, spare)
    os.replace(spare, final)
    return made.stat().st_ino


def _remove_if_ours(files: dict[Path, int]) -> None:
    """Remove each published file that is still the one this run put there (same inode)."""
    for path, inode in files.items():
        with contextlib.suppress(FileNotFoundError):
            if path.stat().st_ino == inode:
                path.unlink()


def produce_video(job: VideoJob, flow_run_id: str | None) -> ProducedVideo:
    """Make, publish and catalogue one video (call inside a flow or task run).

    A full disk under the output folder, however it shows, raises :class:`DiskFullError` naming the
    folder and its free space; nothing partial is published.
    """
    folder = Path(job.request.out).parent
    try:
        return _produce_video(job, flow_run_id)
    except Exception as exc:
        if is_disk_full(exc, folder):
            raise DiskFullError(folder) from exc
        raise


def _produce_video(job: VideoJob, flow_run_id: str | None) -> ProducedVideo:
    started = time.perf_counter()
    request = job.request
    out = Path(request.out)
    with work_folder(out, request.catalog_url) as work_dir:
        prior = prepare_prior(
            request.prompt, request.seed, request.model, str(work_dir), request.image, request.negative_prompt,
            job.policy,
        )
        settings = RenderSettings(
            model=request.model,
            steps=request.steps,
            guidance=request.guidance,
            true_cfg=request.true_cfg,
            windows=request.windows,
            overlap=request.overlap,
            workers=request.workers,
            ray_address=request.ray_address,
        )
        staged = work_dir / STAGED_VIDEO
        with gpu_slot(job.gpu_limit):
            rendered = render_video(
                request.prompt, prior.path, str(staged), request.num_frames, request.fps, request.seed, settings,
                request.negative_prompt,
            )
        sheet = write_contact_sheet(staged) if job.thumbnail else None
        inode = staged.stat().st_ino
        winner = _claim(staged, out, request.catalog_url, job.content_key)
        if winner is not None:
            logger.info("video %s already has content key %s; discarding this copy", winner, job.content_key)
            return _as_produced(winner, False, rendered, str(out), prior.source, None, {})
        published = {out: inode}
        prior_path = prior.path
        if prior.source == "generate":
            prior_path = str(prior_image_path(out))
            published[Path(prior_path)] = _publish(work_dir, Path(prior.path), Path(prior_path))
        thumbnail_path = None
        if sheet is not None:
            thumbnail_path = str(contact_sheet_path(out))
            published[Path(thumbnail_path)] = _publish(work_dir, sheet, Path(thumbnail_path))
        timings = {
            "prior": prior.seconds,
            "prior_model": prior.model_seconds,
            "render": rendered.seconds,
            "render_model": rendered.model_seconds,
        }
        fields = _fields(job, prior_path, prior.source, prior.sha256, prior.fingerprint, prior.details, rendered,
                         str(out), thumbnail_path, {**timings, "total": time.perf_counter() - started}, flow_run_id)
        try:
            if job.content_key is None:
                video_id, added = record_video(request.catalog_url, fields, rendered.windows), True
            else:
                video_id, added = record_video_once(request.catalog_url, fields, rendered.windows)
        except BaseException:
            _remove_if_ours(published)
            raise
        if not added:
            _remove_if_ours(published)
        return _as_produced(video_id, added, rendered, str(out), prior.source, thumbnail_path, timings)


def _fields(
    job: VideoJob,
    prior_path: str,
    prior_source: str,
    prior_sha256: str,
    prior_fingerprint: str | None,
    prior_details: dict[str, Any] | None,
    rendered: Any,
    output_path: str,
    thumbnail_path: str | None,
    timings: dict[str, float],
    flow_run_id: str | None,
) -> dict[str, Any]:
    request = job.request
    fields: dict[str, Any] = {
        "prompt": request.prompt,
        "negative_prompt": request.negative_prompt,
        "seed": request.seed,
        "prior_source": prior_source,
        "prior_image_path": prior_path,
        "prior_image_sha256": prior_sha256,
        "preset": request.preset,
        "weights_fingerprint": combined_fingerprint(rendered.fingerprint, prior_fingerprint),
        "steps": request.steps,
        "guidance": request.guidance,
        "true_cfg": request.true_cfg if request.true_cfg > 1 else None,
        "seconds": request.seconds,
        "window_layout": rendered.window_layout,
        "windows_mode": request.windows,
        "output_path": output_path,
        "output_sha256": rendered.sha256,
        "output_bytes": rendered.bytes,
        "frames": rendered.frames,
        "fps": rendered.fps,
        "width": rendered.width,
        "height": rendered.height,
        "stage_timings": timings,
        "flow_run_id": flow_run_id,
        "library_versions": library_versions(),
        "model_details": model_details(request.preset, request.weights),
    }
    if job.policy is not None:
        fields["prior_details"] = prior_details
    if job.content_key is not None:
        fields.update(content_key=job.content_key, batch_id=job.batch_id, thumbnail_path=thumbnail_path)
    elif thumbnail_path is not None:
        fields["thumbnail_path"] = thumbnail_path
    return fields


def _as_produced(
    video_id: str, added: bool, rendered: Any, path: str, prior_source: str, thumbnail_path: str | None,
    timings: dict[str, float],
) -> ProducedVideo:
    return ProducedVideo(
        video_id, added, path, rendered.sha256, rendered.frames, rendered.fps, rendered.width, rendered.height,
        prior_source, thumbnail_path, timings,
    )

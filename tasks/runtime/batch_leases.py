"""Batch leases: a live bulk run's claim on its batch, and the recovery of batches whose runs died.

A run holds ``.magic141-batch-<id>.lease`` in its output folder (:func:`batch_lease`), kept fresh by a
heartbeat (:mod:`tasks.runtime.leases`). When the run stops with an error its batch is closed as
interrupted at once; when its process dies, the next run of the output folder closes it
(:func:`recover_batches`), shows the dead run's flow run as Crashed, and removes its work folders.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
from prefect.client.orchestration import get_client
from prefect.exceptions import ObjectNotFound
from prefect.states import Crashed

from magic141.utils import one_line
from tasks.catalog import CatalogError, open_catalog, redact
from tasks.catalog.batches import close_interrupted_batch
from tasks.catalog.models import new_id
from tasks.runtime.diskspace import DiskFullError, is_disk_full
from tasks.runtime.leases import heartbeat, lease_expiry, read_lease, write_lease
from tasks.runtime.publish import sweep_work_dirs

logger = logging.getLogger(__name__)

_LEASE_PREFIX = ".magic141-batch-"
_LEASE_SUFFIX = ".lease"


def batch_lease_path(out_dir: str, batch_id: str) -> Path:
    """The lease file a live run of batch ``batch_id`` holds in its output folder."""
    return Path(out_dir) / f"{_LEASE_PREFIX}{batch_id}{_LEASE_SUFFIX}"


def _interrupted(why: str) -> str:
    return f"interrupted: {why}; this row was not finished, run the CSV again to make it"


def _stopped(exc: BaseException) -> str:
    detail = one_line(exc) if str(exc).strip() else ""
    return f"the run stopped with {type(exc).__name__}" + (f" ({detail})" if detail else "")


def _close_batch(catalog_url: str, batch_id: str, why: str) -> tuple[bool, str | None]:
    """Close the batch as interrupted: (whether the catalog could be written now, the batch's flow run id)."""
    try:
        with open_catalog(catalog_url) as catalog:
            closed = close_interrupted_batch(catalog, batch_id, _interrupted(why))
    except CatalogError as exc:
        logger.warning("cannot close interrupted batch %s now (%s); a later run will", batch_id, one_line(exc))
        return False, None
    return True, None if closed is None else closed.get("flow_run_id")


def _crash_flow_run(flow_run_id: str, why: str) -> None:
    """Show a dead run's flow run as Crashed in the Prefect UI, where it would otherwise stay Running."""
    try:
        with get_client(sync_client=True) as client:
            run = client.read_flow_run(uuid.UUID(flow_run_id))
            if run.state is not None and not run.state.is_final():
                client.set_flow_run_state(run.id, Crashed(message=f"bulk run died: {why}"), force=True)
                logger.info("flow run %s (%s) marked Crashed: %s", run.name, flow_run_id, why)
    except (ObjectNotFound, ValueError, httpx.HTTPError) as exc:  # another Prefect API, or none reachable now
        logger.info("flow run %s of a dead bulk run not updated: %s", flow_run_id, one_line(exc))


@contextlib.contextmanager
def batch_lease(out_dir: str, catalog_url: str) -> Iterator[str]:
    """Yield a new batch id, leased to this process in the output folder while the block runs.

    When the block raises (an error, Ctrl-C, a termination signal), the batch is closed as
    interrupted. The lease file stays only if the process dies or the batch could not be closed:
    then a later run of the output folder closes it (:func:`recover_batches`).
    """
    batch_id = new_id()
    path = batch_lease_path(out_dir, batch_id)
    try:
        write_lease(path, batch_id=batch_id, catalog=redact(catalog_url))
    except OSError as exc:
        if is_disk_full(exc, out_dir):
            raise DiskFullError(out_dir) from exc
        raise
    with heartbeat(path):
        try:
            yield batch_id
        except BaseException as exc:
            if _close_batch(catalog_url, batch_id, _stopped(exc))[0]:
                path.unlink(missing_ok=True)
            raise
    path.unlink(missing_ok=True)


@dataclass(frozen=True)
class Recovery:
    """What a run cleared up after dead runs in its output folder."""

    closed_batches: list[str]
    removed_work_dirs: list[str]


def _recover_batch(catalog_url: str, lease_path: Path) -> str | None:
    """Close the batch of a dead run's lease and drop the lease; return the batch id, or None if left alone."""
    lease = read_lease(lease_path)
    if lease is None or not isinstance(lease.facts.get("batch_id"), str):
        return None
    why = lease_expiry(lease)
    if why is None:
        return None
    if lease.facts.get("catalog") != redact(catalog_url):
        logger.info("lease %s of a dead run belongs to catalog %s; left for that catalog's runs",
                    lease_path, lease.facts.get("catalog"))
        return None
    batch_id = lease.facts["batch_id"]
    closed, flow_run_id = _close_batch(catalog_url, batch_id, f"the bulk run's {why}")
    if not closed:
        return None
    if flow_run_id:
        _crash_flow_run(flow_run_id, why)
    lease_path.unlink(missing_ok=True)
    return batch_id


def recover_batches(out_dir: str, catalog_url: str) -> Recovery:
    """Close the batches of dead runs in ``out_dir`` as interrupted and remove their work folders.

    A run is dead when its process no longer runs (same machine) or its lease had no heartbeat
    for :data:`tasks.runtime.leases.LEASE_S` (another machine). Live runs' batches and work folders are
    not touched; a batch without a lease (made before leases existed) is left as it is.
    """
    folder = Path(out_dir)
    leases = sorted(folder.glob(f"{_LEASE_PREFIX}*{_LEASE_SUFFIX}"))
    closed = [batch_id for path in leases if (batch_id := _recover_batch(catalog_url, path)) is not None]
    return Recovery(closed, sweep_work_dirs(folder, catalog_url))

"""The ``bulk_generate`` flow: a prompt CSV -> one catalogued video per valid row, rejected rows with their reasons.

Rows run concurrently, at most ``concurrency`` at a time (a bounded thread pool; by default as
many as render workers). Each render also holds a slot of the Prefect global concurrency limit
``gpu_limit`` when the server has one, so several batches share the GPU pool. A failing row is
retried ``retries`` times, then marked failed with its error; the other rows go on. A row whose
content key is already catalogued is skipped, so rerunning a CSV (after a crash, or twice) renders
only what is missing. Before its batch starts, a run closes the batches of dead runs in its output
folder as interrupted and removes their work folders.

What the Prefect UI shows: a batch with a failed row ends Failed, its counts in the state's message
(:class:`BatchFailed` holds the result, see :func:`batch_of`); an inbox run ends Failed when one of
its CSVs was refused or had a failed row. Runs are named after the CSV and batch (``bulk
prompts.csv 2e5d9c1a``), row tasks after the row key. Catalog URLs with a password reach the flows as
secrets (:func:`tasks.catalog.hide_password`, a Prefect ``Secret`` block for deployments), so run
parameters never hold the password.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from prefect import flow
from prefect.artifacts import create_markdown_artifact
from prefect.blocks.system import Secret
from prefect.client.orchestration import get_client
from prefect.futures import as_completed
from prefect.runtime import flow_run
from prefect.states import Failed, State
from prefect.task_runners import ThreadPoolTaskRunner
from pydantic import SecretStr

from magic141.presets import default_preset_name
from tasks.bulk import (
    check_bulk,
    gpu_limit_in_force,
    plan_batch,
    produce_row,
    read_prompts,
    recover_out_dir,
    report_batch,
)
from tasks.catalog import hide_password, open_catalog, plain_url
from tasks.inbox import DEFAULT_SETTLE_S, claim_lease_path, claim_next, dropped_name, file_csv
from tasks.prior_policy import DEFAULT_STRENGTH, DEFAULT_THRESHOLD
from tasks.request import ModelSpec
from tasks.runtime.batch_leases import batch_lease
from tasks.runtime.leases import heartbeat
from tasks.runtime.progress import StageProgress
from tasks.runtime.services import ServiceStartError

logger = logging.getLogger(__name__)

GPU_LIMIT = "gpu"
CatalogUrl = str | SecretStr | Secret | None  # a URL, or a secret holding one (see the module docstring)


@dataclass(frozen=True)
class BulkResult:
    """The finished batch: its id, counts per row status and every row (status, reason, video, output)."""

    batch_id: str
    status: str
    csv_path: str
    out_dir: str
    catalog_url: str
    counts: dict[str, int]
    rows: list[dict[str, Any]]


def _bulk_run_name() -> str:
    return f"bulk {dropped_name(flow_run.parameters['csv_path'])}"


def _rename_run(name: str) -> None:
    """Give this flow run its full name once it is known (the UI shows it from then on)."""
    run_id = flow_run.get_id()
    if run_id is None:
        return
    with get_client(sync_client=True) as client:
        client.update_flow_run(run_id, name=name)


@flow(name="bulk-generate", flow_run_name=_bulk_run_name, log_prints=False)
def bulk_generate(
    csv_path: str,
    out_dir: str,
    catalog_url: CatalogUrl = None,
    index_dir: str | None = None,
    image_roots: list[str] | None = None,
    preset: str | None = None,
    weights: str | None = None,
    quantize: str | None = None,
    low_memory: bool = False,
    steps: int | None = None,
    workers: int = 0,
    ray_address: str | None = None,
    concurrency: int | None = None,
    retries: int = 2,
    retry_delay_s: float = 5.0,
    threshold: float = DEFAULT_THRESHOLD,
    strength: float = DEFAULT_STRENGTH,
    gpu_limit: str | None = GPU_LIMIT,
) -> BulkResult | State:
    """Produce every valid row of the prompt CSV at ``csv_path`` into ``out_dir`` and catalogue the batch.

    Ends Failed when a row failed: a direct call then raises :class:`BatchFailed`, which holds the
    :class:`BulkResult` (:func:`batch_of` reads it from the state either way). ``catalog_url`` (a URL
    or a secret holding one) defaults to ``$MAGIC141_CATALOG_URL`` or ``catalog.db`` in ``out_dir``;
    ``index_dir`` is the retrieval index for the ``auto`` and ``retrieve`` priors (none: ``auto``
    generates text-to-image). ``image_roots`` are the folders row images must lie in (default:
    the CSV's folder). ``concurrency`` defaults to ``max(1, workers)``. ``preset`` defaults to
    ``$MAGIC141_PRESET`` or ``toy``, ``steps`` to the preset's.
    """
    rows_at_once = concurrency if concurrency is not None else max(1, workers)
    settings = check_bulk(
        out_dir, plain_url(catalog_url), preset=preset, weights=weights, quantize=quantize, low_memory=low_memory, steps=steps,
        workers=workers,
        ray_address=ray_address, index_dir=index_dir, threshold=threshold, strength=strength,
        concurrency=rows_at_once, retries=retries,
    )
    table = read_prompts(csv_path, settings, image_roots)
    open_catalog(settings.catalog_url, wait_s=0).close()  # before any work: an unreachable catalog fails it at once
    settings = replace(settings, gpu_limit=gpu_limit_in_force(gpu_limit))
    recover_out_dir(settings)
    with batch_lease(settings.out_dir, settings.catalog_url) as batch_id:
        _rename_run(f"bulk {dropped_name(csv_path)} {batch_id[:8]}")
        jobs = plan_batch(table, settings, batch_id)
        progress = StageProgress("bulk", f"Batch {batch_id}: {len(jobs)} row(s) to produce")
        progress.update(0, len(jobs))
        row_task = produce_row.with_options(
            retries=retries, retry_delay_seconds=retry_delay_s, task_run_name="row {job.row.row_key}"
        )
        with ThreadPoolTaskRunner(max_workers=rows_at_once) as runner:
            futures = [
                runner.submit(row_task, {"job": job, "batch_id": batch_id, "settings": settings}) for job in jobs
            ]
            for finished, future in enumerate(as_completed(futures), start=1):
                if future.state.is_failed():
                    logger.warning("a row of batch %s failed after its retries: %s", batch_id, future.state.message)
                progress.update(finished, len(jobs))
        report = report_batch(batch_id, settings.catalog_url)
    result = BulkResult(
        report.batch_id, report.status, table.path, settings.out_dir, settings.catalog_url, report.counts, report.rows
    )
    unfinished = report.counts.get("failed", 0) + report.counts.get("pending", 0)
    if unfinished:
        failure = BatchFailed(result, unfinished)
        return Failed(message=str(failure), data=failure)
    return result


class BatchFailed(Exception):
    """A batch ended with failed rows; ``result`` is the whole batch (what a direct call of the flow raises)."""

    def __init__(self, result: BulkResult, unfinished: int) -> None:
        counts = ", ".join(f"{count} {name}" for name, count in result.counts.items() if name != "total")
        super().__init__(f"{unfinished} of {result.counts.get('total', 0)} row(s) failed ({counts})")
        self.result = result


def batch_of(state: State) -> BulkResult:
    """The batch a ``bulk_generate(..., return_state=True)`` run made, failed rows or not.

    Raises the run's exception when it made no batch (the CSV refused, the catalog unreachable, ...).
    """
    value = state.result(raise_on_failure=False)
    if isinstance(value, BatchFailed):
        return value.result
    if isinstance(value, BaseException):
        raise value
    return value


def _inbox_run_name() -> str:
    return f"inbox {Path(flow_run.parameters['inbox']).name}"


@flow(name="bulk-inbox", flow_run_name=_inbox_run_name, log_prints=False)
def bulk_inbox(
    inbox: str,
    out_dir: str,
    catalog_url: CatalogUrl = None,
    index_dir: str | None = None,
    preset: str | None = None,
    weights: str | None = None,
    quantize: str | None = None,
    low_memory: bool = False,
    workers: int = 0,
    concurrency: int | None = None,
    settle_s: float = DEFAULT_SETTLE_S,
    gpu_limit: str | None = GPU_LIMIT,
) -> list[dict[str, Any]] | State:
    """Run ``bulk_generate`` on the settled CSVs in ``inbox``, one at a time; file each in ``done/`` or ``failed/``.

    Each CSV is claimed only when the previous one is filed, so a CSV dropped meanwhile is taken by
    this run too, and claims left by dead runs are taken over first (:mod:`tasks.inbox`). A CSV
    goes to ``failed/`` when it is refused as a whole or a valid row failed; rejected rows alone do
    not fail it (their reasons are in the batch). Returns one entry per CSV; the run ends Failed
    when a CSV went to ``failed/`` (a direct call raises :class:`InboxFailed`). An artifact lists each
    CSV by its dropped name and where it was filed.
    """
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    catalog = hide_password(plain_url(catalog_url))
    handled: list[dict[str, Any]] = []
    while (claimed := claim_next(inbox, settle_s)) is not None:
        with heartbeat(claim_lease_path(claimed)):
            handled.append(_run_claimed(claimed, inbox, out_dir, catalog, index_dir,
                                        ModelSpec(preset or default_preset_name(), weights, quantize, low_memory), workers, concurrency,
                                        gpu_limit))
    if handled:
        create_markdown_artifact(_inbox_markdown(inbox, handled), key="bulk-inbox",
                                 description=f"CSVs taken from {inbox} by this run")
    failed = [entry["name"] for entry in handled if not entry["succeeded"]]
    if failed:
        failure = InboxFailed(handled, f"{len(failed)} of {len(handled)} CSV(s) failed: {', '.join(failed)}")
        return Failed(message=str(failure), data=failure)
    return handled


class InboxFailed(Exception):
    """An inbox run filed a CSV in ``failed/``; ``handled`` has every CSV's entry (what a direct call raises)."""

    def __init__(self, handled: list[dict[str, Any]], message: str) -> None:
        super().__init__(message)
        self.handled = handled


def _inbox_markdown(inbox: str, handled: list[dict[str, Any]]) -> str:
    lines = [f"# Inbox `{inbox}`", "", "| CSV | filed as | batch | outcome |", "|---|---|---|---|"]
    for entry in handled:
        outcome = entry.get("error") or ", ".join(
            f"{count} {name}" for name, count in entry["counts"].items() if name != "total"
        )
        outcome = " ".join(str(outcome).split()).replace("|", "\\|")
        lines.append(f"| {entry['name']} | `{entry['csv']}` | {entry['batch_id'] or '-'} | {outcome} |")
    return "\n".join(lines) + "\n"


def _run_claimed(
    claimed: str, inbox: str, out_dir: str, catalog_url: str | SecretStr | None, index_dir: str | None,
    model: ModelSpec, workers: int, concurrency: int | None, gpu_limit: str | None,
) -> dict[str, Any]:
    """Produce one claimed CSV and file it; its entry in the ``bulk_inbox`` result."""
    name = dropped_name(claimed)
    try:
        result = batch_of(bulk_generate(
            claimed, out_dir, catalog_url, index_dir, [inbox], model.preset, model.weights, model.quantize,
            model.low_memory, workers=workers, concurrency=concurrency, gpu_limit=gpu_limit, return_state=True,
        ))
    except ServiceStartError:
        raise  # the CSV stays claimed: the next run takes the claim over and produces it
    except Exception as exc:
        logger.warning("bulk run of %s failed: %s", name, exc)
        return {"name": name, "csv": file_csv(claimed, False), "succeeded": False, "batch_id": None,
                "error": str(exc)}
    succeeded = result.counts.get("failed", 0) == 0 and result.counts.get("pending", 0) == 0
    return {"name": name, "csv": file_csv(claimed, succeeded), "succeeded": succeeded, "batch_id": result.batch_id,
            "counts": result.counts}

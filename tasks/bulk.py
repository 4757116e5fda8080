"""Bulk production stages: read a prompt CSV, plan the batch, make one row's video, report the batch.

Each row's video is named by its content key (``<row key>-<first 12 hex of the key>.mp4`` in the
output folder), so a rerun finds what an earlier run made: a row whose content key is already in
the catalog is skipped without rendering.

A run holds a lease on its batch (:mod:`tasks.runtime.batch_leases`). Every run first recovers what
dead runs left in its output folder (:func:`recover_out_dir`): their batches are closed as interrupted
and their work folders removed; batches and work folders of runs that are alive are not touched.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.client.orchestration import get_client
from prefect.context import TaskRunContext
from prefect.exceptions import ObjectNotFound
from prefect.runtime import flow_run

from magic141.presets import default_preset_name
from magic141.utils import InputError, one_line, typed_line
from tasks.bulk_csv import PromptCsv, RowDefaults, ValidRow, content_key, read_prompt_csv
from tasks.catalog import open_catalog, resolve_catalog_url
from tasks.catalog.batches import (
    RowRecord,
    add_rows,
    finish_batch,
    list_rows,
    set_row,
    start_batch,
)
from tasks.inbox import dropped_name
from tasks.prior_policy import DEFAULT_STRENGTH, DEFAULT_THRESHOLD
from tasks.produce import produce_video
from tasks.provenance import combined_fingerprint
from tasks.request import GenerateRequest, ModelSpec, OutputSpec, PriorSpec, RenderSpec, printable_text
from tasks.request.checks import check_index_dir
from tasks.runtime.batch_leases import Recovery, recover_batches
from tasks.runtime.diskspace import DiskFullError
from tasks.runtime.model_cache import image_prior, video_pipeline

logger = logging.getLogger(__name__)

MAX_CONCURRENCY = 256
_SLUG = re.compile(r"[^a-z0-9]+")
# Prefect refuses events over about 1.5 MB, artifacts included: a batch's artifacts hold a page of rows.
ARTIFACT_ROWS = 500
ARTIFACT_ROWS_LISTED = 100
ARTIFACT_REASONS = 20
ARTIFACT_CELL_CHARS = 300


@dataclass(frozen=True)
class BulkSettings:
    """How every row of a batch is made (``rows``) and where it goes (absolute paths)."""

    out_dir: str
    catalog_url: str
    rows: RowDefaults
    gpu_limit: str | None = None

    @property
    def model(self) -> ModelSpec:
        return self.rows.model


@dataclass(frozen=True)
class RowJob:
    """One valid row to produce, and its generation request (its output named by its content key)."""

    row: ValidRow
    request: GenerateRequest

    @property
    def content_key(self) -> str:
        return str(self.request.output.content_key)


@dataclass(frozen=True)
class RowOutcome:
    """What one row's task did: ``done`` (rendered here) or ``skipped`` (the key's video already existed)."""

    row_number: int
    status: str
    video_id: str
    output: str
    prior_source: str | None
    attempts: int


def check_bulk(
    out_dir: str | os.PathLike[str],
    catalog_url: str | None,
    *,
    preset: str | None = None,
    weights: str | None = None,
    quantize: str | None = None,
    low_memory: bool = False,
    steps: int | None = None,
    workers: int = 0,
    ray_address: str | None = None,
    index_dir: str | None = None,
    threshold: float = DEFAULT_THRESHOLD,
    strength: float = DEFAULT_STRENGTH,
    concurrency: int = 1,
    retries: int = 2,
) -> BulkSettings:
    """Check the batch-wide options before any work; raise one ``InputError`` line naming the problem.

    The catalog is not opened here: the flow reads the CSV first, so a refused file creates nothing.
    The render options every row shares (steps, workers, Ray address, low memory) are checked here with the
    preset's defaults for the rest, so a bad one refuses the batch instead of every row.
    """
    folder = Path(out_dir).absolute()
    if not folder.is_dir():
        raise InputError(f"output folder {str(folder)!r} does not exist or is not a folder; create it first")
    if not os.access(folder, os.W_OK):
        raise InputError(f"output folder {str(folder)!r} is not writable; choose another --out-dir")
    model = ModelSpec(preset or default_preset_name(), weights, quantize, low_memory)
    RenderSpec.resolve(model, steps=steps, workers=workers, ray_address=ray_address)
    if not 1 <= concurrency <= MAX_CONCURRENCY:
        raise InputError(f"concurrency must be between 1 and {MAX_CONCURRENCY}, got {concurrency}")
    if not 0 <= retries <= 10:
        raise InputError(f"retries must be between 0 and 10, got {retries}")
    prior = PriorSpec("auto", None, None if index_dir is None else check_index_dir(index_dir), threshold, strength)
    return BulkSettings(str(folder), resolve_catalog_url(catalog_url, folder), RowDefaults(model, prior, steps, workers,
                                                                                         ray_address))


def row_output(out_dir: str, row_key: str, key: str) -> str:
    """The mp4 a row becomes: its key as a slug and the first 12 hex digits of its content key."""
    slug = _SLUG.sub("-", row_key.lower()).strip("-")[:60].strip("-") or "row"
    return str(Path(out_dir) / f"{slug}-{key[:12]}.mp4")


@task(name="bulk-read")
def read_prompts(csv_path: str, settings: BulkSettings, image_roots: list[str] | None = None) -> PromptCsv:
    """Read and validate the prompt CSV into requests under the batch's settings (whole-file problems raise
    one ``InputError`` line; rows that need what the run lacks are rejected, see :func:`read_prompt_csv`)."""
    table = read_prompt_csv(csv_path, image_roots, settings.rows)
    get_run_logger().info("%s: %d valid row(s), %d rejected", table.path, len(table.valid), len(table.rejected))
    return table


@task(name="gpu-limit")
def gpu_limit_in_force(name: str | None) -> str | None:
    """``name`` when that global concurrency limit exists on the Prefect server, else None (renders unbounded)."""
    if name is None:
        return None
    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            get_run_logger().info("no global concurrency limit %r; renders are bounded by the concurrency only", name)
            return None
    return name


def _video_fingerprint(rows: RowDefaults) -> str:
    if rows.workers == 0:
        return video_pipeline(rows.model).weights_fingerprint
    from tasks.runtime.render_pool import PoolConfig, get_pool

    return get_pool(PoolConfig(rows.model, rows.workers, rows.ray_address)).fingerprint


@task(name="bulk-plan")
def plan_batch(table: PromptCsv, settings: BulkSettings, batch_id: str) -> list[RowJob]:
    """Start batch ``batch_id``, key every valid row by content, record every row (pending, or rejected and why).

    A row that needs the text-to-image prior when the weights have none is rejected here.
    """
    video_fingerprint = _video_fingerprint(settings.rows) if table.valid else ""  # no model is loaded for no row
    prior_fingerprint: str | None = None
    prior_problem: str | None = None
    if any(row.prior.may_generate() for row in table.valid):
        try:
            prior_fingerprint = image_prior(settings.model).weights_fingerprint
        except ValueError as exc:
            prior_problem = one_line(exc)
    jobs: list[RowJob] = []
    records = [RowRecord(row.row_number, row.row_key, "rejected", row.reason) for row in table.rejected]
    for row in table.valid:
        if row.prior.may_generate() and prior_problem is not None:
            records.append(RowRecord(row.row_number, row.row_key, "rejected", prior_problem))
            continue
        render = row.render
        key = content_key(
            prompt=row.prompt.text, negative_prompt=row.prompt.negative, seconds=render.seconds, fps=render.fps,
            seed=render.seed, guidance=render.guidance, steps=render.steps, windows=render.windows,
            prior=row.prior.mode, image_sha256=row.image_sha256, preset=settings.model.preset,
            model_fingerprint=combined_fingerprint(video_fingerprint, prior_fingerprint if row.prior.may_generate() else None),
            prior_settings=row.prior.settings(), size=render.size,
        )
        output = OutputSpec(row_output(settings.out_dir, row.row_key, key), settings.catalog_url, key, batch_id,
                            thumbnail=True, gpu_limit=settings.gpu_limit)
        jobs.append(RowJob(row, GenerateRequest(row.prompt, settings.model, render, row.prior, output)))
        records.append(RowRecord(row.row_number, row.row_key, "pending", content_key=key))
    with open_catalog(settings.catalog_url) as catalog:
        start_batch(
            catalog, csv_path=table.path, csv_sha256=table.sha256, out_dir=settings.out_dir,
            flow_run_id=flow_run.get_id(), batch_id=batch_id,
        )
        add_rows(catalog, batch_id, sorted(records, key=lambda record: record.row_number))
    get_run_logger().info("batch %s: %d row(s) to produce, %d rejected", batch_id, len(jobs), len(records) - len(jobs))
    return jobs


@task(name="bulk-recover")
def recover_out_dir(settings: BulkSettings) -> Recovery:
    """Close the batches of dead runs in the output folder as interrupted and remove their work folders
    (:func:`tasks.runtime.batch_leases.recover_batches`)."""
    recovery = recover_batches(settings.out_dir, settings.catalog_url)
    if recovery.closed_batches or recovery.removed_work_dirs:
        get_run_logger().warning(
            "recovered after dead runs in %s: closed batch(es) %s, removed %d work folder(s)",
            settings.out_dir, ", ".join(recovery.closed_batches) or "none", len(recovery.removed_work_dirs),
        )
    return recovery


def _attempt() -> int:
    context = TaskRunContext.get()
    return max(1, context.task_run.run_count) if context is not None else 1


def _retry_unless_bad_input(task: Any, task_run: Any, state: Any) -> bool:
    """Retry a failed row unless its error is an :class:`InputError` (bad input does not get better on retry)."""
    error = state.result(raise_on_failure=False)
    return not isinstance(error, InputError)


@task(name="bulk-row", retry_condition_fn=_retry_unless_bad_input)
def produce_row(job: RowJob, batch_id: str, settings: BulkSettings) -> RowOutcome:
    """Make one row's video unless its content key is already catalogued; record the row's outcome.

    A failed attempt marks the row ``failed`` with the error and the attempts so far, then
    raises so Prefect retries it; a later attempt that succeeds marks it ``done``.
    """
    started = time.perf_counter()
    attempt = _attempt()
    row = job.row
    with open_catalog(settings.catalog_url) as catalog:
        existing = catalog.find_video(job.content_key)
    if existing is not None:
        _record_row(settings, batch_id, row, "skipped", video_id=existing["id"], content_key=job.content_key,
                    attempts=attempt, seconds=time.perf_counter() - started)
        get_run_logger().info("row %d: content key already catalogued as video %s; skipped", row.row_number,
                              existing["id"])
        return RowOutcome(row.row_number, "skipped", existing["id"], existing["output_path"],
                          existing["prior_source"], attempt)
    try:
        video = produce_video(job.request, flow_run.get_id())
    except Exception as exc:
        reason = str(exc) if isinstance(exc, DiskFullError) else typed_line(exc)
        _record_row(settings, batch_id, row, "failed", reason=reason,
                    content_key=job.content_key, attempts=attempt, seconds=time.perf_counter() - started)
        raise
    status = "done" if video.added else "skipped"
    _record_row(settings, batch_id, row, status, video_id=video.video_id, content_key=job.content_key,
                attempts=attempt, seconds=time.perf_counter() - started)
    return RowOutcome(row.row_number, status, str(video.video_id), video.path, video.prior_source, attempt)


def _record_row(settings: BulkSettings, batch_id: str, row: ValidRow, status: str, **values: Any) -> None:
    with open_catalog(settings.catalog_url) as catalog:
        set_row(catalog, batch_id, row.row_number, status, row_key=row.row_key, **values)


@dataclass(frozen=True)
class BatchReport:
    """The finished batch: counts per status and every row with what became of it."""

    batch_id: str
    status: str
    counts: dict[str, int]
    rows: list[dict[str, Any]]


@task(name="bulk-report")
def report_batch(batch_id: str, catalog_url: str) -> BatchReport:
    """Finish the batch with its counts and publish the dashboard: a table of rows and a markdown summary."""
    with open_catalog(catalog_url) as catalog:
        rows = list_rows(catalog, batch_id=batch_id)
        videos: dict[str, dict[str, Any]] = {}
        for row in rows:
            if row["video_id"] and row["video_id"] not in videos:
                videos[row["video_id"]] = catalog.get_video(row["video_id"])
        status = "failed" if any(row["status"] in ("failed", "pending") for row in rows) else "done"
        batch = finish_batch(catalog, batch_id, status)
    table = []
    for row in rows:
        video = videos.get(row["video_id"] or "")
        table.append({
            "row": row["row_number"],
            "key": row["row_key"] or "",
            "status": row["status"],
            "prior_source": video["prior_source"] if video else "",
            "seconds": video["seconds"] if video else "",
            "output": video["output_path"] if video else "",
            "time": round(row["seconds"], 2) if row["seconds"] is not None else "",
            "attempts": row["attempts"],
            "reason": row["reason"] or "",
            "video_id": row["video_id"] or "",
        })
    counts = batch["counts"]
    shown = table[:ARTIFACT_ROWS]
    more = f"; the first {len(shown):,} of {len(table):,}, the catalog has all" if len(table) > len(shown) else ""
    create_table_artifact(
        [{name: printable_text(entry[name])[:ARTIFACT_CELL_CHARS] if isinstance(entry[name], str) else entry[name]
          for name in ("row", "key", "status", "prior_source", "seconds", "output", "time")} for entry in shown],
        key=f"bulk-rows-{batch_id}",
        description=f"Rows of batch {batch_id} ({dropped_name(batch['csv_path'])}){more}",
    )
    create_markdown_artifact(_summary_markdown(batch, table), key=f"bulk-summary-{batch_id}",
                             description=f"Summary of batch {batch_id} ({dropped_name(batch['csv_path'])})")
    get_run_logger().info("batch %s %s: %s", batch_id, status, counts)
    return BatchReport(batch_id, status, counts, table)


def _cell(text: object) -> str:
    return " ".join(printable_text(str(text)).split()).replace("|", "\\|")


def _summary_markdown(batch: dict[str, Any], table: list[dict[str, Any]]) -> str:
    counts = batch["counts"]
    lines = [
        f"# Batch `{batch['id']}`",
        "",
        f"CSV {dropped_name(batch['csv_path'])} (`{batch['csv_path']}`) -> `{batch['out_dir']}`: **{batch['status']}**",
        "",
        "| " + " | ".join(counts) + " |",
        "|" + "---|" * len(counts),
        "| " + " | ".join(str(value) for value in counts.values()) + " |",
    ]
    for status, title in (("failed", "Failures"), ("rejected", "Rejected rows")):
        entries = [entry for entry in table if entry["status"] == status]
        if not entries:
            continue
        reasons = Counter(entry["reason"] for entry in entries)
        lines += ["", f"## {title} by reason", "", "| rows | reason |", "|---|---|"]
        lines += [f"| {count} | {_short(reason)} |" for reason, count in reasons.most_common(ARTIFACT_REASONS)]
        if len(reasons) > ARTIFACT_REASONS:
            lines.append(f"| {sum(count for _, count in reasons.most_common()[ARTIFACT_REASONS:])} | "
                         f"({len(reasons) - ARTIFACT_REASONS} other reasons) |")
        lines += ["", f"## {title}", "", "| row | key | reason |", "|---|---|---|"]
        lines += [f"| {entry['row']} | {_short(entry['key'])} | {_short(entry['reason'])} |"
                  for entry in entries[:ARTIFACT_ROWS_LISTED]]
        if len(entries) > ARTIFACT_ROWS_LISTED:
            lines.append(f"| | | ... and {len(entries) - ARTIFACT_ROWS_LISTED} more: `magic141 catalog list "
                         f"--status {status}` |")
    return "\n".join(lines) + "\n"


def _short(text: str) -> str:
    return _cell(text)[:ARTIFACT_CELL_CHARS]

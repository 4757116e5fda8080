"""``magic141 bulk FILE.csv``: one catalogued video per valid row of a prompt CSV, with a batch summary.

Exit status: 0 when every valid row has its video; 1 when a valid row failed, or with
``--strict`` when any row was rejected or failed; 2 for bad input (one line on stderr).
"""

from __future__ import annotations

import contextlib
import json
from collections import Counter
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from flows.cli.common import (
    bad_input_from_flow,
    cell,
    prefect_api,
    print_fields,
    progress_bars,
    quiet_model_libraries,
    stdout,
)
from magic141.utils import InputError, one_line
from tasks.prior_policy import DEFAULT_STRENGTH, DEFAULT_THRESHOLD

DEFAULT_OUT_DIR = Path("out")
TABLE_ROWS = 50  # rows shown on the terminal; a count per reason follows for the rest
TABLE_REASONS = 10


def bulk(
    csv_file: Annotated[Path, typer.Argument(metavar="FILE.csv", help="Prompt CSV (see the README for its columns).")],
    out_dir: Annotated[Path, typer.Option(help="Folder for the videos (created if missing).")] = DEFAULT_OUT_DIR,
    strict: Annotated[bool, typer.Option("--strict", help="Exit 1 if any row was rejected or failed.")] = False,
    index_dir: Annotated[
        Path | None,
        typer.Option(envvar="MAGIC141_INDEX_DIR", help="Retrieval index for the auto and retrieve priors (default: none)."),
    ] = None,
    image_root: Annotated[
        list[Path] | None, typer.Option(help="Folder row images may come from (repeatable; default: the CSV's folder).")
    ] = None,
    preset: Annotated[str | None, typer.Option(envvar="MAGIC141_PRESET", help="Model preset (default: toy, its trained weights).")] = None,
    weights: Annotated[Path | None, typer.Option(help="Weights folder or JSON file (see magic141 generate).")] = None,
    quantize: Annotated[str | None, typer.Option(help="Quantize on the fly: int8 or int4.")] = None,
    low_memory: Annotated[bool, typer.Option("--low-memory", help="Keep each model on the GPU only while it runs.")] = False,
    steps: Annotated[int | None, typer.Option(help="Sampler steps per window (default: the preset's).")] = None,
    workers: Annotated[int, typer.Option(help="Ray render actors, one per GPU; 0 renders in this process.")] = 0,
    ray_address: Annotated[str | None, typer.Option(envvar="RAY_ADDRESS", help="Ray cluster to render on.")] = None,
    concurrency: Annotated[
        int | None, typer.Option(help="Rows rendered at once (default: the number of workers, at least 1).")
    ] = None,
    retries: Annotated[int, typer.Option(help="Retries of a failing row before it is marked failed.")] = 2,
    retry_delay: Annotated[float, typer.Option(help="Seconds between retries of a row.")] = 5.0,
    threshold: Annotated[float, typer.Option(help="auto prior: cosine score from which a match is used as it is.")] = DEFAULT_THRESHOLD,
    strength: Annotated[float, typer.Option(help="auto prior: img2img strength from the best match below it.")] = DEFAULT_STRENGTH,
    catalog: Annotated[
        str | None, typer.Option(help="Catalog URL (default: $MAGIC141_CATALOG_URL or catalog.db in the output folder).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the batch as JSON.")] = False,
) -> None:
    """Generate one video per valid row of FILE.csv; rows already made (same content key) are skipped."""
    from tasks.catalog import CatalogError

    if not csv_file.is_file():
        raise InputError(f"prompt CSV {str(csv_file)!r} does not exist or is not a file; give the path of a CSV file")
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"output folder {str(out_dir)!r} is not a folder; choose another --out-dir")
    if not out_dir.absolute().parent.is_dir():
        raise InputError(f"parent of the output folder {str(out_dir)!r} does not exist; create it first")
    roots = None if not image_root else [str(root) for root in image_root]
    rows_at_once = concurrency if concurrency is not None else max(1, workers)
    created = not out_dir.exists()
    try:
        if retry_delay < 0:
            raise InputError(f"retry delay must be >= 0 seconds, got {retry_delay}")
        from tasks.bulk import check_bulk
        from tasks.bulk_csv import read_prompt_csv

        out_dir.mkdir(exist_ok=True)
        settings = check_bulk(
            out_dir, catalog, preset=preset, weights=None if weights is None else str(weights), quantize=quantize,
            low_memory=low_memory, steps=steps, workers=workers, ray_address=ray_address,
            index_dir=None if index_dir is None else str(index_dir), threshold=threshold, strength=strength,
            concurrency=rows_at_once, retries=retries,
        )
        # Read here, a refused file stops the command before Prefect starts, and only a row to make loads the
        # model libraries; the flow's read takes this reading (read_prompt_csv parses a file once per process).
        if read_prompt_csv(csv_file.absolute(), roots, settings.rows).valid:
            quiet_model_libraries(ray=workers > 0)
        from flows.bulk import batch_of, bulk_generate
        from tasks.catalog import hide_password

        with prefect_api(), bad_input_from_flow(InputError, CatalogError), progress_bars({"bulk": "rows"}):
            try:
                result = batch_of(bulk_generate(
                    str(csv_file.absolute()), settings.out_dir, hide_password(settings.catalog_url),
                    settings.rows.prior.index_dir, roots, preset=preset, weights=settings.model.weights,
                    quantize=quantize, low_memory=low_memory, steps=steps, workers=workers, ray_address=ray_address,
                    concurrency=rows_at_once, retries=retries, retry_delay_s=retry_delay, threshold=threshold,
                    strength=strength, return_state=True,
                ))
            finally:
                if workers:
                    from tasks.runtime.render_pool import shutdown_pools

                    shutdown_pools()
    except (InputError, CatalogError) as exc:
        if created:  # bad input (the options, the CSV, the catalog) leaves no folder behind (rmdir keeps a non-empty one)
            with contextlib.suppress(OSError):
                out_dir.rmdir()
        raise InputError(one_line(exc)) from None
    _print_summary(result, as_json)
    failed = result.counts.get("failed", 0) + result.counts.get("pending", 0)
    if failed or (strict and result.counts.get("rejected", 0)):
        raise typer.Exit(1)


def _print_summary(result: Any, as_json: bool) -> None:
    from tasks.catalog import redact

    catalog = redact(result.catalog_url)
    if as_json:
        stdout.print_json(json.dumps({
            "batch_id": result.batch_id, "status": result.status, "csv": result.csv_path, "out_dir": result.out_dir,
            "catalog": catalog, "counts": result.counts, "rows": result.rows,
        }))
        return
    counts = ", ".join(f"{result.counts.get(name, 0)} {name}" for name in ("done", "skipped", "failed", "rejected"))
    print_fields((("batch", result.batch_id), ("csv", result.csv_path), ("videos", result.out_dir),
                  ("catalog", catalog), ("rows", f"{result.counts.get('total', 0)}: {counts}")), 8)
    table = Table("row", "key", "status", "prior", "output / reason")
    for row in result.rows[:TABLE_ROWS]:
        detail = row["reason"] if row["status"] in ("failed", "rejected") else row["output"]
        table.add_row(str(row["row"]), cell(row["key"]), row["status"], row["prior_source"] or "-", cell(str(detail)))
    stdout.print(table)
    hidden = len(result.rows) - TABLE_ROWS
    if hidden <= 0:
        return
    stdout.print(f"... and {hidden:,} more row(s): every row is in --json and in `magic141 catalog list --status "
                 f"failed|rejected`", highlight=False, markup=False, soft_wrap=True)
    reasons = Counter(row["reason"] for row in result.rows if row["status"] in ("failed", "rejected"))
    if reasons:
        summary = Table("rows", "reason", title="failed and rejected rows by reason")
        for reason, count in reasons.most_common(TABLE_REASONS):
            summary.add_row(f"{count:,}", cell(reason))
        if len(reasons) > TABLE_REASONS:
            summary.add_row(f"{sum(reasons.values()) - sum(c for _, c in reasons.most_common(TABLE_REASONS)):,}",
                            f"({len(reasons) - TABLE_REASONS:,} other reasons)")
        stdout.print(summary)

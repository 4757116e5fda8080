"""``magic141 catalog list --status S`` and ``magic141 catalog export``: bulk batch rows and a JSON Lines dump.

The ``catalog`` commands themselves live in :mod:`flows.cli`; they call these helpers.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import IO

from rich.table import Table

from flows.cli_common import UserError, cell, stdout
from magic141.utils import atomic_file
from tasks.catalog import Catalog, CatalogError
from tasks.catalog.batches import list_rows
from tasks.catalog.models import ROW_STATUSES

EXPORT_FORMATS = ("jsonl",)


def check_row_status(status: str) -> None:
    """Refuse a status that batch rows never have."""
    if status not in ROW_STATUSES:
        raise UserError(f"unknown row status {status!r}; use one of {', '.join(ROW_STATUSES)}")


def print_batch_rows(store: Catalog, status: str, limit: int, as_json: bool) -> None:
    """Print the batch rows with ``status`` (newest batch first): batch, row, key, reason, video."""
    try:
        rows = list_rows(store, status=status, limit=limit)
    except CatalogError as exc:
        raise UserError(str(exc)) from None
    if as_json:
        stdout.print_json(json.dumps(rows))
        return
    table = Table("batch", "csv", "row", "key", "reason", "video")
    for row in rows:
        table.add_row(
            row["batch_id"][:12],
            cell(Path(row["csv_path"]).name),
            str(row["row_number"]),
            cell(row["row_key"] or ""),
            cell(row["reason"] or ""),
            (row["video_id"] or "")[:12],
        )
    stdout.print(table)


def check_export(export_format: str, out: Path | None) -> None:
    """Refuse an unknown format or an output file that cannot be created, before any work."""
    if export_format not in EXPORT_FORMATS:
        raise UserError(f"unknown export format {export_format!r}; use one of {', '.join(EXPORT_FORMATS)}")
    if out is None:
        return
    folder = out.absolute().parent
    if not folder.is_dir():
        raise UserError(f"output folder {str(folder)!r} does not exist; create it first")
    if out.is_dir():
        raise UserError(f"output {str(out)!r} is a folder; give a file name such as catalog.jsonl")


def _write_lines(store: Catalog, sink: IO[str]) -> int:
    count = 0
    for video in store.export_videos():
        sink.write(json.dumps(video, ensure_ascii=False))
        sink.write("\n")
        count += 1
    return count


def export_catalog(store: Catalog, out: Path | None) -> None:
    """Write one JSON object per video to ``out`` (atomically, readable like any new file) or to stdout."""
    try:
        if out is None:
            _write_lines(store, sys.stdout)
            sys.stdout.flush()
            return
        target = out.absolute()
        with atomic_file(target, "w") as sink:
            count = _write_lines(store, sink)
    except CatalogError as exc:
        raise UserError(str(exc)) from None
    except OSError as exc:
        raise UserError(f"cannot write the export to {str(out)!r}: {exc.strerror or exc}; check the folder") from None
    stdout.print(f"exported {count} videos to {target}", highlight=False, soft_wrap=True, markup=False)

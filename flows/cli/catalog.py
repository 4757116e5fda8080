"""``magic141 catalog``: list, show, export and contact-sheet the provenance catalog (read only)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import IO, Annotated, Any

import typer
from rich.table import Table
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from flows.cli.common import DEFAULT_OUT_DIR, cell, print_fields, stdout
from magic141.utils import InputError, atomic_file, one_line
from tasks.catalog import CATALOG_URL_ENV, Catalog, CatalogError, open_catalog, redact, resolve_catalog_url
from tasks.catalog.batches import list_rows
from tasks.catalog.models import ROW_STATUSES
from tasks.request import printable_text
from tasks.runtime.ffmpeg import ProbeError

catalog_app = typer.Typer(help="Read the provenance catalog.", no_args_is_help=True)
EXPORT_FORMATS = ("jsonl",)


def check_row_status(status: str) -> None:
    """Refuse a status that batch rows never have."""
    if status not in ROW_STATUSES:
        raise InputError(f"unknown row status {status!r}; use one of {', '.join(ROW_STATUSES)}")


def print_batch_rows(store: Catalog, status: str, limit: int, as_json: bool) -> None:
    """Print the batch rows with ``status`` (newest batch first): batch, row, key, reason, video."""
    try:
        rows = list_rows(store, status=status, limit=limit)
    except CatalogError as exc:
        raise InputError(str(exc)) from None
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
        raise InputError(f"unknown export format {export_format!r}; use one of {', '.join(EXPORT_FORMATS)}")
    if out is None:
        return
    folder = out.absolute().parent
    if not folder.is_dir():
        raise InputError(f"output folder {str(folder)!r} does not exist; create it first")
    if out.is_dir():
        raise InputError(f"output {str(out)!r} is a folder; give a file name such as catalog.jsonl")


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
        raise InputError(str(exc)) from None
    except OSError as exc:
        raise InputError(f"cannot write the export to {str(out)!r}: {exc.strerror or exc}; check the folder") from None
    stdout.print(f"exported {count} videos to {target}", highlight=False, soft_wrap=True, markup=False)


def _missing_sqlite_file(url: str) -> bool:
    """Whether ``url`` names a SQLite file that does not exist (a malformed URL is left to ``open_catalog``)."""
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        return False
    database = parsed.database
    return parsed.get_backend_name() == "sqlite" and database not in (None, "", ":memory:") and not Path(database).exists()


def _open(catalog: str | None) -> Any:
    """The catalog the read-only commands read; a SQLite catalog file that does not exist is refused, not created."""
    url = resolve_catalog_url(catalog, DEFAULT_OUT_DIR.absolute())
    if _missing_sqlite_file(url):
        raise InputError(f"catalog {redact(url)} does not exist; check --catalog or ${CATALOG_URL_ENV}")
    try:
        return open_catalog(url, wait_s=0)
    except CatalogError as exc:
        raise InputError(str(exc)) from None


CatalogOption = Annotated[
    str | None, typer.Option("--catalog", help="Catalog URL (default: $MAGIC141_CATALOG_URL or out/catalog.db).")
]


@catalog_app.command("list")
def catalog_list(
    catalog: CatalogOption = None,
    limit: Annotated[int, typer.Option(help="Newest N videos (or batch rows with --status).")] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON array of rows.")] = False,
    status: Annotated[
        str | None,
        typer.Option(help="List bulk batch rows with this status instead: pending, done, skipped, failed or rejected."),
    ] = None,
) -> None:
    """List catalogued videos, newest first; with --status, the bulk batch rows in that state."""
    if status is not None:
        check_row_status(status)
        with _open(catalog) as store:
            print_batch_rows(store, status, limit, as_json)
        return
    with _open(catalog) as store:
        rows = store.list_videos(limit=limit)
    if as_json:
        stdout.print_json(json.dumps(rows))
        return
    table = Table("id", "created", "prompt", "frames", "fps", "size", "prior", "output")
    for row in rows:
        table.add_row(
            row["id"][:12],
            row["created_at"][:19],
            cell(row["prompt"][:40]),
            str(row["frames"]),
            str(row["fps"]),
            f"{row['width']}x{row['height']}",
            row["prior_source"],
            cell(row["output_path"]),
        )
    stdout.print(table)


@catalog_app.command("sheet")
def catalog_sheet(
    out: Annotated[Path, typer.Option(help="The PNG to write.")],
    catalog: CatalogOption = None,
    limit: Annotated[int, typer.Option(help="Newest N videos, shown oldest first.")] = 20,
    frames: Annotated[int, typer.Option(help="Frames shown per video, first to last.")] = 8,
) -> None:
    """Write one contact sheet of the newest videos: a row of frames per video, under its prompt."""
    from tasks.runtime.thumbnails import write_videos_sheet

    if limit < 1 or frames < 1:
        raise InputError(f"--limit and --frames must be >= 1, got {limit} and {frames}")
    if not out.absolute().parent.is_dir():
        raise InputError(f"folder {str(out.absolute().parent)!r} does not exist; create it or choose another --out")
    with _open(catalog) as store:
        rows = store.list_videos(limit=limit)
    videos = [(f"{printable_text(row['prompt'])[:90]} ({row['prior_source']} first frame, {row['frames']} frames)",
               row["output_path"]) for row in reversed(rows) if Path(row["output_path"]).is_file()]
    try:
        stdout.print(str(write_videos_sheet(videos, out, frames)))
    except (ValueError, ProbeError) as exc:
        raise InputError(one_line(exc)) from None


@catalog_app.command("show")
def catalog_show(
    video_id: Annotated[str, typer.Argument(metavar="ID", help="Video id or a unique prefix of it.")],
    catalog: CatalogOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="The row as JSON.")] = False,
) -> None:
    """Show every recorded field of one video, and its windows."""
    with _open(catalog) as store:
        try:
            row = store.get_video(video_id)
        except CatalogError as exc:
            raise InputError(str(exc)) from None
        windows = store.video_windows(row["id"])
    if as_json:
        stdout.print_json(json.dumps({**row, "windows": windows}))
        return
    print_fields(
        ((key, json.dumps(value) if isinstance(value, (dict, list)) else value) for key, value in row.items()), 20
    )
    table = Table("window", "frames", "latents", "actor", "node", "gpu", "seconds", "attempts")
    for window in windows:
        table.add_row(
            str(window["window_index"]),
            f"{window['frame_start']}-{window['frame_end'] - 1}",
            f"{window['latent_start']}-{window['latent_end'] - 1}",
            cell(window["actor"]),
            cell(window["node"]),
            cell(window["gpu_id"] or "-"),
            f"{window['seconds']:.2f}",
            str(window["attempts"]),
        )
    stdout.print(table)


@catalog_app.command("export")
def catalog_export(
    catalog: CatalogOption = None,
    export_format: Annotated[str, typer.Option("--format", help="jsonl: one JSON object per video.")] = "jsonl",
    out: Annotated[Path | None, typer.Option(help="Write to this file (replaced atomically) instead of stdout.")] = None,
) -> None:
    """Export every video with its windows and the batch row that made it."""
    check_export(export_format, out)
    with _open(catalog) as store:
        export_catalog(store, out)

"""``magic141 index``: build, query and inspect the CLIP/FAISS retrieval index."""

from __future__ import annotations

import json
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

index_app = typer.Typer(help="Build, query and inspect the CLIP/FAISS retrieval index.", no_args_is_help=True)

IndexDirOption = Annotated[
    Path | None, typer.Option("--index-dir", help="Index folder (default: $MAGIC141_INDEX_DIR or out/index).")
]
STAGE_LABELS = {"scan": "scan corpus", "embed": "embed images", "index": "fill index"}


@index_app.command("build")
def index_build(
    corpus: Annotated[
        list[Path],
        typer.Argument(metavar="CORPUS", help="Folders of images and/or .csv/.parquet manifests with a 'path' column."),
    ],
    index_dir: IndexDirOption = None,
    incremental: Annotated[
        bool, typer.Option("--incremental", help="Embed only images not in the embedding cache; reuse unchanged hashes.")
    ] = False,
    model: Annotated[str, typer.Option(help="CLIP model: 'toy' (trained on the toy world), 'tiny' (random), a trained folder, or an open_clip name.")] = "tiny",
    pretrained: Annotated[Path | None, typer.Option(help="Local weights file of --model (nothing is downloaded).")] = None,
    recall_target: Annotated[float, typer.Option(help="recall@10 the search knob is tuned to reach.")] = 0.95,
    catalog: Annotated[
        str | None, typer.Option(help="Catalog URL (default: $MAGIC141_CATALOG_URL or catalog.db beside the index).")
    ] = None,
    force: Annotated[
        bool,
        typer.Option("--force", help="Build a new version even if the current one matches the corpus and settings."),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Build a new index version over CORPUS and make it current; unusable files are listed, not fatal.

    When the current version was built from the same images (paths and contents) with the same
    model and settings, nothing is built or published and the current version is reported unchanged.
    """
    from retrieval_index import CorpusError
    from tasks.catalog import CatalogError, hide_password, redact

    quiet_model_libraries(diffusers=False)
    from tasks.index import check_rebuild

    try:
        request = check_rebuild(
            [str(path) for path in corpus], None if index_dir is None else str(index_dir), catalog, model,
            None if pretrained is None else str(pretrained), incremental, recall_target,
        )
    except (ValueError, CatalogError) as exc:
        raise InputError(one_line(exc)) from None
    from flows.rebuild_index import rebuild_index

    with prefect_api(), bad_input_from_flow(CorpusError), progress_bars(STAGE_LABELS):
        result = rebuild_index(
            list(request.corpus), request.index_dir, hide_password(request.catalog_url), request.spec.model,
            request.spec.pretrained, request.incremental, request.policy.recall_target, force,
        )
    summary = {
        "status": "unchanged" if result.unchanged else "published",
        "version": result.version,
        "index_dir": result.index_dir,
        "images": result.count,
        "embedded": result.embedded,
        "cached": result.cached,
        "skipped": len(result.skipped),
        "index_type": result.index_type,
        "recall": round(result.recall, 4),
        "seconds": round(result.duration_s, 2),
        "catalog": redact(result.catalog_url),
    }
    if as_json:
        stdout.print_json(json.dumps({**summary, "skipped_files": result.skipped, "search": result.search}))
        return
    if result.unchanged:
        stdout.print(
            f"unchanged: version {result.version} already indexes this corpus with these settings; "
            f"nothing was published (pass --force to build a new version anyway)",
            highlight=False, soft_wrap=True,
        )
    print_fields(summary.items(), 10)
    for item in result.skipped:
        stdout.print(f"   skipped: {item['path']}: {item['reason']}", highlight=False, soft_wrap=True, markup=False)


def _reader(index_dir: Path | None) -> Any:
    from retrieval_index import RetrievalIndexError, open_index
    from retrieval_index.store import resolve_index_dir

    quiet_model_libraries(diffusers=False)
    try:
        return open_index(resolve_index_dir(index_dir))
    except RetrievalIndexError as exc:
        raise InputError(one_line(exc)) from None


@index_app.command("query")
def index_query(
    text: Annotated[str, typer.Argument(help="What the images should show.")],
    k: Annotated[int, typer.Option("-k", "--k", min=1, help="Number of results.")] = 5,
    index_dir: IndexDirOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="A JSON array of matches, best first.")] = False,
) -> None:
    """The K corpus images closest to TEXT by CLIP cosine similarity, best first."""
    from retrieval_index import RetrievalIndexError

    if not text.strip():
        raise InputError("query text is empty; give a description of the image to find")
    reader = _reader(index_dir)
    try:
        matches = reader.search_text(text, k)
    except RetrievalIndexError as exc:
        raise InputError(one_line(exc)) from None
    rows = [
        {"rank": rank, "score": round(match.score, 6), "path": str(match.path), "sha256": match.sha256, "row": match.row}
        for rank, match in enumerate(matches, start=1)
    ]
    if as_json:
        stdout.print_json(json.dumps(rows))
        return
    table = Table("rank", "score", "path", title=f"index version {reader.version}")
    for row in rows:
        table.add_row(str(row["rank"]), f"{row['score']:.4f}", cell(row["path"]))
    stdout.print(table)


@index_app.command("info")
def index_info(
    index_dir: IndexDirOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the manifest and checks as JSON.")] = False,
) -> None:
    """The current version: model, size, index type, tuned recall, file checksums (verified), older versions."""
    from retrieval_index import store
    from retrieval_index.errors import RetrievalIndexError

    folder_of_index = store.resolve_index_dir(index_dir)
    try:
        version, folder, manifest = store.open_current(folder_of_index)
        store.verify(folder, manifest, sorted(manifest["files"]))
    except RetrievalIndexError as exc:
        raise InputError(one_line(exc)) from None
    info = {
        "index_dir": str(folder_of_index),
        "version": version,
        "created_at": manifest["created_at"],
        "model_id": manifest["model_id"],
        "dimension": manifest["dimension"],
        "images": manifest["count"],
        "skipped": manifest["skipped"],
        "index_type": f"{manifest['index_type']} ({manifest['factory']})",
        "search": manifest["search"],
        "recall": f"{manifest['recall']:.4f} at k={manifest['recall_k']} (target {manifest['recall_target']})",
        "checksums": f"{len(manifest['files'])} files verified",
        "versions": store.published_versions(folder_of_index),
    }
    if as_json:
        stdout.print_json(json.dumps({**info, "manifest": manifest}))
        return
    for key, value in info.items():
        shown = ", ".join(value) if isinstance(value, list) else json.dumps(value) if isinstance(value, dict) else value
        stdout.print(f"{key:>10}: {shown}", highlight=False, soft_wrap=True, markup=False)

"""The ``rebuild_index`` flow: scan -> compare -> embed -> build -> validate -> publish a new retrieval-index version.

Only one build of an index folder runs at a time (a file lock). Until publish, readers keep
serving the previous version; a build that fails or is interrupted never becomes current, and its
catalog row says ``failed`` with the error. When the current version was built from the same
corpus with the same settings, the build stops after the scan: nothing is published and its
catalog row says ``unchanged``, naming the current version.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from prefect import flow
from prefect.blocks.system import Secret
from prefect.runtime import flow_run
from pydantic import SecretStr

from retrieval_index.builder import EmbedSummary, Validation
from retrieval_index.store import build_lock
from tasks.catalog import plain_url
from tasks.index import (
    RebuildRequest,
    build_faiss_index,
    check_rebuild,
    embed_images,
    find_unchanged,
    keep_current,
    publish_build,
    record_failure,
    scan_corpus,
    start_build,
    validate_index,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RebuildResult:
    """The published version and what went into it; with ``unchanged``, the current version, left as it was."""

    version: str
    build_id: str
    index_dir: str
    catalog_url: str
    model_id: str
    count: int
    embedded: int
    cached: int
    skipped: list[dict[str, str]]
    index_type: str
    search: dict[str, object]
    recall: float
    duration_s: float
    unchanged: bool


@flow(name="rebuild-index", log_prints=False)
def rebuild_index(
    corpus: list[str],
    index_dir: str | None = None,
    catalog_url: str | SecretStr | Secret | None = None,
    model: str = "tiny",
    pretrained: str | None = None,
    incremental: bool = True,
    recall_target: float = 0.95,
    force: bool = False,
) -> RebuildResult:
    """Build a new version of the retrieval index over ``corpus`` (folders and/or .csv/.parquet manifests).

    ``index_dir`` defaults to ``$MAGIC141_INDEX_DIR`` or ``out/index``; the catalog (a URL, or a secret
    holding one, so that run parameters keep no password) to
    ``$MAGIC141_CATALOG_URL`` or ``catalog.db`` beside the index folder. ``model`` is ``tiny`` or an
    open_clip model name with a local ``pretrained`` weights file. ``incremental`` embeds only
    images whose content is not in the embedding cache. If the current version already indexes
    this corpus with these settings, nothing is published (``unchanged``); ``force`` builds anyway.
    """
    started = time.perf_counter()
    request = check_rebuild(corpus, index_dir, plain_url(catalog_url), model, pretrained, incremental, recall_target)
    with build_lock(Path(request.index_dir)):
        staging, build_id = start_build(request, flow_run.get_id())
        try:
            scan_corpus(staging, request.corpus, request.incremental)
            current = None if force else find_unchanged(staging, request)
            if current is not None:
                kept = keep_current(staging, request, build_id, current, time.perf_counter() - started)
                return _result(request, build_id, kept, None, started)
            embedded = embed_images(staging, request.spec, request.incremental)
            build_faiss_index(staging, request.policy)
            validation = validate_index(staging, request)
            publish_build(staging, request, build_id, validation, embedded, time.perf_counter() - started)
        except BaseException as exc:
            record_failure(staging, request.catalog_url, build_id, exc, time.perf_counter() - started)
            raise
    return _result(request, build_id, validation, embedded, started)


def _result(
    request: RebuildRequest, build_id: str, validation: Validation, embedded: EmbedSummary | None, started: float
) -> RebuildResult:
    """The flow's result: a published build (``embedded`` given) or the unchanged current version."""
    return RebuildResult(
        version=validation.version,
        build_id=build_id,
        index_dir=request.index_dir,
        catalog_url=request.catalog_url,
        model_id=request.spec.model_id,
        count=validation.count,
        embedded=0 if embedded is None else embedded.embedded,
        cached=0 if embedded is None else embedded.cached,
        skipped=validation.skipped,
        index_type=validation.index_type,
        search=validation.search,
        recall=validation.recall,
        duration_s=time.perf_counter() - started,
        unchanged=embedded is None,
    )

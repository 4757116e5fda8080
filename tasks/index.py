"""Retrieval-index stages as Prefect tasks: start, scan, compare, embed, index, validate, publish.

Each task is a thin wrapper over :mod:`retrieval_index.builder`, passing the staging folder (a
path) from stage to stage, never vectors or models. Long stages publish a progress artifact.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from prefect import get_run_logger, task

from retrieval_index import IndexPolicy, builder
from retrieval_index.corpus import check_sources
from retrieval_index.embedder import EmbedderSpec
from retrieval_index.errors import RetrievalIndexError
from retrieval_index.store import DEFAULT_INDEX_DIR, resolve_index_dir
from tasks.catalog import open_catalog, resolve_catalog_url
from tasks.catalog.index_builds import (
    fail_abandoned_builds,
    fail_index_build,
    mark_index_build_unchanged,
    publish_index_build,
    start_index_build,
)
from tasks.runtime.progress import StageProgress

logger = logging.getLogger(__name__)

ABANDONED = "interrupted: the build's process ended before it finished; a later build replaced it"


@dataclass(frozen=True)
class RebuildRequest:
    """A checked rebuild: absolute paths, the catalog URL, a loadable model spec."""

    corpus: tuple[str, ...]
    index_dir: str
    catalog_url: str
    spec: EmbedderSpec
    incremental: bool
    policy: IndexPolicy


def check_rebuild(
    corpus: list[str],
    index_dir: str | None,
    catalog_url: str | None,
    model: str,
    pretrained: str | None,
    incremental: bool,
    recall_target: float,
) -> RebuildRequest:
    """Check every input before work starts; raise ``ValueError`` (or ``CatalogError``) naming the problem."""
    sources = tuple(str(path) for path in check_sources(corpus))
    folder = resolve_index_dir(index_dir)
    # The default index folder's parent (out/) is made here, but only once every other input is good.
    make_parent = folder == DEFAULT_INDEX_DIR.absolute() and not folder.parent.exists()
    if folder.exists() and not folder.is_dir():
        raise RetrievalIndexError(f"index folder {folder} exists but is not a folder; choose another --index-dir")
    if not make_parent and not folder.parent.is_dir():
        raise RetrievalIndexError(f"parent folder of the index {folder.parent} does not exist; create it first")
    writable = folder if folder.exists() else folder.parent.parent if make_parent else folder.parent
    if not os.access(writable, os.W_OK):
        raise RetrievalIndexError(f"index folder {folder} is not writable; choose another --index-dir")
    for source in sources:
        if Path(source).is_dir() and folder.is_relative_to(source):
            raise RetrievalIndexError(
                f"index folder {folder} lies inside the corpus {source}; put the index outside the corpus"
            )
    try:
        policy = IndexPolicy(recall_target=recall_target, min_recall=min(recall_target, IndexPolicy.min_recall))
    except ValueError as exc:
        raise RetrievalIndexError(str(exc)) from None
    spec = EmbedderSpec(model, pretrained).check()
    url = resolve_catalog_url(catalog_url, folder.parent)
    if make_parent:
        folder.parent.mkdir()
    try:
        open_catalog(url, wait_s=0).close()
    except BaseException:
        if make_parent:
            shutil.rmtree(folder.parent, ignore_errors=True)
        raise
    return RebuildRequest(sources, str(folder), url, spec, incremental, policy)


@task(name="index-start")
def start_build(request: RebuildRequest, flow_run_id: str | None) -> tuple[builder.Staging, str]:
    """Clear what interrupted builds left, create the staging folder and record the build as running.

    Run only while holding the index folder's build lock.
    """
    staging = builder.begin_build(request.index_dir)
    with open_catalog(request.catalog_url) as catalog:
        fail_abandoned_builds(catalog, request.index_dir, ABANDONED)
        build_id = start_index_build(
            catalog, version=staging.version, corpus=os.pathsep.join(request.corpus), index_dir=request.index_dir,
            model_id=request.spec.model_id, flow_run_id=flow_run_id,
        )
    return staging, build_id


@task(name="index-scan")
def scan_corpus(staging: builder.Staging, corpus: tuple[str, ...], incremental: bool) -> builder.ScanSummary:
    """Find, hash and deduplicate the corpus images; unusable files are reported, not fatal."""
    progress = StageProgress("scan", "Scanning the image corpus")
    summary = builder.scan_stage(staging, corpus, incremental, progress.update)
    get_run_logger().info("scan: %d distinct images, %d files skipped", summary.images, summary.skipped)
    return summary


@task(name="index-compare")
def find_unchanged(staging: builder.Staging, request: RebuildRequest) -> str | None:
    """The current version when it was built from the scanned corpus with the request's settings, else None."""
    version = builder.unchanged_version(staging, request.spec, request.policy, request.corpus)
    if version is not None:
        get_run_logger().info("compare: version %s already indexes this corpus with these settings", version)
    return version


@task(name="index-keep")
def keep_current(
    staging: builder.Staging, request: RebuildRequest, build_id: str, version: str, duration_s: float
) -> builder.Validation:
    """Record the build ``unchanged``, naming the current ``version``, and drop its staging folder; publish nothing.

    Run only while holding the index folder's build lock (so ``version`` cannot be pruned meanwhile).
    """
    current = builder.describe_version(request.index_dir, version)
    with open_catalog(request.catalog_url) as catalog:
        mark_index_build_unchanged(
            catalog, build_id, version=version, dimension=current.dimension, count=current.count,
            skipped=current.skipped, index_type=current.index_type, recall=current.recall, duration_s=duration_s,
        )
    builder.discard(staging)
    get_run_logger().info("index version %s is unchanged; nothing published", version)
    return current


@task(name="index-embed")
def embed_images(staging: builder.Staging, spec: EmbedderSpec, incremental: bool) -> builder.EmbedSummary:
    """CLIP-embed the images the cache does not hold yet."""
    progress = StageProgress("embed", "Embedding images with CLIP")
    summary = builder.embed_stage(staging, spec, incremental, progress=progress.update)
    get_run_logger().info("embed: %d new, %d cached, %d undecodable", summary.embedded, summary.cached,
                          summary.skipped)
    return summary


@task(name="index-build")
def build_faiss_index(staging: builder.Staging, policy: IndexPolicy) -> builder.IndexSummary:
    """Choose the FAISS index type for the corpus size and fill it."""
    progress = StageProgress("index", "Adding vectors to the FAISS index")
    summary = builder.index_stage(staging, policy, progress.update)
    get_run_logger().info("index: %s (%s) of %d vectors", summary.index_type, summary.factory, summary.count)
    return summary


@task(name="index-validate")
def validate_index(staging: builder.Staging, request: RebuildRequest) -> builder.Validation:
    """Check the build, tune the search knob to the recall target and write the manifest."""
    validation = builder.validate_stage(staging, request.policy, request.spec, request.corpus)
    get_run_logger().info("validate: recall@k %.4f with %s", validation.recall, validation.search)
    return validation


@task(name="index-publish")
def publish_build(
    staging: builder.Staging,
    request: RebuildRequest,
    build_id: str,
    validation: builder.Validation,
    embedded: builder.EmbedSummary,
    duration_s: float,
) -> str:
    """Promote the version, record it published, then make it current; the row never names a missing version."""
    builder.promote_stage(staging)
    with open_catalog(request.catalog_url) as catalog:
        publish_index_build(
            catalog, build_id, dimension=validation.dimension, count=validation.count, embedded=embedded.embedded,
            skipped=validation.skipped, index_type=validation.index_type, recall=validation.recall,
            duration_s=duration_s,
        )
    builder.publish_stage(staging)
    get_run_logger().info("published index version %s", staging.version)
    return staging.version


def record_failure(
    staging: builder.Staging, catalog_url: str, build_id: str, error: BaseException, duration_s: float
) -> None:
    """Remove the failed build's files and mark its row failed (plain function: it must run during shutdown too)."""
    skipped = builder.read_skipped(staging)
    builder.discard(staging)
    message = " ".join(str(error).split()) or type(error).__name__
    try:
        with open_catalog(catalog_url) as catalog:
            fail_index_build(catalog, build_id, error=f"{type(error).__name__}: {message}", duration_s=duration_s,
                             skipped=skipped)
    except Exception:
        logger.exception("could not record the failure of index build %s; the next build marks it failed", build_id)


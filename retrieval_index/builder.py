"""Building a new index version in stages: scan -> embed -> index -> validate -> publish.

Each stage reads and writes files in the build's staging folder, so the stages can run as separate
Prefect tasks passing only paths. Nothing becomes visible to readers before :func:`publish_stage`, and an
interrupted build (exception, kill, power loss) leaves the previous version current; its staging
folder is removed by the next build. :func:`build_index` runs every stage in one call.

After the scan, :func:`unchanged_version` tells whether the current version was built from the
same corpus (every image's path and sha256, every skipped file and its reason) with the same
settings (model and weights fingerprint, corpus sources, index policy, library versions); such
a build stops there and publishes nothing, unless forced.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import shutil
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from importlib.metadata import version as package_version
from pathlib import Path
from typing import TYPE_CHECKING, Any

import faiss
import numpy as np
import PIL.Image
import pyarrow as pa
import pyarrow.parquet as pq

from magic141.utils import write_atomic, write_json_atomic
from retrieval_index import ann, store
from retrieval_index.cache import EmbeddingCache
from retrieval_index.corpus import ScanResult, Skipped, check_sources, scan_corpus
from retrieval_index.embedder import Embedder, EmbedderSpec, load_embedder
from retrieval_index.errors import CorpusError, RetrievalIndexError

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

Progress = Callable[[int, int], None]
StageListener = Callable[[str, int, int], None]

SCAN_FILE = "scan.parquet"
PARTIAL_EMBEDDINGS = "embeddings.partial.npy"
DEFAULT_BATCH_SIZE = 64
_CACHE_FLUSH_ROWS = 4096
_COPY_ROWS = 65_536
_LIBRARIES = ("faiss-gpu", "open-clip-torch", "torch")
_REASONS_SHOWN = 3


@dataclass(frozen=True)
class Staging:
    """One build in progress: its index folder and version name."""

    index_dir: str
    version: str

    @property
    def folder(self) -> Path:
        return Path(self.index_dir) / store.STAGING / self.version


@dataclass(frozen=True)
class ScanSummary:
    candidates: int
    images: int
    skipped: int
    reused_hashes: int
    corpus_sha256: str


@dataclass(frozen=True)
class EmbedSummary:
    count: int
    embedded: int
    cached: int
    skipped: int
    dimension: int
    model_id: str


@dataclass(frozen=True)
class IndexSummary:
    index_type: str
    factory: str
    count: int
    seconds: float


@dataclass(frozen=True)
class Validation:
    version: str
    count: int
    dimension: int
    index_type: str
    recall: float
    search: dict[str, Any]
    skipped: list[dict[str, str]] = field(default_factory=list)


def _stage_record(staging: Staging, name: str, record: dict[str, Any]) -> None:
    write_json_atomic(staging.folder / f"{name}.json", record)


def _read_stage(staging: Staging, name: str) -> dict[str, Any]:
    path = staging.folder / f"{name}.json"
    if not path.is_file():
        raise RetrievalIndexError(f"build {staging.version} has no {name} stage output; run the stages in order")
    return json.loads(path.read_text())


def read_skipped(staging: Staging) -> list[dict[str, str]]:
    """The files this build left out so far, with reasons (from staging, or the promoted version)."""
    for folder in (staging.folder, store.version_dir(Path(staging.index_dir), staging.version)):
        path = folder / store.SKIPPED_FILE
        if path.is_file():
            return json.loads(path.read_text())
    return []


def _write_skipped(staging: Staging, skipped: Sequence[dict[str, str]]) -> None:
    write_json_atomic(staging.folder / store.SKIPPED_FILE, list(skipped))


def begin_build(index_dir: Path | str) -> Staging:
    """Clear leftovers of interrupted builds and create a staging folder (hold the build lock)."""
    index_dir = Path(index_dir).absolute()
    store.clear_staging(index_dir)
    staging = Staging(str(index_dir), store.new_version())
    staging.folder.mkdir(parents=True)
    logger.info("building index version %s in %s", staging.version, staging.folder)
    return staging


def discard(staging: Staging) -> None:
    """Remove a failed build's files, staged or promoted; the current version is untouched."""
    shutil.rmtree(staging.folder, ignore_errors=True)
    index_dir = Path(staging.index_dir)
    if store.current_version(index_dir) != staging.version:
        shutil.rmtree(store.version_dir(index_dir, staging.version), ignore_errors=True)


def _previous_files(index_dir: Path) -> dict[str, tuple[int, int, str]]:
    """path -> (size, mtime_ns, sha256) from the current version, to skip re-hashing unchanged files."""
    try:
        _, folder, _ = store.open_current(index_dir)
        table = pq.read_table(folder / store.METADATA_FILE, columns=["path", "size", "mtime_ns", "sha256"])
    except (RetrievalIndexError, OSError, pa.ArrowException) as exc:
        logger.info("incremental scan without previous hashes: %s", exc)
        return {}
    columns = table.to_pydict()
    return {
        path: (size, mtime, sha)
        for path, size, mtime, sha in zip(columns["path"], columns["size"], columns["mtime_ns"], columns["sha256"])
    }


def corpus_fingerprint(result: ScanResult) -> str:
    """sha256 naming the corpus as the scan found it: each image's path and content, each skipped file and why."""
    listing = {
        "images": sorted([item.path, item.sha256] for item in result.files),
        "skipped": sorted([item.path, item.reason] for item in result.skipped),
    }
    return hashlib.sha256(json.dumps(listing, separators=(",", ":")).encode()).hexdigest()


def scan_stage(
    staging: Staging, sources: Sequence[str | Path], incremental: bool, progress: Progress | None = None
) -> ScanSummary:
    """List, hash and deduplicate the corpus into ``scan.parquet``; report skipped files.

    Raise :class:`RetrievalIndexError` naming the corpus and why its files were skipped when it
    holds no usable image, so a build stops before any model is loaded.
    """
    known = _previous_files(Path(staging.index_dir)) if incremental else {}
    result = scan_corpus(sources, known, progress)
    table = pa.table(
        {
            "path": [item.path for item in result.files],
            "sha256": [item.sha256 for item in result.files],
            "size": pa.array([item.size for item in result.files], pa.int64()),
            "mtime_ns": pa.array([item.mtime_ns for item in result.files], pa.int64()),
        }
    )
    write_atomic(staging.folder / SCAN_FILE, lambda handle: pq.write_table(table, handle))
    _write_skipped(staging, [asdict(item) for item in result.skipped])
    if not result.files:
        raise CorpusError(_no_images_message(sources, result.skipped))
    summary = ScanSummary(len(result.files) + len(result.skipped), len(result.files), len(result.skipped),
                          result.reused_hashes, corpus_fingerprint(result))
    _stage_record(staging, "scan", asdict(summary))
    return summary


def _no_images_message(sources: Sequence[str | Path], skipped: Sequence[Skipped]) -> str:
    """One line: which corpus has no usable image, how many files were left out and why (most common first)."""
    corpus = ", ".join(str(path) for path in check_sources(sources))
    if not skipped:
        return f"the corpus {corpus} holds no files; add images to it (or list them in the manifest) and build again"
    common = Counter(re.split(r"[:;]", item.reason, maxsplit=1)[0].strip() for item in skipped).most_common(
        _REASONS_SHOWN
    )
    rest = len(skipped) - sum(count for _, count in common)
    kinds = [f"{count} {kind}" for kind, count in common] + ([f"{rest} other"] if rest else [])
    return (
        f"the corpus {corpus} has no usable images: {len(skipped)} file{'s' if len(skipped) > 1 else ''} skipped "
        f"({', '.join(kinds)}; first: {skipped[0].path}: {skipped[0].reason}); "
        f"add images to the corpus or fix the skipped files, then build again"
    )


def _load_pixels(path: str, sha256: str, embedder: Embedder) -> torch.Tensor | Skipped:
    """The preprocessed image tensor, or a :class:`Skipped` naming why the file cannot be used."""
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as exc:
        return Skipped(path, f"unreadable: {' '.join(str(exc).split())}")
    if hashlib.sha256(data).hexdigest() != sha256:
        return Skipped(path, "file changed during the build; it is picked up by the next build")
    try:
        with PIL.Image.open(io.BytesIO(data)) as image:
            image.load()
            return embedder.preprocess_image(image)
    except Exception as exc:  # truncated or corrupt image data: PIL raises many types
        reason = " ".join(str(exc).split()) or type(exc).__name__
        return Skipped(path, f"cannot decode image: {type(exc).__name__}: {reason}")


def embed_stage(
    staging: Staging,
    spec: EmbedderSpec,
    incremental: bool,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: Progress | None = None,
) -> EmbedSummary:
    """Embed the scanned images (only those missing from the cache when ``incremental``) into ``embeddings.npy``."""
    import torch

    table = pq.read_table(staging.folder / SCAN_FILE).to_pydict()
    paths, hashes = table["path"], table["sha256"]
    spec = spec.check()
    model_id = spec.model_id
    cache = EmbeddingCache(Path(staging.index_dir) / store.CACHE, model_id)
    found, cached_vectors = cache.lookup(hashes) if incremental else (np.zeros(len(hashes), bool), None)
    missing = np.flatnonzero(~found)
    embedder = load_embedder(spec) if len(missing) or cached_vectors is None else None
    dimension = cached_vectors.shape[1] if cached_vectors is not None else embedder.dimension  # type: ignore[union-attr]
    partial = np.lib.format.open_memmap(
        staging.folder / PARTIAL_EMBEDDINGS, mode="w+", dtype=np.float32, shape=(len(paths), dimension)
    )
    if cached_vectors is not None:
        partial[found] = cached_vectors[found]
    usable = found.copy()
    skipped: list[Skipped] = []
    pending_hashes: list[str] = []
    pending_rows: list[int] = []
    if progress is not None:
        progress(0, len(missing))
    workers = min(8, 2 * (os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode") as pool:
        for start in range(0, len(missing), batch_size):
            rows = missing[start : start + batch_size]
            loaded = list(pool.map(lambda row: _load_pixels(paths[row], hashes[row], embedder), rows))
            good = [(row, item) for row, item in zip(rows, loaded, strict=True) if not isinstance(item, Skipped)]
            skipped.extend(item for item in loaded if isinstance(item, Skipped))
            if good:
                good_rows = np.array([row for row, _ in good])
                partial[good_rows] = embedder.embed_pixels(torch.stack([pixels for _, pixels in good]))  # type: ignore[union-attr]
                usable[good_rows] = True
                pending_rows.extend(good_rows.tolist())
                pending_hashes.extend(hashes[row] for row in good_rows)
            if len(pending_rows) >= _CACHE_FLUSH_ROWS:
                cache.add(pending_hashes, np.asarray(partial[pending_rows]))
                pending_hashes, pending_rows = [], []
            if progress is not None:
                progress(min(start + batch_size, len(missing)), len(missing))
    cache.add(pending_hashes, np.asarray(partial[pending_rows]))
    cache.compact()
    kept = np.flatnonzero(usable)
    _write_embeddings(staging.folder / store.EMBEDDINGS_FILE, partial, kept)
    del partial
    (staging.folder / PARTIAL_EMBEDDINGS).unlink()
    metadata = pa.table(
        {
            "row": pa.array(np.arange(len(kept)), pa.int64()),
            "path": [paths[row] for row in kept],
            "sha256": [hashes[row] for row in kept],
            "size": pa.array([table["size"][row] for row in kept], pa.int64()),
            "mtime_ns": pa.array([table["mtime_ns"][row] for row in kept], pa.int64()),
        }
    )
    write_atomic(staging.folder / store.METADATA_FILE, lambda handle: pq.write_table(metadata, handle))
    _write_skipped(staging, read_skipped(staging) + [asdict(item) for item in skipped])
    summary = EmbedSummary(len(kept), len(missing) - len(skipped), int(found.sum()), len(skipped), int(dimension),
                           model_id)
    _stage_record(staging, "embed", asdict(summary))
    logger.info("embedded %d images, %d from the cache, %d undecodable", summary.embedded, summary.cached,
                summary.skipped)
    return summary


def _write_embeddings(path: Path, partial: np.ndarray, kept: np.ndarray) -> None:
    def write(handle: Any) -> None:
        header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)), "fortran_order": False,
                  "shape": (len(kept), partial.shape[1])}
        np.lib.format.write_array_header_1_0(handle, header)
        for start in range(0, len(kept), _COPY_ROWS):
            handle.write(np.ascontiguousarray(partial[kept[start : start + _COPY_ROWS]]).tobytes())

    write_atomic(path, write)


def _write_index(index: faiss.Index, handle: Any) -> None:
    writer = faiss.PyCallbackIOWriter(handle.write)
    faiss.write_index(index, writer)
    del writer  # flushes faiss's buffered bytes into handle


def held_out_rows(count: int, policy: ann.IndexPolicy) -> np.ndarray:
    """The rows kept out of the index until its search knob is tuned (none for an exact index).

    At most a tenth of the corpus, the same rows in every stage of one build.
    """
    if count <= policy.flat_max:
        return np.empty(0, dtype=np.int64)
    rng = np.random.default_rng(policy.seed)
    return np.sort(rng.choice(count, size=min(policy.tune_queries, count // 10), replace=False))


def _embeddings(staging_or_folder: Path) -> np.ndarray:
    return np.load(staging_or_folder / store.EMBEDDINGS_FILE, mmap_mode="r")


def index_stage(staging: Staging, policy: ann.IndexPolicy, progress: Progress | None = None) -> IndexSummary:
    """Choose the index type for the corpus size and build ``index.faiss`` without the held-out rows."""
    started = time.perf_counter()
    vectors = _embeddings(staging.folder)
    count, dimension = vectors.shape
    if count == 0:
        raise CorpusError("the corpus has no usable images (see the skipped files); add images and build again")
    plan = ann.choose_plan(count, dimension, policy)
    rows = np.setdiff1d(np.arange(count), held_out_rows(count, policy), assume_unique=True)
    index = ann.build(vectors, plan, policy, rows, progress)
    write_atomic(staging.folder / store.INDEX_FILE, lambda handle: _write_index(index, handle))
    summary = IndexSummary(plan.index_type, plan.factory, count, time.perf_counter() - started)
    _stage_record(staging, "index", {**asdict(summary), "plan": asdict(plan)})
    logger.info("built %s index (%s) of %d vectors in %.1f s", plan.index_type, plan.factory, count, summary.seconds)
    return summary


def read_index_file(path: Path) -> faiss.Index:
    """Load a faiss index file; raise :class:`RetrievalIndexError` if faiss cannot parse it."""
    try:
        return faiss.read_index(str(path))
    except RuntimeError as exc:
        raise RetrievalIndexError(f"faiss cannot read {path}: {str(exc).splitlines()[0]}; rebuild the index") from exc


def _check_consistent(staging: Staging, vectors: np.ndarray, index: faiss.Index, dimension: int) -> None:
    rows = pq.read_metadata(staging.folder / store.METADATA_FILE).num_rows
    if not index.ntotal == len(vectors) == rows:
        raise RetrievalIndexError(
            f"build {staging.version} is inconsistent: index holds {index.ntotal} vectors, embeddings {len(vectors)}, "
            f"metadata {rows} rows; build again"
        )
    if not index.d == vectors.shape[1] == dimension:
        raise RetrievalIndexError(
            f"build {staging.version} is inconsistent: index dimension {index.d}, embeddings {vectors.shape[1]}, "
            f"model {dimension}; build again"
        )
    sample = np.asarray(vectors[:: max(1, len(vectors) // 1000)], dtype=np.float32)
    norms = np.linalg.norm(sample, axis=1)
    if not np.allclose(norms, 1.0, atol=1e-3):
        raise RetrievalIndexError(
            f"build {staging.version} has embeddings that are not unit length (norms {norms.min():.3f} to "
            f"{norms.max():.3f}); build again"
        )


def build_settings(spec: EmbedderSpec, policy: ann.IndexPolicy, sources: Sequence[str | Path]) -> dict[str, Any]:
    """Everything besides the corpus that decides what a build produces, as the manifest stores it (JSON types)."""
    spec = spec.check()
    settings = {
        "format": store.FORMAT,
        "model": spec.to_dict(),
        "model_id": spec.model_id,
        "corpus": [str(Path(source).absolute()) for source in check_sources(sources)],
        "policy": asdict(policy),
        "libraries": {name: package_version(name) for name in _LIBRARIES},
    }
    return json.loads(json.dumps(settings))


def validate_stage(
    staging: Staging, policy: ann.IndexPolicy, spec: EmbedderSpec, sources: Sequence[str | Path]
) -> Validation:
    """Tune the search knob with the held-out rows, add them, check the build is whole, write the manifest (last).

    An exact index needs no tuning: its recall is 1 by construction.
    """
    embedded = _read_stage(staging, "embed")
    indexed = _read_stage(staging, "index")
    scanned = _read_stage(staging, "scan")
    plan = ann.IndexPlan(**indexed["plan"])
    vectors = _embeddings(staging.folder)
    index = read_index_file(staging.folder / store.INDEX_FILE)
    held_out = held_out_rows(len(vectors), policy)
    if len(held_out):
        device_index = ann.to_gpu(index, plan.index_type)
        tuning = ann.tune(device_index, plan, policy, vectors, held_out)
        ann.add_rows(device_index, vectors, held_out)
        if device_index is not index:
            index = faiss.index_gpu_to_cpu(device_index)
        write_atomic(staging.folder / store.INDEX_FILE, lambda handle: _write_index(index, handle))
    else:
        tuning = ann.Tuning(ann.SearchParams(plan.index_type, None, None, 0), 1.0, {})
    _check_consistent(staging, vectors, index, embedded["dimension"])
    k = min(policy.recall_k, len(vectors))
    if tuning.recall < policy.min_recall:
        raise RetrievalIndexError(
            f"validation failed: the {plan.index_type} index reaches recall@{k} of {tuning.recall:.3f}, "
            f"below the floor of {policy.min_recall}; raise the memory budget or lower the floor"
        )
    skipped = read_skipped(staging)
    (staging.folder / SCAN_FILE).unlink(missing_ok=True)
    names = (store.INDEX_FILE, store.METADATA_FILE, store.EMBEDDINGS_FILE, store.SKIPPED_FILE)
    settings = build_settings(spec, policy, sources)
    manifest = {
        "format": store.FORMAT,
        "version": staging.version,
        "created_at": datetime.now(UTC).isoformat(),
        "model_id": embedded["model_id"],
        "model": settings["model"],
        "dimension": embedded["dimension"],
        "count": len(vectors),
        "corpus": settings["corpus"],
        "corpus_sha256": scanned["corpus_sha256"],
        "settings": settings,
        "scanned": scanned["candidates"],
        "reused_hashes": scanned["reused_hashes"],
        "embedded": embedded["embedded"],
        "cached": embedded["cached"],
        "skipped": len(skipped),
        "index_type": plan.index_type,
        "factory": plan.factory,
        "search": {"knob": tuning.params.knob, "value": tuning.params.value, "refine": tuning.params.refine},
        "recall": tuning.recall,
        "recall_k": k,
        "recall_target": policy.recall_target,
        "tune_queries": len(held_out),
        "tuning_trials": {str(value): recall for value, recall in sorted(tuning.trials.items())},
        "build_seconds": indexed["seconds"],
        "libraries": settings["libraries"],
        "files": {name: store.file_entry(staging.folder / name) for name in names},
    }
    for name in ("scan", "embed", "index"):
        (staging.folder / f"{name}.json").unlink()
    write_json_atomic(staging.folder / store.MANIFEST, manifest)
    return Validation(staging.version, len(vectors), embedded["dimension"], plan.index_type, tuning.recall,
                      manifest["search"], skipped)


def unchanged_version(
    staging: Staging, spec: EmbedderSpec, policy: ann.IndexPolicy, sources: Sequence[str | Path]
) -> str | None:
    """The current version if it was built from the corpus this build scanned, with the same settings, and is intact.

    Run after :func:`scan_stage`. A current version whose files fail their checksums is never
    reported unchanged, so the build that follows replaces it.
    """
    index_dir = Path(staging.index_dir)
    try:
        version, folder, manifest = store.open_current(index_dir)
    except RetrievalIndexError as exc:
        logger.info("no usable current version to compare with: %s", exc)
        return None
    if manifest.get("corpus_sha256") != _read_stage(staging, "scan")["corpus_sha256"]:
        logger.info("the corpus differs from the one version %s was built from", version)
        return None
    settings = build_settings(spec, policy, sources)
    recorded = manifest.get("settings") or {}
    changed = sorted(name for name in settings.keys() | recorded.keys() if settings.get(name) != recorded.get(name))
    if changed:
        logger.info("build settings differ from version %s's: %s", version, ", ".join(changed))
        return None
    try:
        store.verify(folder, manifest, sorted(manifest["files"]))
    except RetrievalIndexError as exc:
        logger.warning("version %s matches the corpus but is damaged (%s); building a new one", version, exc)
        return None
    return version


def describe_version(index_dir: Path | str, version: str) -> Validation:
    """What a published version holds, from its manifest and skipped-file list."""
    folder = store.version_dir(Path(index_dir), version)
    manifest = store.read_manifest(folder)
    skipped = json.loads((folder / store.SKIPPED_FILE).read_text())
    return Validation(version, manifest["count"], manifest["dimension"], manifest["index_type"], manifest["recall"],
                      manifest["search"], skipped)


def promote_stage(staging: Staging) -> str:
    """Move the validated build into ``versions/``; it is complete there but not yet current."""
    store.read_manifest(staging.folder)
    return str(store.promote(staging.folder, Path(staging.index_dir), staging.version))


def publish_stage(staging: Staging, keep: int = store.KEEP_VERSIONS) -> str:
    """Make the promoted version current (one atomic rename) and delete old versions beyond ``keep``."""
    index_dir = Path(staging.index_dir)
    store.switch_current(index_dir, staging.version)
    store.prune(index_dir, keep)
    return staging.version


@dataclass(frozen=True)
class BuildReport:
    """A build: the version it published, or with ``unchanged`` the current version it found up to date."""

    version: str
    index_dir: str
    model_id: str
    dimension: int
    count: int
    embedded: int
    cached: int
    skipped: list[dict[str, str]]
    index_type: str
    recall: float
    duration_s: float
    unchanged: bool = False


def build_index(
    sources: Sequence[str | Path],
    index_dir: str | Path,
    spec: EmbedderSpec = EmbedderSpec(),
    *,
    incremental: bool = False,
    policy: ann.IndexPolicy = ann.IndexPolicy(),
    batch_size: int = DEFAULT_BATCH_SIZE,
    listener: StageListener | None = None,
    force: bool = False,
) -> BuildReport:
    """Build and publish a new version of the index over ``sources`` (folders and/or manifests).

    ``incremental`` reuses cached embeddings (and unchanged files' hashes) from earlier builds.
    ``listener(stage, done, total)`` sees the scan, embed and index stages progress. When the
    current version was built from the same corpus with the same settings, nothing is published
    and the report names that version with ``unchanged=True``; ``force`` builds a new one anyway.
    """
    started = time.perf_counter()
    index_dir = Path(index_dir).absolute()
    check_sources(sources)
    spec = spec.check()

    def stage_progress(stage: str) -> Progress | None:
        return None if listener is None else (lambda done, total: listener(stage, done, total))

    with store.build_lock(index_dir):
        staging = begin_build(index_dir)
        try:
            scan_stage(staging, sources, incremental, stage_progress("scan"))
            current = None if force else unchanged_version(staging, spec, policy, sources)
            if current is not None:
                discard(staging)
                return _unchanged_report(index_dir, current, spec.model_id, time.perf_counter() - started)
            embedded = embed_stage(staging, spec, incremental, batch_size, stage_progress("embed"))
            index_stage(staging, policy, stage_progress("index"))
            validation = validate_stage(staging, policy, spec, sources)
            promote_stage(staging)
            publish_stage(staging)
        except BaseException:
            discard(staging)
            raise
    return BuildReport(
        validation.version, str(index_dir), embedded.model_id, validation.dimension, validation.count,
        embedded.embedded, embedded.cached, validation.skipped, validation.index_type, validation.recall,
        time.perf_counter() - started,
    )


def _unchanged_report(index_dir: Path, version: str, model_id: str, duration_s: float) -> BuildReport:
    current = describe_version(index_dir, version)
    logger.info("index version %s is up to date with the corpus and settings; nothing published", version)
    return BuildReport(version, str(index_dir), model_id, current.dimension, current.count, 0, 0, current.skipped,
                       current.index_type, current.recall, duration_s, unchanged=True)

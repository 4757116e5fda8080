"""Reading a published index: the prior stage's entry point (:func:`open_index`)."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import pyarrow.parquet as pq

from retrieval_index import ann, store
from retrieval_index.builder import read_index_file
from retrieval_index.embedder import Embedder, EmbedderSpec, load_embedder
from retrieval_index.errors import RetrievalIndexError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Match:
    """One search result: the corpus image (absolute path, content hash), its cosine score and index row."""

    path: Path
    sha256: str
    score: float
    row: int


class IndexReader:
    """One loaded, checksum-verified index version, searchable by text, image or vector.

    It keeps serving the version it loaded while later builds publish new ones; open the index
    again to pick up the newest. Searches may run from several threads.
    """

    def __init__(self, index_dir: Path, version: str, folder: Path, manifest: dict[str, Any], device: str | None) -> None:
        self.index_dir = index_dir
        self.version = version
        self.folder = folder
        self.manifest = manifest
        self.model_id: str = manifest["model_id"]
        self.dimension: int = manifest["dimension"]
        self.count: int = manifest["count"]
        self.index_type: str = manifest["index_type"]
        search = manifest["search"]
        self._params = ann.SearchParams(self.index_type, search["knob"], search["value"], search["refine"])
        needed = [store.INDEX_FILE, store.METADATA_FILE]
        if self._params.refine:
            needed.append(store.EMBEDDINGS_FILE)
        store.verify(folder, manifest, needed)
        self._index = ann.to_gpu(read_index_file(folder / store.INDEX_FILE), self.index_type)
        ann.apply_params(self._index, self._params)
        self._vectors = np.load(folder / store.EMBEDDINGS_FILE, mmap_mode="r") if self._params.refine else None
        table = pq.read_table(folder / store.METADATA_FILE, columns=["path", "sha256"])
        self._paths = table.column("path")
        self._hashes = table.column("sha256")
        if self._index.ntotal != self.count or len(self._paths) != self.count:
            raise RetrievalIndexError(
                f"index version {version} at {index_dir} holds {self._index.ntotal} vectors and {len(self._paths)} "
                f"metadata rows, but its manifest says {self.count}; rebuild the index"
            )
        self._spec = EmbedderSpec(**manifest["model"])
        self._device = device
        self._embedder: Embedder | None = None
        self._lock = threading.Lock()
        logger.info("opened index %s version %s: %d %s vectors", index_dir, version, self.count, self.index_type)

    def __repr__(self) -> str:
        return f"IndexReader({str(self.index_dir)!r}, version={self.version!r}, count={self.count})"

    @property
    def embedder(self) -> Embedder:
        """The CLIP model the index was built with (loaded on first use, checked against the manifest)."""
        with self._lock:
            if self._embedder is None:
                embedder = load_embedder(self._spec, self._device)
                if embedder.model_id != self.model_id:
                    raise RetrievalIndexError(
                        f"CLIP weights {embedder.model_id} differ from the {self.model_id} the index at "
                        f"{self.index_dir} was built with; restore those weights or rebuild the index"
                    )
                self._embedder = embedder
            return self._embedder

    def search_vectors(self, queries: np.ndarray, k: int) -> list[list[Match]]:
        """Best-first matches of each unit query vector (Q, D)."""
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise RetrievalIndexError(f"k must be a positive integer, got {k!r}")
        queries = np.atleast_2d(np.asarray(queries, dtype=np.float32))
        if queries.shape[1] != self.dimension:
            raise RetrievalIndexError(
                f"query vectors have dimension {queries.shape[1]}, the index {self.dimension}; "
                f"embed queries with {self.model_id}"
            )
        scores, rows = ann.search(self._index, self._params, queries, min(k, self.count), self._vectors)
        return [
            [
                Match(Path(self._paths[row].as_py()), self._hashes[row].as_py(), float(score), int(row))
                for score, row in zip(query_scores, query_rows, strict=True)
                if row >= 0
            ]
            for query_scores, query_rows in zip(scores, rows, strict=True)
        ]

    def search_text(self, text: str, k: int) -> list[Match]:
        """The ``k`` corpus images closest to ``text`` by CLIP cosine similarity, best first."""
        if not isinstance(text, str) or not text.strip():
            raise RetrievalIndexError("query text is empty; give a description of the image to find")
        return self.search_vectors(self.embedder.embed_texts([text]), k)[0]

    def search_image(self, image: PIL.Image.Image, k: int) -> list[Match]:
        """The ``k`` corpus images closest to ``image`` by CLIP cosine similarity, best first."""
        return self.search_vectors(self.embedder.embed_images([image]), k)[0]


def open_index(index_dir: Path | str, *, device: str | None = None) -> IndexReader:
    """Load the current version of the index at ``index_dir``, verifying its checksums.

    Raises :class:`RetrievalIndexError` (a ``ValueError``) when there is no index, it is incomplete
    or a file does not match its checksum.
    """
    index_dir = Path(index_dir).absolute()
    version, folder, manifest = store.open_current(index_dir)
    return IndexReader(index_dir, version, folder, manifest, device)

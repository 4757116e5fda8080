"""Retrieval index: CLIP embeddings of an image corpus in a versioned FAISS index.

Build with :func:`build_index` (or the ``rebuild_index`` flow / ``magic141 index build``), read
with :func:`open_index`::

    from retrieval_index import open_index

    reader = open_index("out/index")
    best = reader.search_text("a red circle", k=5)  # [Match(path, sha256, score, row), ...], best first
"""

from retrieval_index.ann import IndexPolicy
from retrieval_index.builder import BuildReport, build_index
from retrieval_index.corpus import ScanResult, Skipped, scan_corpus
from retrieval_index.embedder import EmbedderSpec
from retrieval_index.errors import RetrievalIndexError
from retrieval_index.reader import IndexReader, Match, open_index

__all__ = [
    "BuildReport",
    "EmbedderSpec",
    "IndexPolicy",
    "IndexReader",
    "Match",
    "RetrievalIndexError",
    "ScanResult",
    "Skipped",
    "build_index",
    "open_index",
    "scan_corpus",
]

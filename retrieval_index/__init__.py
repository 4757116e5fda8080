"""Retrieval index: CLIP embeddings of an image corpus in a versioned FAISS index.

Build with :func:`build_index` (or the ``rebuild_index`` flow / ``magic141 index build``), read
with :func:`open_index`::

    from retrieval_index import open_index

    reader = open_index("out/index")
    best = reader.search_text("a red circle", k=5)  # [Match(path, sha256, score, row), ...], best first

The names below are imported on first use, so light modules such as
:mod:`retrieval_index.store` can be used without loading torch and faiss.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from retrieval_index.ann import IndexPolicy
    from retrieval_index.builder import BuildReport, build_index
    from retrieval_index.corpus import ScanResult, Skipped, scan_corpus
    from retrieval_index.embedder import EmbedderSpec
    from retrieval_index.errors import CorpusError, RetrievalIndexError
    from retrieval_index.reader import IndexReader, Match, open_index

_HOMES = {
    "BuildReport": "retrieval_index.builder",
    "CorpusError": "retrieval_index.errors",
    "EmbedderSpec": "retrieval_index.embedder",
    "IndexPolicy": "retrieval_index.ann",
    "IndexReader": "retrieval_index.reader",
    "Match": "retrieval_index.reader",
    "RetrievalIndexError": "retrieval_index.errors",
    "ScanResult": "retrieval_index.corpus",
    "Skipped": "retrieval_index.corpus",
    "build_index": "retrieval_index.builder",
    "open_index": "retrieval_index.reader",
    "scan_corpus": "retrieval_index.corpus",
}

__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_HOMES})

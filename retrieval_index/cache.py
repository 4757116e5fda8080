"""Embedding cache keyed by image content hash, one folder per CLIP model.

Vectors are kept in shards: ``<name>.vectors.npy`` (float32, N x D) written first, then
``<name>.hashes.npy`` (the N sha256 hex digests), whose presence commits the shard. A build killed
mid-way keeps every shard it finished, so the next build embeds only what is still missing.
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from magic141.utils import write_atomic, write_json_atomic

logger = logging.getLogger(__name__)

_HASHES = ".hashes.npy"
_VECTORS = ".vectors.npy"
COMPACT_ABOVE_SHARDS = 32


class EmbeddingCache:
    """Embeddings of one model, looked up by sha256 of the image file."""

    def __init__(self, root: Path, model_id: str) -> None:
        self.folder = root / hashlib.sha256(model_id.encode()).hexdigest()[:16]
        self.model_id = model_id
        self.folder.mkdir(parents=True, exist_ok=True)
        about = self.folder / "model.json"
        if not about.exists():
            write_json_atomic(about, {"model_id": model_id})

    def _shards(self) -> list[Path]:
        return sorted(self.folder.glob(f"*{_HASHES}"))

    @staticmethod
    def _vectors_of(shard: Path) -> Path:
        return shard.with_name(shard.name.removesuffix(_HASHES) + _VECTORS)

    def lookup(self, hashes: Sequence[str]) -> tuple[np.ndarray, np.ndarray | None]:
        """Return (found mask, vectors of the found hashes in the order of ``hashes``, None if none found)."""
        wanted = {sha: position for position, sha in enumerate(hashes)}
        found = np.zeros(len(hashes), dtype=bool)
        vectors: np.ndarray | None = None
        for shard in self._shards():
            shard_hashes = np.load(shard)
            shard_vectors = np.load(self._vectors_of(shard), mmap_mode="r")
            for row, sha in enumerate(shard_hashes.tolist()):
                position = wanted.get(sha)
                if position is None:
                    continue
                if vectors is None:
                    vectors = np.zeros((len(hashes), shard_vectors.shape[1]), dtype=np.float32)
                vectors[position] = shard_vectors[row]
                found[position] = True
        return found, vectors

    def add(self, hashes: Sequence[str], vectors: np.ndarray) -> None:
        """Store one shard of embeddings."""
        if len(hashes) != len(vectors):
            raise ValueError(f"{len(hashes)} hashes for {len(vectors)} vectors; pass one hash per row")
        if not hashes:
            return
        name = uuid.uuid4().hex
        write_atomic(self.folder / f"{name}{_VECTORS}", lambda handle: np.save(handle, vectors.astype(np.float32)))
        write_atomic(self.folder / f"{name}{_HASHES}", lambda handle: np.save(handle, np.asarray(hashes, dtype="U64")))

    def compact(self) -> None:
        """Merge the shards into one when there are many (run only while holding the build lock)."""
        shards = self._shards()
        if len(shards) <= COMPACT_ABOVE_SHARDS:
            return
        merged: dict[str, np.ndarray] = {}
        for shard in shards:
            shard_vectors = np.load(self._vectors_of(shard))
            merged.update(zip(np.load(shard).tolist(), shard_vectors, strict=True))
        self.add(list(merged), np.stack(list(merged.values())))
        for shard in shards:
            shard.unlink()
            self._vectors_of(shard).unlink(missing_ok=True)
        logger.info("compacted %d embedding cache shards of %s into one", len(shards), self.model_id)

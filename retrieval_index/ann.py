"""FAISS index choice, build and tuning: exact for small corpora, graph or inverted lists in the middle,
compressed inverted lists when the vectors outgrow the memory budget.

All indexes use the inner product on unit vectors, so scores are cosine similarities. After the
build the search-time knob (``nprobe`` for inverted lists, ``efSearch`` for HNSW) is set to the
smallest value whose recall@k against exact search on a sample of the corpus reaches the target.
IVF-PQ keeps only compressed codes in memory; its candidates (``refine`` per wanted result) are
re-scored exactly from the embeddings file, which stays on disk (memory-mapped).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import faiss
import numpy as np

from magic141.utils import InputError

logger = logging.getLogger(__name__)

Progress = Callable[[int, int], None]

FLAT, HNSW, IVF_FLAT, IVF_PQ = "flat", "hnsw", "ivf_flat", "ivf_pq"
_ADD_CHUNK = 65_536
_MIN_POINTS_PER_CENTROID = 39  # faiss warns below this many training points per k-means centroid


@dataclass(frozen=True)
class IndexPolicy:
    """How the index type is chosen and tuned.

    Up to ``flat_max`` vectors the index is exact; up to ``hnsw_max`` an HNSW graph; beyond, IVF with
    full vectors while those fit ``memory_budget_bytes``, else IVF-PQ. The knob is tuned to reach
    ``recall_target`` recall@``recall_k`` on ``tune_queries`` corpus vectors held out of training;
    a build whose best recall stays below ``min_recall`` fails validation.
    """

    flat_max: int = 20_000
    hnsw_max: int = 200_000
    memory_budget_bytes: int = 16 * 2**30
    recall_target: float = 0.95
    min_recall: float = 0.8
    recall_k: int = 10
    tune_queries: int = 1000
    hnsw_m: int = 32
    hnsw_ef_construction: int = 80
    hnsw_ef_max: int = 4096
    train_points_per_list: int = 64
    pq_refine: int = 10
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.min_recall <= self.recall_target <= 1:
            raise InputError(
                f"recall target {self.recall_target} and floor {self.min_recall} must satisfy "
                f"0 < floor <= target <= 1; pass e.g. a target of 0.95"
            )
        if self.recall_k < 1 or self.tune_queries < 1:
            raise InputError("recall_k and tune_queries must be at least 1")


@dataclass(frozen=True)
class IndexPlan:
    """The chosen index: faiss factory string, its search knob and the exact re-scoring factor."""

    index_type: str
    factory: str
    knob: str | None
    knob_max: int
    refine: int = 0


@dataclass(frozen=True)
class SearchParams:
    """What a reader needs to search the built index the way it was tuned."""

    index_type: str
    knob: str | None
    value: int | None
    refine: int


def _power_of_two_near(value: float) -> int:
    return 2 ** max(0, round(math.log2(max(value, 1.0))))


def choose_plan(count: int, dimension: int, policy: IndexPolicy) -> IndexPlan:
    """Pick the index type for ``count`` vectors of ``dimension`` under ``policy``."""
    if count <= policy.flat_max:
        return IndexPlan(FLAT, "IDMap,Flat", None, 0)
    nlist = min(_power_of_two_near(4 * math.sqrt(count)), 65_536, _power_of_two_near(count / _MIN_POINTS_PER_CENTROID))
    quantizer = f"IVF{nlist}_HNSW32" if nlist >= 16_384 else f"IVF{nlist}"
    if count * dimension * 4 > policy.memory_budget_bytes:
        subquantizers = next(m for m in (dimension // 8, dimension // 4, dimension // 2, dimension) if m and dimension % m == 0)
        bits = max(1, min(8, int(math.log2(max(1, count // _MIN_POINTS_PER_CENTROID)))))
        return IndexPlan(IVF_PQ, f"{quantizer},PQ{subquantizers}x{bits}", "nprobe", nlist, policy.pq_refine)
    if count <= policy.hnsw_max:
        return IndexPlan(HNSW, f"IDMap,HNSW{policy.hnsw_m},Flat", "efSearch", policy.hnsw_ef_max)
    return IndexPlan(IVF_FLAT, f"{quantizer},Flat", "nprobe", nlist)


def gpu_count() -> int:
    """GPUs faiss can use here (0 on a machine without one, even with the GPU build)."""
    return faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0


def to_gpu(index: faiss.Index, index_type: str) -> faiss.Index:
    """The index on all visible GPUs when there are any and faiss supports its type there; else unchanged."""
    if index_type == HNSW or gpu_count() == 0:
        return index
    try:
        return faiss.index_cpu_to_all_gpus(index)
    except RuntimeError as exc:
        logger.warning("faiss cannot move this %s index to the GPU (%s); using the CPU", index_type, exc)
        return index


def add_rows(index: faiss.Index, vectors: np.ndarray, rows: np.ndarray, progress: Progress | None = None) -> None:
    """Add ``vectors[rows]`` to ``index`` under their row numbers as ids, in chunks."""
    if progress is not None:
        progress(0, len(rows))
    for start in range(0, len(rows), _ADD_CHUNK):
        chunk = rows[start : start + _ADD_CHUNK]
        index.add_with_ids(np.ascontiguousarray(vectors[chunk], dtype=np.float32), chunk.astype(np.int64))
        if progress is not None:
            progress(start + len(chunk), len(rows))


def build(
    vectors: np.ndarray,
    plan: IndexPlan,
    policy: IndexPolicy,
    rows: np.ndarray,
    progress: Progress | None = None,
) -> faiss.Index:
    """A CPU index as ``plan`` says, trained on a sample of ``rows`` and holding ``vectors[rows]`` (ids = rows)."""
    dimension = vectors.shape[1]
    index = faiss.index_factory(dimension, plan.factory, faiss.METRIC_INNER_PRODUCT)
    if plan.index_type == HNSW:
        faiss.downcast_index(index.index).hnsw.efConstruction = policy.hnsw_ef_construction
    device_index = to_gpu(index, plan.index_type)
    if not index.is_trained:
        rng = np.random.default_rng(policy.seed)
        wanted = min(len(rows), plan.knob_max * policy.train_points_per_list)
        sample = np.sort(rng.choice(rows, size=wanted, replace=False))
        logger.info("training %s on %d of %d vectors", plan.factory, wanted, len(rows))
        device_index.train(np.ascontiguousarray(vectors[sample], dtype=np.float32))
    add_rows(device_index, vectors, rows, progress)
    return faiss.index_gpu_to_cpu(device_index) if device_index is not index else index


def apply_params(index: faiss.Index, params: SearchParams) -> None:
    """Set the tuned knob on ``index`` (CPU or GPU)."""
    if params.knob is None or params.value is None:
        return
    space = faiss.GpuParameterSpace() if gpu_count() and params.index_type != HNSW else faiss.ParameterSpace()
    space.set_index_parameter(index, params.knob, params.value)


def search(
    index: faiss.Index, params: SearchParams, queries: np.ndarray, k: int, vectors: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` (scores, rows) per query, best first; rows are -1 where the index holds fewer than k."""
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    if params.refine <= 0:
        return index.search(queries, k)
    if vectors is None:
        raise ValueError(f"a {params.index_type} index re-scores its candidates; pass the embeddings")
    _, candidates = index.search(queries, k * params.refine)
    scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
    rows = np.full((len(queries), k), -1, dtype=np.int64)
    for position, found in enumerate(candidates):
        found = np.unique(found[found >= 0])
        exact = np.asarray(vectors[found], dtype=np.float32) @ queries[position]
        best = np.argsort(-exact, kind="stable")[:k]
        scores[position, : len(best)] = exact[best]
        rows[position, : len(best)] = found[best]
    return scores, rows


def per_query_recall(found: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """For each query, the share of its true top-k rows that were found."""
    return np.array([
        len(np.intersect1d(f[f >= 0], t[t >= 0])) / max(1, int((t >= 0).sum()))
        for f, t in zip(found, truth, strict=True)
    ])


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean share of each query's true top-k rows that were found."""
    return float(per_query_recall(found, truth).mean())


def exact_neighbours(vectors: np.ndarray, queries: np.ndarray, k: int, excluded: np.ndarray | None = None) -> np.ndarray:
    """Rows of the exact top-k by inner product (faiss brute force), leaving out the ``excluded`` rows."""
    extra = 0 if excluded is None else len(excluded)
    _, rows = faiss.knn(np.ascontiguousarray(queries, dtype=np.float32), np.ascontiguousarray(vectors),
                        min(k + extra, len(vectors)), metric=faiss.METRIC_INNER_PRODUCT)
    if not extra:
        return rows
    kept = np.full((len(rows), k), -1, dtype=np.int64)
    for position, found in enumerate(rows):
        others = found[~np.isin(found, excluded)][:k]
        kept[position, : len(others)] = others
    return kept


@dataclass(frozen=True)
class Tuning:
    """The chosen knob value and the recall it reached on the held-out sample."""

    params: SearchParams
    recall: float
    trials: dict[int, float]


def tune(
    index: faiss.Index,
    plan: IndexPlan,
    policy: IndexPolicy,
    vectors: np.ndarray,
    held_out: np.ndarray,
) -> Tuning:
    """Smallest knob value reaching the recall target for the ``held_out`` rows (the best tried if none does).

    The index must not hold the ``held_out`` rows yet: they query it like unseen images would,
    against the exact top-k of the rows it holds. A value passes when the mean recall minus two
    standard errors (over the sample's queries) reaches the target, so the target holds beyond
    the sample too.
    """
    k = min(policy.recall_k, index.ntotal)
    trials: dict[int, float] = {}
    queries = np.asarray(vectors[held_out], dtype=np.float32)
    truth = exact_neighbours(vectors, queries, k, excluded=held_out)

    def recalls(value: int | None) -> np.ndarray:
        params = SearchParams(plan.index_type, plan.knob, value, plan.refine)
        apply_params(index, params)
        return per_query_recall(search(index, params, queries, k, vectors)[1], truth)

    if plan.knob is None:
        return Tuning(SearchParams(plan.index_type, None, None, plan.refine), float(recalls(None).mean()), trials)

    def measure(value: int) -> float:
        """Record the mean recall with ``value``; return its lower bound (mean - 2 standard errors)."""
        found = recalls(value)
        trials[value] = float(found.mean())
        return float(found.mean() - 2 * found.std() / np.sqrt(len(found)))

    value, passed_at = (k if plan.index_type == HNSW else 1), None
    failed_at = value - 1
    while True:
        if measure(value) >= policy.recall_target:
            passed_at = value
            break
        failed_at = value
        if value >= plan.knob_max:
            break
        value = min(value * 2, plan.knob_max)
    if passed_at is None:
        chosen = max(trials, key=lambda tried: (trials[tried], -tried))
        logger.warning(
            "%s reaches recall@%d of %.3f at best (%s=%d), short of the %.3f target",
            plan.factory, k, trials[chosen], plan.knob, chosen, policy.recall_target,
        )
    else:
        while passed_at - failed_at > 1:
            middle = (passed_at + failed_at) // 2
            if measure(middle) >= policy.recall_target:
                passed_at = middle
            else:
                failed_at = middle
        chosen = passed_at
    params = SearchParams(plan.index_type, plan.knob, chosen, plan.refine)
    apply_params(index, params)
    logger.info("tuned %s: %s=%d gives recall@%d %.4f", plan.factory, plan.knob, chosen, k, trials[chosen])
    return Tuning(params, trials[chosen], trials)

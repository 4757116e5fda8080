"""Retrieval index against autofaiss: build time, recall@10 against exact search, single-query latency.

The corpus is N synthetic unit vectors with clustered structure (topics, clusters within topics,
per-point noise); the queries are further points of the same distribution, not in the corpus.
Our index is chosen and tuned by retrieval_index exactly as a build does (index type by size,
knob tuned on held-out corpus rows to the recall target); autofaiss runs in its own virtual
environment (it pins numpy<2) on the same .npy files in the same run. Latency is the median of
single-query searches (one query per call), after a warm-up, in each process with the same
number of threads.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from common import write_section  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "bench" / ".retrieval-data"
AUTOFAISS_VENV = ROOT / "bench" / ".autofaiss-venv"
AUTOFAISS_REQUIREMENTS = ("autofaiss", "pyarrow<16", "numpy<2")
K = 10
MEMORY_BUDGET_GIB = 8


def clustered_vectors(count: int, dimension: int, seed: int) -> np.ndarray:
    """Unit vectors around 10,000 cluster centres grouped in 100 topics, made in chunks to bound memory."""
    rng = np.random.default_rng(seed)
    topics = rng.standard_normal((100, dimension)).astype(np.float32)
    topics /= np.linalg.norm(topics, axis=1, keepdims=True)
    centres = topics[rng.integers(0, len(topics), 10_000)]
    centres = centres + rng.standard_normal(centres.shape).astype(np.float32) / np.sqrt(dimension)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    vectors = np.empty((count, dimension), dtype=np.float32)
    for start in range(0, count, 100_000):
        stop = min(start + 100_000, count)
        chunk = centres[rng.integers(0, len(centres), stop - start)]
        chunk = chunk + 1.5 * rng.standard_normal(chunk.shape).astype(np.float32) / np.sqrt(dimension)
        vectors[start:stop] = chunk / np.linalg.norm(chunk, axis=1, keepdims=True)
    return vectors


def ensure_autofaiss_venv() -> Path:
    """bench/.autofaiss-venv with autofaiss installed (created on first use)."""
    python = AUTOFAISS_VENV / "bin" / "python"
    if not python.exists():
        subprocess.run([shutil.which("python3") or "python3", "-m", "venv", str(AUTOFAISS_VENV)], check=True)
    probe = subprocess.run([str(python), "-c", "import autofaiss"], capture_output=True)
    if probe.returncode != 0:
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                        *AUTOFAISS_REQUIREMENTS], check=True)
    return python


def median_latency_ms(search: Callable[[np.ndarray], object], queries: np.ndarray) -> float:
    """Median wall time of one single-query call, after 50 warm-up calls."""
    for query in queries[:50]:
        search(query[None, :])
    latencies = []
    for query in queries:
        tick = time.perf_counter()
        search(query[None, :])
        latencies.append(time.perf_counter() - tick)
    return 1000 * statistics.median(latencies)


def render(run: dict[str, Any]) -> str:
    """The BENCHMARKS.md section of one run."""
    ours, theirs = run["ours"], run["autofaiss"]
    knob = f"{ours['search']['knob']}={ours['search']['value']}"
    lines = [
        "## retrieval: index build, recall@10 and single-query latency against autofaiss",
        "",
        f"`python bench/retrieval.py` on {run['count']:,} synthetic clustered unit vectors of dimension "
        f"{run['dimension']} (100 topics, 10,000 clusters, noise) and {run['queries']:,} further points of the "
        f"same distribution as queries; faiss threads: {run['threads']}. Recall@10 is against exact search "
        f"(faiss brute force, {run['exact_s']:.0f} s for the ground truth). Both indexes get the same "
        f"{run['memory_budget_gib']} GiB memory budget. The whole run took {run['wall_s'] / 60:.0f} min on a "
        f"machine shared with other jobs, so build times are indicative only.",
        "",
        "| index | type (chosen by) | search knob | build s | recall@10 | median query ms |",
        "|---|---|---|---|---|---|",
        f"| retrieval_index | {ours['factory']} (corpus size) | {knob} (tuned to {run['recall_target']} on "
        f"held-out corpus rows in {ours['tune_s']:.0f} s) | {ours['build_s']:.0f} | {ours['recall']:.4f} | "
        f"{ours['median_ms']:.3f} |",
    ]
    if theirs is not None:
        lines += [
            f"| autofaiss {theirs['autofaiss']} (faiss {theirs['faiss']}) | {theirs['index_key']} (autofaiss) | "
            f"{theirs['index_param']} (autofaiss's own tuning) | {theirs['build_s']:.0f} | {theirs['recall']:.4f} | "
            f"{theirs['median_ms']:.3f} |",
            "",
            f"Ratios (ours / autofaiss): build time {ours['build_s'] / theirs['build_s']:.2f}x (tuning adds "
            f"{ours['tune_s']:.0f} s), median latency {ours['median_ms'] / theirs['median_ms']:.2f}x, recall@10 "
            f"{ours['recall']:.4f} vs {theirs['recall']:.4f}.",
            "",
            f"Targets: recall@10 >= 0.95: {'met' if ours['recall'] >= 0.95 else 'NOT met'}; median latency no "
            f"worse than autofaiss's at its own recall: "
            f"{'met' if ours['median_ms'] <= theirs['median_ms'] else 'NOT met'}. autofaiss runs with its "
            f"defaults (it picks the index by memory and tunes its knob for the best recall within a 10 ms "
            f"query budget); ours tunes for the smallest knob that reaches the recall target.",
        ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1_000_000)
    parser.add_argument("--dimension", type=int, default=512)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--skip-autofaiss", action="store_true", help="measure our index only")
    parser.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md alone")
    args = parser.parse_args()
    import faiss

    from retrieval_index import ann
    from retrieval_index.builder import held_out_rows

    run_started = time.perf_counter()
    threads = faiss.omp_get_max_threads()
    DATA.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    everything = clustered_vectors(args.count + args.queries, args.dimension, seed=0)
    np.save(DATA / "base.npy", everything[: args.count])
    np.save(DATA / "queries.npy", everything[args.count :])
    del everything
    base = np.load(DATA / "base.npy", mmap_mode="r")
    queries = np.load(DATA / "queries.npy")
    print(f"data: {args.count} x {args.dimension} in {time.perf_counter() - started:.1f} s", flush=True)

    started = time.perf_counter()
    truth = ann.exact_neighbours(np.asarray(base), queries, K)
    exact_s = time.perf_counter() - started
    print(f"exact ground truth in {exact_s:.1f} s", flush=True)

    policy = ann.IndexPolicy(memory_budget_bytes=MEMORY_BUDGET_GIB * 2**30)
    plan = ann.choose_plan(args.count, args.dimension, policy)
    held_out = held_out_rows(args.count, policy)
    started = time.perf_counter()
    index = ann.build(base, plan, policy, np.setdiff1d(np.arange(args.count), held_out, assume_unique=True))
    build_s = time.perf_counter() - started
    started = time.perf_counter()
    tuning = ann.tune(index, plan, policy, base, held_out)
    ann.add_rows(index, base, held_out)
    tune_s = time.perf_counter() - started
    ours_recall = ann.recall_at_k(ann.search(index, tuning.params, queries, K, base)[1], truth)
    ours_ms = median_latency_ms(lambda q, index=index: ann.search(index, tuning.params, q, K, base), queries)
    print(f"ours: {plan.factory} {tuning.params.knob}={tuning.params.value} build {build_s:.1f} s + tune "
          f"{tune_s:.1f} s, recall@10 {ours_recall:.4f}, median {ours_ms:.3f} ms", flush=True)
    del index

    autofaiss: dict[str, object] | None = None
    if not args.skip_autofaiss:
        python = ensure_autofaiss_venv()
        out = DATA / "autofaiss"
        shutil.rmtree(out, ignore_errors=True)
        started = time.perf_counter()
        subprocess.run(
            [str(python), str(ROOT / "bench" / "retrieval_autofaiss.py"), "--base", str(DATA / "base.npy"),
             "--queries", str(DATA / "queries.npy"), "--out", str(out), "--k", str(K), "--nb-cores", str(threads),
             "--max-index-memory", f"{MEMORY_BUDGET_GIB}G"],
            check=True, env={**os.environ, "OMP_NUM_THREADS": str(threads)},
        )
        autofaiss = json.loads((out / "autofaiss_result.json").read_text())
        autofaiss["recall"] = ann.recall_at_k(np.load(out / "autofaiss_rows.npy"), truth)
        autofaiss["wall_s"] = time.perf_counter() - started
        print(f"autofaiss: {autofaiss}", flush=True)

    run = {
        "count": args.count, "dimension": args.dimension, "queries": args.queries, "threads": threads,
        "exact_s": exact_s, "memory_budget_gib": MEMORY_BUDGET_GIB, "recall_target": policy.recall_target,
        "ours": {"factory": plan.factory, "search": asdict(tuning.params), "build_s": build_s, "tune_s": tune_s,
                 "recall": ours_recall, "median_ms": ours_ms, "trials": tuning.trials},
        "autofaiss": autofaiss,
        "wall_s": time.perf_counter() - run_started,
    }
    body = render(run)
    print(body)
    print(json.dumps(run, default=str))
    if not args.no_write:
        write_section("retrieval", body)

if __name__ == "__main__":
    main()

"""Worker for bench/retrieval.py: build and time an autofaiss index in autofaiss's own environment.

Runs under bench/.autofaiss-venv (autofaiss pins numpy<2, so it cannot share the project's
environment). Reads the corpus and queries from .npy files, lets autofaiss choose, build and tune
its index, then writes the top-k rows of every query and a JSON of timings into --out.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from importlib.metadata import version
from pathlib import Path

import faiss
import numpy as np
from autofaiss import build_index


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", type=Path, required=True)
    parser.add_argument("--queries", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--nb-cores", type=int, required=True)
    parser.add_argument("--max-index-memory", default="8G")
    parser.add_argument("--memory-available", default="24G")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    base = np.load(args.base)
    queries = np.load(args.queries)
    started = time.perf_counter()
    index, infos = build_index(
        embeddings=base,
        index_path=str(args.out / "autofaiss.index"),
        index_infos_path=str(args.out / "autofaiss_infos.json"),
        metric_type="ip",
        nb_cores=args.nb_cores,
        max_index_memory_usage=args.max_index_memory,
        current_memory_available=args.memory_available,
        verbose=logging.WARNING,
    )
    build_s = time.perf_counter() - started
    del base
    for query in queries[:50]:
        index.search(query[None, :], args.k)
    latencies = []
    for query in queries:
        tick = time.perf_counter()
        index.search(query[None, :], args.k)
        latencies.append(time.perf_counter() - tick)
    _, rows = index.search(queries, args.k)
    np.save(args.out / "autofaiss_rows.npy", rows)
    result = {
        "build_s": build_s,
        "index_key": infos.get("index_key"),
        "index_param": infos.get("index_param"),
        "median_ms": 1000 * statistics.median(latencies),
        "p90_ms": 1000 * statistics.quantiles(latencies, n=10)[-1],
        "autofaiss": version("autofaiss"),
        "faiss": faiss.__version__,
        "numpy": np.__version__,
    }
    (args.out / "autofaiss_result.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

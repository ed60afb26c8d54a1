"""Where query time goes: cold CLI, warm library, batch throughput, catalog embedding.

    python scripts/bench_query.py [--index-dir indexes/fashion-mnist] [--runs 5]

Prints one JSON object. Needs a built index and the Fashion-MNIST test split (for query images).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from simsearch import SearchIndex
from simsearch.data import load_split
from simsearch.encoders import normalize
from simsearch.images import preprocess, preprocess_array


def wall(cmd: list[str], runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append(time.perf_counter() - start)
    return times


def percentile_ms(values: list[float], q: float) -> float:
    return round(1000 * float(np.percentile(values, q)), 4)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--index-dir", default=os.environ.get("SIMSEARCH_INDEX_DIR", "indexes/fashion-mnist")
    )
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--queries", type=int, default=1000)
    args = parser.parse_args()

    index = SearchIndex.load(args.index_dir)
    test = load_split("test")
    simsearch = str(Path(sys.executable).with_name("simsearch"))

    with tempfile.TemporaryDirectory() as tmp:
        pngs = []
        for i in range(args.queries):
            path = Path(tmp) / f"q{i:05d}.png"
            Image.fromarray(test.images[i]).save(path)
            pngs.append(str(path))

        help_times = wall([simsearch, "--help"], args.runs)
        cold_times = wall([simsearch, "query", pngs[0], "--index-dir", args.index_dir], args.runs)

        # Warm library: one query per call, each with a different PNG file.
        index.query(pngs[0], k=10)
        warm = []
        for path in pngs:
            start = time.perf_counter()
            index.query(path, k=10)
            warm.append(time.perf_counter() - start)

    # Bare FAISS search of one vector, on one OpenMP thread like the library's query path.
    import faiss

    test_vectors = index.embed_pixels(test.images)
    vectors = test_vectors[: args.queries]
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    bare = []
    for row in range(len(vectors)):
        one = vectors[row : row + 1]
        start = time.perf_counter()
        index.faiss_index.search(one, 10)
        bare.append(time.perf_counter() - start)
    faiss.omp_set_num_threads(threads)

    # The same search on an exact (flat) index over the same vectors, for reference.
    exact = faiss.IndexFlatIP(index.dim)
    exact.add(np.ascontiguousarray(index.vectors, dtype=np.float32))
    _, truth = exact.search(test_vectors, 10)  # for the efSearch 32 recall below
    faiss.omp_set_num_threads(1)
    bare_exact = []
    for row in range(len(vectors)):
        one = vectors[row : row + 1]
        start = time.perf_counter()
        exact.search(one, 10)
        bare_exact.append(time.perf_counter() - start)
    faiss.omp_set_num_threads(threads)
    del exact

    def record(stages: dict[str, list[float]], marks: list[float]) -> None:
        """Stage i (in the dict's order) took marks[i + 1] - marks[i]."""
        for name, a, b in zip(stages, marks, marks[1:], strict=False):
            stages[name].append(b - a)

    # Where one warm query's time goes, stage by stage (same PNGs as above, re-written).
    stages: dict[str, list[float]] = {
        "decode_preprocess": [],
        "encode": [],
        "search": [],
        "hits": [],
    }
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.queries):
            path = Path(tmp) / f"q{i:05d}.png"
            Image.fromarray(test.images[i]).save(path)
            marks = [time.perf_counter()]
            pixels = preprocess(path)[None]
            marks.append(time.perf_counter())
            vector = normalize(index.encoder.encode(pixels))
            marks.append(time.perf_counter())
            scores, rows = index.search(vector, 10)
            marks.append(time.perf_counter())
            index._hit_lists(scores, rows)
            marks.append(time.perf_counter())
            record(stages, marks)

    batch_times = []
    batch_stages: dict[str, list[float]] = {"preprocess": [], "embed": [], "search": [], "hits": []}
    for _ in range(3):
        start = time.perf_counter()
        index.query_batch(test.images, k=10)
        batch_times.append(time.perf_counter() - start)
        # The same work stage by stage (two threads where the library uses them).
        marks = [time.perf_counter()]
        pixels = preprocess_array(test.images)
        marks.append(time.perf_counter())
        batch_vectors = index.embed_pixels(pixels)
        marks.append(time.perf_counter())
        scores, rows = index.search(batch_vectors, 10)
        marks.append(time.perf_counter())
        index._hit_lists(scores, rows)
        marks.append(time.perf_counter())
        record(batch_stages, marks)

    # What would reach 10,000 queries/s: the same batch returning arrays (index.search) instead
    # of Hit objects, at the index's own setting and, for HNSW, at efSearch 32.
    def array_batch() -> float:
        start = time.perf_counter()
        index.search(index.embed_pixels(preprocess_array(test.images)), 10)
        return time.perf_counter() - start

    array_batches: dict[str, Any] = {
        "default_setting_queries_per_s": round(
            len(test.images) / statistics.median([array_batch() for _ in range(3)])
        )
    }
    if index.manifest["index"]["type"] == "hnsw":
        hnsw = index.faiss_index.hnsw
        default_ef = hnsw.efSearch
        hnsw.efSearch = 32
        _, found = index.faiss_index.search(test_vectors, 10)
        array_batches["ef_search_32_queries_per_s"] = round(
            len(test.images) / statistics.median([array_batch() for _ in range(3)])
        )
        array_batches["ef_search_32_recall@10"] = round(
            float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, truth, strict=True)])),
            4,
        )
        hnsw.efSearch = default_ef

    catalog = np.asarray(index.images)
    embed_times = []
    for _ in range(3):
        start = time.perf_counter()
        index.embed_pixels(catalog)
        embed_times.append(time.perf_counter() - start)

    warm_p50 = percentile_ms(warm, 50)
    bare_p50 = percentile_ms(bare, 50)
    print(
        json.dumps(
            {
                "machine": {
                    "cpus": os.cpu_count(),
                    "platform": platform.platform(),
                    "python": platform.python_version(),
                    "note": "2-core, 24 GiB, no GPU",
                },
                "index": {
                    "dir": str(args.index_dir),
                    "params": index.manifest["index"].get("params"),
                    "count": len(index),
                    "dim": index.dim,
                    "model": index.manifest["model"].get("model"),
                    "type": index.manifest["index"]["type"],
                },
                "cli_help_s": {
                    "median": round(statistics.median(help_times), 3),
                    "runs": [round(t, 3) for t in help_times],
                },
                "load_average_1min": round(os.getloadavg()[0], 2),
                "cold_cli_query_s": {
                    "median": round(statistics.median(cold_times), 3),
                    "runs": [round(t, 3) for t in cold_times],
                },
                "warm_query_ms": {
                    "p50": warm_p50,
                    "p99": percentile_ms(warm, 99),
                    "n": len(warm),
                    "bare_faiss_search_p50": bare_p50,
                    "ratio_p50_to_bare": round(warm_p50 / bare_p50, 2) if bare_p50 else None,
                    "bare_exact_flat_search_p50": percentile_ms(bare_exact, 50),
                    "stages_p50": {name: percentile_ms(v, 50) for name, v in stages.items()},
                },
                "batch_queries_per_s": round(len(test.images) / statistics.median(batch_times)),
                "batch_as_arrays": array_batches,
                "batch_stages_s_median": {
                    name: round(statistics.median(v), 3) for name, v in batch_stages.items()
                },
                "embedding_images_per_s": round(len(catalog) / statistics.median(embed_times)),
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()

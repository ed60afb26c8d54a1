"""Query speed and memory: CLI start, warm single queries, batches of the 10,000 Fashion-MNIST
test images (lists of Hit and arrays, on every core and on one), catalog embedding, and the
memory a 10,000-image batch leaves in the process.

    python scripts/bench_query.py [--index-dir indexes/fashion-mnist] [--runs 5]

Prints one JSON object. Needs a built index and the Fashion-MNIST test split. The batch variants
take turns within each run (the machine's load falls on all alike); figures are medians over
the runs. Memory is measured in fresh processes (``--memory-probe``), one per setting.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from simsearch import SearchIndex
from simsearch.data import load_split
from simsearch.encoders import normalize
from simsearch.images import preprocess, preprocess_array
from simsearch.search_index import NO_FILTER
from simsearch.search_index import _by_locality as by_locality


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def wall(cmd: list[str], runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append(time.perf_counter() - start)
    return times


def ms(values: list[float], q: float) -> float:
    return round(1000 * float(np.percentile(values, q)), 4)


def memory_probe(index_dir: str, threads: int | None) -> dict[str, Any]:
    """RSS (MB) of this process: index loaded, after one query, after a 10,000-image batch."""
    images = load_split("test").images
    index = SearchIndex.load(index_dir)
    index.threads = threads
    out = {"threads": index.threads, "loaded": rss_mb()}
    index.query(images[0], k=10)
    out["after_one_query"] = rss_mb()
    hits = index.query_batch(images, k=10)
    out["holding_the_batch_hits"] = rss_mb()
    del hits
    out["after_the_batch"] = rss_mb()
    index.search_arrays(images, k=10)
    out["after_a_second_batch_as_arrays"] = rss_mb()
    return {
        key: round(value, 1) if isinstance(value, float) else value for key, value in out.items()
    }


def memory(index_dir: str, settings: list[int | None]) -> list[dict[str, Any]]:
    results = []
    for threads in settings:
        probe = [sys.executable, __file__, "--index-dir", index_dir, "--memory-probe"]
        probe += [str(threads or 0)]
        done = subprocess.run(probe, check=True, capture_output=True, text=True)
        results.append(json.loads(done.stdout))
    return results


def stages_in_turn(index: SearchIndex, images: np.ndarray) -> None:
    """The batch one stage after another, each on every core (how batches ran before chunks
    overlapped them): embed all, search all (FAISS's threads), then make all the Hits."""
    version = index._version
    vectors = index.embed_pixels(preprocess_array(images))
    scores, rows = index._search(version, vectors, 10, NO_FILTER, index.threads)
    index._hit_lists(version, scores, rows)


def stage_cpu(index: SearchIndex, images: np.ndarray) -> dict[str, float]:
    """CPU seconds of each stage of a batch, summed over its chunks (each on one thread), the
    chunks in the batch's order; ``search_grouped``: the search again as query_batch runs it,
    the queries grouped by where they lead in the catalog first (grouping included)."""
    version = index._version
    spent = dict.fromkeys(("preprocess", "encode", "normalize", "search", "hits"), 0.0)
    clock = time.thread_time
    start = clock()
    pixels = preprocess_array(images)
    spent["preprocess"] = clock() - start
    for begin in range(0, len(pixels), 128):
        chunk = pixels[begin : begin + 128]
        marks = [clock()]
        codes = index.encoder.encode(chunk, threads=1)
        marks.append(clock())
        vectors = normalize(codes)
        marks.append(clock())
        scores, rows = index._search(version, vectors, 10, NO_FILTER, 1)
        marks.append(clock())
        index._hit_lists(version, scores, rows)
        marks.append(clock())
        names = ("encode", "normalize", "search", "hits")
        for name, a, b in zip(names, marks, marks[1:], strict=False):
            spent[name] += b - a
    vectors = index.embed_pixels(pixels)
    start = clock()
    order = by_locality(version, vectors)
    for begin in range(0, len(order), 128):
        index._search(version, vectors[order[begin : begin + 128]], 10, NO_FILTER, 1)
    spent["search_grouped"] = clock() - start
    return {name: round(value, 3) for name, value in spent.items()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--index-dir", default=os.environ.get("SIMSEARCH_INDEX_DIR", "indexes/fashion-mnist")
    )
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--queries", type=int, default=1000, help="single queries timed")
    parser.add_argument("--memory-probe", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_probe is not None:
        print(json.dumps(memory_probe(args.index_dir, args.memory_probe or None)))
        return

    load_at_start = os.getloadavg()[0]
    index = SearchIndex.load(args.index_dir)
    test = load_split("test")
    cores = index.threads
    simsearch = str(Path(sys.executable).with_name("simsearch"))

    with tempfile.TemporaryDirectory() as tmp:
        pngs = []
        for i in range(args.queries):
            path = Path(tmp) / f"q{i:05d}.png"
            Image.fromarray(test.images[i]).save(path)
            pngs.append(str(path))
        help_times = wall([simsearch, "--help"], args.runs)
        cold_times = wall([simsearch, "query", pngs[0], "--index-dir", args.index_dir], args.runs)

        # Warm library: one query per call, each a different PNG file; the stages of the same
        # work timed separately.
        index.query(pngs[0], k=10)
        warm = []
        stages: dict[str, list[float]] = {n: [] for n in ("decode_preprocess", "encode", "search")}
        stages["hits"] = []
        version = index._version
        for path in pngs:
            start = time.perf_counter()
            index.query(path, k=10)
            warm.append(time.perf_counter() - start)
            marks = [time.perf_counter()]
            pixels = preprocess(path)[None]
            marks.append(time.perf_counter())
            vector = normalize(index.encoder.encode(pixels))
            marks.append(time.perf_counter())
            scores, rows = index.search(vector, 10)
            marks.append(time.perf_counter())
            index._hit_lists(version, scores, rows)
            marks.append(time.perf_counter())
            for name, a, b in zip(stages, marks, marks[1:], strict=False):
                stages[name].append(b - a)

    # The bare FAISS call for one vector on one thread, as the library makes it.
    import faiss

    vectors = index.embed_pixels(test.images[: args.queries])
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    bare = []
    for row in range(len(vectors)):
        one = vectors[row : row + 1]
        start = time.perf_counter()
        index.faiss_index.search(one, 10)
        bare.append(time.perf_counter() - start)
    faiss.omp_set_num_threads(threads)

    # Batches: the variants take turns in each run.
    images = test.images
    catalog = np.asarray(index.images)

    def on(threads: int, call: Callable[[], object]) -> Callable[[], object]:
        def run() -> object:
            index.threads = threads
            try:
                return call()
            finally:
                index.threads = cores

        return run

    variants: dict[str, Callable[[], object]] = {
        "query_batch": lambda: index.query_batch(images, k=10),
        "search_arrays": lambda: index.search_arrays(images, k=10),
        "query_batch_one_thread": on(1, lambda: index.query_batch(images, k=10)),
        "search_arrays_one_thread": on(1, lambda: index.search_arrays(images, k=10)),
        "query_batch_stages_in_turn": lambda: stages_in_turn(index, images),
        "embed_catalog": lambda: index.embed_pixels(catalog),
    }
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    cpu: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.runs):
        for name, call in variants.items():
            c0, w0 = cpu_s(), time.perf_counter()
            call()
            seconds[name].append(time.perf_counter() - w0)
            cpu[name].append(cpu_s() - c0)
    batch = {}
    for name in variants:
        n = len(catalog) if name == "embed_catalog" else len(images)
        median = statistics.median(seconds[name])
        batch[name] = {
            "per_s": round(n / median),
            "wall_s": round(median, 3),
            "cpu_s": round(statistics.median(cpu[name]), 3),
            "runs_s": [round(t, 3) for t in seconds[name]],
        }

    warm_p50, bare_p50 = ms(warm, 50), ms(bare, 50)
    print(
        json.dumps(
            {
                "machine": {
                    "cpus": os.cpu_count(),
                    "cores_used": cores,
                    "platform": platform.platform(),
                    "python": platform.python_version(),
                },
                "load_average_1min_start": round(load_at_start, 2),
                "index": {
                    "dir": str(args.index_dir),
                    "count": len(index),
                    "dim": index.dim,
                    "model": index.manifest["model"].get("model"),
                    "type": index.manifest["index"]["type"],
                    "params": index.manifest["index"].get("params"),
                },
                "cli_help_s": round(statistics.median(help_times), 3),
                "cold_cli_query_s": round(statistics.median(cold_times), 3),
                "warm_query_ms": {
                    "p50": warm_p50,
                    "p99": ms(warm, 99),
                    "bare_faiss_search_p50": bare_p50,
                    "stages_p50": {name: ms(v, 50) for name, v in stages.items()},
                },
                "batch_of_10000": batch,
                "batch_stage_cpu_s": stage_cpu(index, images),
                "memory_rss_mb": memory(args.index_dir, [None, 1]),
                "load_average_1min_end": round(os.getloadavg()[0], 2),
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()

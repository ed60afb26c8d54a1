"""What a filter costs: one query per call with labels/id_prefix filters of several
selectivities, next to the unfiltered query, on the same index in one run.

    python scripts/bench_filters.py [--index-dir indexes/fashion-mnist] [--queries 1000]

Each filter is timed twice: as shipped (exact search over the selected rows when at most
``EXACT_UP_TO`` pass, else a FAISS selector inside the index search) and forced through the
FAISS selector, so the cut-off can be judged. Recall@10 is against exact search over the same
selected rows. Prints one JSON object; timings are medians of per-query wall times.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from datetime import UTC, datetime
from typing import Any

import numpy as np

from simsearch import SearchIndex, search_index
from simsearch.data import load_split

K = 10


def timed(index: SearchIndex, vectors: np.ndarray, filters: dict[str, Any]) -> dict[str, float]:
    times, rows = [], []
    for vector in vectors:
        start = time.perf_counter()
        _, found = index.search(vector[None], K, **filters)
        times.append(time.perf_counter() - start)
        rows.append(found[0])
    return {
        "p50_ms": round(1000 * statistics.median(times), 4),
        "p99_ms": round(1000 * float(np.percentile(times, 99)), 4),
        "rows": rows,  # type: ignore[dict-item]  # removed before printing
    }


def recall(found: list[np.ndarray], truth: np.ndarray) -> float:
    return round(
        float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth, strict=True)])),
        4,
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--index-dir", default=os.environ.get("SIMSEARCH_INDEX_DIR", "indexes/fashion-mnist")
    )
    parser.add_argument("--queries", type=int, default=1000)
    args = parser.parse_args()

    index = SearchIndex.load(args.index_dir)
    vectors = index.embed_pixels(load_split("test").images[: args.queries])
    ids = index.ids.astype(str)
    filters = {
        "none": {},
        "one class (label Sneaker)": {"labels": ["Sneaker"]},
        "id_prefix fashion-mnist/train/0": {"id_prefix": "fashion-mnist/train/0"},
        "id_prefix fashion-mnist/train/00": {"id_prefix": "fashion-mnist/train/00"},
        "id_prefix fashion-mnist/train/000": {"id_prefix": "fashion-mnist/train/000"},
    }
    timed(index, vectors[:50], {})  # warm up
    results = {}
    for name, where in filters.items():
        mask = np.ones(len(index), bool)
        if "labels" in where:
            mask &= index.labels == index.label_names.index(where["labels"][0])
        if "id_prefix" in where:
            mask &= np.char.startswith(ids, where["id_prefix"])
        selected = np.flatnonzero(mask)
        sims = vectors @ index.vectors[selected].T
        truth = selected[np.argsort(-sims, axis=1)[:, :K]]
        shipped = timed(index, vectors, where)
        entry = {
            "selected": int(mask.sum()),
            "selectivity": round(float(mask.mean()), 5),
            "path": "exact over the selected rows"
            if where and mask.sum() <= search_index.EXACT_UP_TO
            else "index search" + (" with a FAISS selector" if where else ""),
            "p50_ms": shipped["p50_ms"],
            "p99_ms": shipped["p99_ms"],
            "recall@10": recall(shipped["rows"], truth),  # type: ignore[arg-type]
        }
        if where:
            cutoff, search_index.EXACT_UP_TO = search_index.EXACT_UP_TO, 0
            try:
                forced = timed(index, vectors, where)
            finally:
                search_index.EXACT_UP_TO = cutoff
            entry["faiss_selector"] = {
                "p50_ms": forced["p50_ms"],
                "p99_ms": forced["p99_ms"],
                "recall@10": recall(forced["rows"], truth),  # type: ignore[arg-type]
            }
        results[name] = entry
    print(
        json.dumps(
            {
                "date": datetime.now(UTC).date().isoformat(),
                "machine": {
                    "cpus": os.cpu_count(),
                    "platform": platform.platform(),
                    "load_average": [round(x, 2) for x in os.getloadavg()],
                },
                "index": {
                    "dir": str(args.index_dir),
                    "count": len(index),
                    "type": index.manifest["index"]["type"],
                    "params": index.manifest["index"].get("params"),
                },
                "queries": len(vectors),
                "k": K,
                "exact_up_to": search_index.EXACT_UP_TO,
                "results": results,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()

"""Scale benchmark: simsearch's index types on a million vectors, the library's search call
measured side by side with the bare FAISS call in the same process.

    python scripts/bench_scale.py [--sizes 1000000] [--types hnsw,ivf-fastscan]
        [--index-dir indexes/fashion-mnist] [--queries 1000] [--reuse DIR] [--out FILE]

Prints one JSON object on stdout (progress on stderr); with ``--out`` the same object is also
rewritten after every index type, ``"partial": true`` until the run ends.

Data. N catalog vectors made from the REAL embeddings of an existing index (its ``vectors``,
e.g. the 60,000 Fashion-MNIST training items): each is a uniformly drawn real embedding plus
isotropic Gaussian noise whose norm is ``--noise`` times the median nearest-neighbour distance
of the real catalog, re-normalised (seeded, float32). Two query sets, both the index's
embeddings of Fashion-MNIST TEST images (not in the catalog): ``plain`` as they are, and
``perturbed`` with the same noise as the catalog (harder: a query then sits as far from its
source as the catalog copies do, so the same recall needs a wider search).

Measured per size, index type and search setting: recall@10 against exact inner-product search,
and single-thread speed with ONE (1, d) query per call for three calls on the same index object,
taking turns call by call so that the machine's load falls on all alike:
``bare`` (FAISS's own ``index.search``; for ``ivf-fastscan``, FAISS's ``IndexRefineFlat`` over the
same codes with the same k_factor), ``vector_index`` (``VectorIndex.search``, what a
``SearchIndex`` calls) and ``search_index`` (``SearchIndex.search``: argument checks, filters,
completion of short rows included). Queries/s = 1 / median call latency (robust to preemption on
a shared machine); ``ratio`` = median latency / bare median latency. Plus build time, and bytes per
vector of the serialised FAISS index (the catalog's float32 vectors, 4 d bytes per item, are held
by every simsearch index besides).
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from simsearch import SearchIndex, vector_index
from simsearch.errors import SimsearchError
from simsearch.search_index import default_index_dir
from simsearch.vector_index import VectorIndex

K = 10
TARGET_RECALL = 0.95
CHUNK = 1_000_000
SEED = 20240601
STARTED = time.perf_counter()
TYPES = ("flat", "hnsw", "ivf", "ivf-fastscan")


def log(message: str) -> None:
    print(f"[{time.perf_counter() - STARTED:8.1f}s] {message}", file=sys.stderr, flush=True)


def int_list(text: str) -> list[int]:
    return [int(float(part)) for part in text.split(",") if part.strip()]


def machine() -> dict[str, Any]:
    import faiss

    cpu = platform.processor() or ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cpus": os.cpu_count(),
        "cpu": cpu,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "faiss": faiss.__version__,
        "faiss_compile": faiss.get_compile_options().strip(),
    }


def serialized_bytes(index: Any) -> int:
    """Size of ``faiss.write_index(index)``, counted without storing it."""
    import faiss

    total = 0

    def count(chunk: bytes) -> int:
        nonlocal total
        total += len(chunk)
        return len(chunk)

    faiss.write_index(index, faiss.PyCallbackIOWriter(count))  # type: ignore[attr-defined]
    return total


def perturb(rows: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """``rows`` (n, d) + N(0, sigma^2 I_d) noise, re-normalised: a new float32 array."""
    import faiss

    noisy = rng.standard_normal(rows.shape, dtype=np.float32)
    noisy *= np.float32(sigma)
    noisy += rows
    faiss.normalize_L2(noisy)
    return noisy


def generate(seeds: np.ndarray, n: int, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """n perturbed copies of uniformly drawn ``seeds`` rows: (n, d) float32, in chunks."""
    out = np.empty((n, seeds.shape[1]), np.float32)
    for start in range(0, n, CHUNK):
        stop = min(n, start + CHUNK)
        out[start:stop] = perturb(seeds[rng.integers(0, len(seeds), stop - start)], sigma, rng)
    return out


def exact_top_k(data: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    import faiss

    flat = faiss.IndexFlatIP(data.shape[1])
    flat.add(data)
    return flat.search(queries, k)


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    hits = sum(len(np.intersect1d(f[f >= 0], t)) for f, t in zip(found, truth, strict=True))
    return hits / truth.size


def side_by_side(calls: dict[str, Any], queries: np.ndarray, rounds: int) -> dict[str, Any]:
    """Every call timed, one (1, d) query each, the variants taking turns call by call (the
    order rotating, each on a different query at a time, so that none inherits a cache the
    previous one warmed): the load of the machine falls on all alike. Returns per variant
    queries/s (1 / median latency), p50/p99 latency in ms and the ratio of its median latency
    to the first variant's."""
    singles = [np.ascontiguousarray(queries[i : i + 1]) for i in range(len(queries))]
    named = list(calls.items())
    latencies: dict[str, list[float]] = {name: [] for name in calls}
    clock = time.perf_counter
    n, v = len(singles), len(named)
    for _, call in named:  # warm-up
        for one in singles[:20]:
            call(one)
    for _ in range(rounds):
        for i in range(n):
            for j in range(v):
                slot = (i + j) % v  # who goes first rotates
                name, call = named[slot]
                one = singles[(i + slot * n // v) % n]
                start = clock()
                call(one)
                latencies[name].append(clock() - start)
    first = statistics.median(latencies[named[0][0]])
    out: dict[str, Any] = {}
    for name, times in latencies.items():
        p50, p99 = np.percentile(times, [50, 99])
        out[name] = {
            "qps": round(1 / float(p50)),
            "latency_ms_p50": round(1000 * float(p50), 4),
            "latency_ms_p99": round(1000 * float(p99), 4),
            "ratio": round(float(p50) / first, 3),
        }
    return out


def settings(kind: str, args: argparse.Namespace) -> list[dict[str, int]]:
    if kind == "hnsw":
        return [{"efSearch": ef} for ef in args.ef_search]
    if kind == "ivf":
        return [{"nprobe": p} for p in args.nprobe]
    if kind == "ivf-fastscan":
        return [{"nprobe": p, "refine": r} for p in args.fastscan_nprobe for r in args.refine]
    return [{}]


def build_or_reuse(
    kind: str, data: np.ndarray, params: dict[str, Any], reuse: Path | None
) -> tuple[Any, dict[str, Any]]:
    """The FAISS index ``vector_index.build`` makes for ``kind``; with ``reuse``, read from (or
    saved to) a file named by kind, size, parameters and data seed."""
    import faiss

    name = f"{kind}-{len(data)}-{SEED}-" + "-".join(f"{k}{v}" for k, v in sorted(params.items()))
    path = reuse / f"{name}.faiss" if reuse else None
    if path is not None and path.exists():
        log(f"  {kind}: reusing {path}")
        return faiss.read_index(str(path)), {"reused": str(path)}
    load = os.getloadavg()[0]
    start = time.perf_counter()
    index = vector_index.build(data, kind, params)
    built = {"build_s": round(time.perf_counter() - start, 1), "build_loadavg_1min": load}
    log(f"  {kind}: built in {built['build_s']} s")
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        faiss.write_index(index, str(path))
    return index, built


def library_index(source: SearchIndex, data: np.ndarray, searcher: VectorIndex) -> SearchIndex:
    """A SearchIndex over ``data`` (ids "item/N", no labels or images) searching with
    ``searcher``: the object a pipeline queries with vectors."""
    n = len(data)
    manifest = {**source.manifest, "count": n, "index": {"type": searcher.kind}}
    return SearchIndex(
        encoder=source.encoder,
        encoder_file=source.encoder_file,
        vectors=data,
        ids=np.char.add("item/", np.arange(n).astype(str)),
        labels=np.full(n, -1, np.int16),
        sources=np.full(n, "", dtype="<U1"),
        images=None,
        manifest=manifest,
        searcher=searcher,
    )


def bench_type(
    kind: str,
    data: np.ndarray,
    query_sets: dict[str, tuple[np.ndarray, np.ndarray]],
    source: SearchIndex,
    args: argparse.Namespace,
) -> dict[str, Any]:
    import faiss

    n, d = data.shape
    params = vector_index.default_params(kind, n)
    if args.pq_m and kind == "ivf-fastscan":
        params["pq_m"] = args.pq_m
    faiss.omp_set_num_threads(args.threads_build)
    index, built = build_or_reuse(kind, data, params, args.reuse)
    size = serialized_bytes(index)
    result: dict[str, Any] = {
        "faiss_class": type(index).__name__,
        "params": params,
        **built,
        "bytes_per_vector_faiss": round(size / n, 1),
        "catalog_vectors_bytes_per_vector": 4 * d,
        "settings": [],
    }
    refined = None
    if kind == "ivf-fastscan":  # FAISS's own re-ranking: a flat copy of the vectors
        refined = faiss.IndexRefineFlat(index, faiss.swig_ptr(data))
    faiss.omp_set_num_threads(1)
    for setting in settings(kind, args):
        if "efSearch" in setting:
            index.hnsw.efSearch = setting["efSearch"]
        if "nprobe" in setting:
            index.nprobe = min(setting["nprobe"], index.nlist)
        searcher = VectorIndex(index, kind, {**params, **setting})
        library = library_index(source, data, searcher)
        bare_params = None
        if refined is not None:
            bare_params = faiss.IndexRefineSearchParameters(k_factor=setting["refine"])

        def bare(q: np.ndarray, p: Any = bare_params, i: Any = index, r: Any = refined) -> Any:
            return r.search(q, K, params=p) if r is not None else i.search(q, K)

        def through_vector_index(q: np.ndarray, s: VectorIndex = searcher) -> Any:
            return s.search(q, K, catalog=data)

        def through_search_index(q: np.ndarray, lib: SearchIndex = library) -> Any:
            return lib.search(q, K)

        entry: dict[str, Any] = {**setting}
        for set_name, (queries, truth) in query_sets.items():
            _, found = library.search(queries, K)
            _, bare_found = bare(queries)
            timed = side_by_side(
                {
                    "bare": bare,
                    "vector_index": through_vector_index,
                    "search_index": through_search_index,
                },
                # exact search of 1M vectors takes ~30 ms a query: time fewer
                queries[: args.qps_queries if kind != "flat" else max(1, args.qps_queries // 20)],
                args.rounds,
            )
            entry[set_name] = {
                "recall@10": round(recall_at_k(found, truth), 4),
                "recall@10_bare": round(recall_at_k(bare_found, truth), 4),
                **timed,
                "loadavg_1min": round(os.getloadavg()[0], 2),
            }
        log(f"  {kind} {json.dumps(entry)}")
        result["settings"].append(entry)
        library.close()
    for set_name in query_sets:
        meeting = [s for s in result["settings"] if s[set_name]["recall@10"] >= TARGET_RECALL]
        if meeting:
            best = max(meeting, key=lambda s: s[set_name]["vector_index"]["qps"])
            result.setdefault("fastest_at_target_recall", {})[set_name] = {
                key: value for key, value in best.items() if key in ("efSearch", "nprobe", "refine")
            } | {"recall@10": best[set_name]["recall@10"], "qps": best[set_name]["vector_index"]}
    del index, refined
    gc.collect()
    return result


def write_out(path: str | None, payload: dict[str, Any]) -> None:
    if path:
        tmp = Path(path).with_suffix(".tmp")
        tmp.write_text(json.dumps(payload, indent=1))
        os.replace(tmp, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int_list, default=int_list("1000000"))
    parser.add_argument("--index-dir", default=str(default_index_dir()))
    parser.add_argument("--types", default="hnsw,ivf-fastscan")
    parser.add_argument("--queries", type=int, default=1000, help="for recall")
    parser.add_argument("--qps-queries", type=int, default=1000, help="timed, per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads-build", type=int, default=2)
    parser.add_argument("--ef-search", type=int_list, default=int_list("16,24,32,64"))
    parser.add_argument("--nprobe", type=int_list, default=int_list("8,16,32"))
    parser.add_argument("--fastscan-nprobe", type=int_list, default=int_list("8,16"))
    parser.add_argument("--refine", type=int_list, default=int_list("16,32"))
    parser.add_argument("--pq-m", type=int, default=0, help="ivf-fastscan sub-quantizers (0: d/2)")
    parser.add_argument("--noise", type=float, default=1.0, help="noise norm / median NN distance")
    parser.add_argument("--reuse", type=Path, default=None, help="keep built indexes here")
    parser.add_argument("--out", default=None, help="also write the JSON here (updated live)")
    args = parser.parse_args()
    kinds = [t.strip() for t in args.types.split(",") if t.strip()]
    for kind in kinds:
        if kind not in TYPES:
            parser.error(f"unknown index type {kind!r}; choose from {', '.join(TYPES)}")

    import faiss

    try:
        source = SearchIndex.load(args.index_dir)
        from simsearch.data import load_split

        test_images = load_split("test").images
    except SimsearchError as exc:
        sys.exit(f"error: {exc}")
    seeds = np.ascontiguousarray(source.vectors, dtype=np.float32)
    d = seeds.shape[1]
    rng = np.random.default_rng(SEED)
    faiss.omp_set_num_threads(args.threads_build)
    sample = seeds[rng.choice(len(seeds), min(5000, len(seeds)), replace=False)]
    nearest, _ = exact_top_k(seeds, sample, 2)
    median_nn_cosine = float(np.median(1.0 - nearest[:, 1]))
    sigma = args.noise * math.sqrt(2 * median_nn_cosine) / math.sqrt(d)
    query_rng = np.random.default_rng(SEED + 2)
    test_vectors = source.embed_pixels(test_images)
    picks = query_rng.choice(len(test_vectors), args.queries, replace=False)
    queries = {
        "plain": np.ascontiguousarray(test_vectors[picks]),
        "perturbed": perturb(test_vectors[picks], sigma, query_rng),
    }
    payload: dict[str, Any] = {
        "partial": True,
        "machine": machine(),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "loadavg_1min_at_start": round(os.getloadavg()[0], 2),
        "data": {
            "source_index": str(args.index_dir),
            "seeds": len(seeds),
            "dim": d,
            "sigma_per_component": round(sigma, 6),
            "noise_norm": f"{args.noise} x the median nearest-neighbour L2 distance of the "
            "real catalog",
            "queries": f"{args.queries} Fashion-MNIST test embeddings: plain, and perturbed",
        },
        "protocol": {
            "k": K,
            "speed": "one thread, one (1, d) query per call; bare / vector_index / search_index "
            f"take turns call by call, {args.rounds} rounds of {args.qps_queries} queries each; "
            "qps = 1 / median latency",
        },
        "sizes": {},
    }
    for n in args.sizes:
        log(f"size {n:,}: generating")
        data = generate(seeds, n, sigma, np.random.default_rng(SEED + 10 + n))
        faiss.omp_set_num_threads(args.threads_build)
        query_sets = {name: (q, exact_top_k(data, q, K)[1]) for name, q in queries.items()}
        entry: dict[str, Any] = {"types": {}}
        payload["sizes"][str(n)] = entry
        for kind in kinds:
            log(f"size {n:,}: {kind}")
            entry["types"][kind] = bench_type(kind, data, query_sets, source, args)
            write_out(args.out, payload)
        del data
        gc.collect()
    payload["partial"] = False
    payload["elapsed_s"] = round(time.perf_counter() - STARTED, 1)
    write_out(args.out, payload)
    print(json.dumps(payload, indent=1))


if __name__ == "__main__":
    main()

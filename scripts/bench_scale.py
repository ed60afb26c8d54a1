"""Scale benchmark: the FAISS index types simsearch offers, on 1 million and 10 million vectors.

    python scripts/bench_scale.py [--sizes 1000000,10000000] [--index-dir indexes/fashion-mnist]
        [--queries 1000] [--types flat,hnsw,ivf,ivfpq] [--threads-build 2]
        [--out /tmp/bench_scale.json]

Prints one JSON object on stdout (progress goes to stderr). With ``--out`` the same object is
also rewritten after every index type, marked ``"partial": true`` until the run ends, so a long
run can be read while it goes.

Data. Catalogs of N vectors are made from the REAL embeddings of an existing index (its
``vectors``, e.g. the 60,000 Fashion-MNIST training items): each generated vector is a randomly
chosen real embedding plus isotropic Gaussian noise, re-normalised. The noise scale is set
relative to the typical nearest-neighbour distance of the real catalog (``--noise`` times the
median nearest-neighbour L2 distance, spread over the d components), so a copy moves about as far
from its source as real items are from each other. Queries are the index's embeddings of the
Fashion-MNIST TEST split (not in the catalog), perturbed the same way; when the test split
cannot be read, fresh perturbations of catalog embeddings are used instead (the JSON says which).
Everything is float32 and generated in chunks from seeded numpy Generators.

Measures, per size and index type (built with ``simsearch.vector_index.build``, i.e. exactly as
the product builds them, with ``default_params`` for the size): build time on
``--threads-build`` threads, memory per vector (serialised FAISS index size / N, and the RSS
growth of this process during the build / N), recall@10 against exact inner-product search
(a separate ``faiss.IndexFlatIP``), and single-thread queries per second through
``simsearch.vector_index.search`` with ONE (1, d) query per call (the encoder excluded), for a
sweep of the search parameter (HNSW efSearch, IVF nprobe). Each QPS figure is the median of 3
timed runs of ``--qps-seconds`` each; next to it, queries per CPU-second of the searching thread,
which is what the figure would be on an otherwise idle core (the machine is shared).
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import re
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from simsearch import SearchIndex, vector_index
from simsearch.errors import SimsearchError
from simsearch.search_index import default_index_dir

K = 10
TARGET_RECALL = 0.95
TARGET_QPS = 5000.0
CHUNK = 1_000_000
SEED = 20240601
STARTED = time.perf_counter()


def log(message: str) -> None:
    print(f"[{time.perf_counter() - STARTED:8.1f}s] {message}", file=sys.stderr, flush=True)


def int_list(text: str) -> list[int]:
    return [int(float(part)) for part in text.split(",") if part.strip()]


def rss_bytes() -> int:
    """Resident set size of this process now (Linux /proc)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def serialized_bytes(index: Any) -> int:
    """Size of ``faiss.write_index(index)`` counted through a callback, without storing it."""
    import faiss

    total = 0

    def count(chunk: bytes) -> int:
        nonlocal total
        total += len(chunk)
        return len(chunk)

    faiss.write_index(index, faiss.PyCallbackIOWriter(count))  # type: ignore[attr-defined]
    return total


def machine() -> dict[str, Any]:
    import faiss

    mem_total = None
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem_total = round(int(line.split()[1]) / 2**20, 1)
    cpu = platform.processor() or ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cpus": os.cpu_count(),
        "cpu": cpu,
        "mem_total_gib": mem_total,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "faiss": faiss.__version__,
        "faiss_compile": faiss.get_compile_options().strip(),
        "note": "2-core, 24 GiB, no GPU machine shared with other jobs: see loadavg",
    }


def unit_rows(x: np.ndarray) -> np.ndarray:
    import faiss

    faiss.normalize_L2(x)
    return x


def perturb(rows: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """``rows`` (n, d) float32 + N(0, sigma^2 I_d) noise, re-normalised; a new float32 array."""
    noisy = rng.standard_normal(rows.shape, dtype=np.float32)
    noisy *= np.float32(sigma)
    noisy += rows
    return unit_rows(noisy)


def generate(seeds: np.ndarray, n: int, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """n perturbed copies of uniformly drawn ``seeds`` rows: (n, d) float32, in chunks."""
    out = np.empty((n, seeds.shape[1]), np.float32)
    for start in range(0, n, CHUNK):
        stop = min(n, start + CHUNK)
        out[start:stop] = perturb(seeds[rng.integers(0, len(seeds), stop - start)], sigma, rng)
    return out


def nn_cosine_distances(base: np.ndarray, probes: np.ndarray, skip_self: bool) -> np.ndarray:
    """Cosine distance from each probe row to its nearest row of ``base`` (exact)."""
    import faiss

    flat = faiss.IndexFlatIP(base.shape[1])
    flat.add(base)
    scores, _ = flat.search(probes, 2 if skip_self else 1)
    return 1.0 - scores[:, 1 if skip_self else 0]


def pct(values: np.ndarray) -> dict[str, float]:
    p10, p50, p90 = np.percentile(values, [10, 50, 90])
    return {"p10": round(float(p10), 5), "p50": round(float(p50), 5), "p90": round(float(p90), 5)}


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    hits = sum(len(np.intersect1d(f[f >= 0], t)) for f, t in zip(found, truth, strict=True))
    return hits / truth.size


def measure_qps(index: Any, queries: np.ndarray, seconds: float, runs: int = 3) -> dict[str, Any]:
    """Single-thread QPS, one (1, d) query per call; median of ``runs`` runs of ``seconds``.

    Also times every call: on a shared machine most calls run undisturbed (a time slice is
    much longer than a query) while a few are preempted, so ``1 / median latency`` estimates
    the QPS of an otherwise idle core; the wall-clock run medians include the preemptions.
    """
    import faiss

    faiss.omp_set_num_threads(1)
    singles = [np.ascontiguousarray(queries[i : i + 1]) for i in range(len(queries))]
    for one in singles[: min(20, len(singles))]:  # warm-up
        vector_index.search(index, one, K)
    wall_qps, cpu_qps, counts = [], [], []
    latencies: list[float] = []
    position = 0
    load_before = os.getloadavg()[0]
    clock = time.perf_counter
    for _ in range(runs):
        done = 0
        cpu0 = time.thread_time()
        start = clock()
        while True:
            t0 = clock()
            vector_index.search(index, singles[position], K)
            t1 = clock()
            latencies.append(t1 - t0)
            position = (position + 1) % len(singles)
            done += 1
            if t1 - start >= seconds:
                break
        elapsed = clock() - start
        cpu = time.thread_time() - cpu0
        wall_qps.append(done / elapsed)
        cpu_qps.append(done / cpu if cpu > 0 else float("nan"))
        counts.append(done)
    p50, p99 = np.percentile(latencies, [50, 99])
    return {
        "qps": round(statistics.median(wall_qps), 1),
        "qps_runs": [round(q, 1) for q in wall_qps],
        "qps_from_p50_latency": round(1 / float(p50), 1),
        "qps_per_cpu_second": round(statistics.median(cpu_qps), 1),
        "latency_ms_p50": round(1000 * float(p50), 4),
        "latency_ms_p99": round(1000 * float(p99), 4),
        "queries_timed": counts,
        "loadavg_1min": round(load_before, 2),
    }


KIND = re.compile(r"^(flat|hnsw|ivf|ivfpq)(\d*)$")


def product_params(kind: str, n: int, d: int, args: argparse.Namespace) -> tuple[str, dict]:
    """(vector_index type, params) the way the product builds this kind of index.

    Kinds: flat, hnsw, ivf (IVF-Flat), ivfpq (IVF-PQ with ``--pq-m`` or d/2 sub-quantizers),
    ivfpqM (IVF-PQ with M sub-quantizers, e.g. ivfpq32).
    """
    match = KIND.match(kind)
    if match is None:
        raise ValueError(kind)
    family, digits = match.groups()
    if family == "ivfpq":
        params = vector_index.default_params("ivf", n)
        params["pq_m"] = int(digits) if digits else args.pq_m or max(1, d // 2)
        return "ivf", params
    if family == "ivf":
        params = vector_index.default_params("ivf", n)
        params["pq_m"] = 0
        return "ivf", params
    return family, vector_index.default_params(family, n)


def set_search_param(index_type: str, index: Any, value: int) -> None:
    if index_type == "hnsw":
        index.hnsw.efSearch = int(value)
    elif index_type == "ivf":
        index.nprobe = int(value)


def build_ivf_shared(
    data: np.ndarray, params: dict[str, Any], coarse: dict[str, Any], phases: dict[str, Any]
) -> Any:
    """IVF-Flat / IVF-PQ exactly as ``vector_index.build`` makes them, timing each phase, with
    the coarse quantizer trained once per catalog and shared by the IVF variants.

    The IVF-Flat and IVF-PQ indexes of ``vector_index.build`` run the same coarse k-means
    (same data, same FAISS defaults and seed), so training it once and cloning it gives the same
    centroids and saves the costliest step of the benchmark (minutes to hours at 10 million on
    a shared 2-core machine). ``phases`` receives coarse_train_s (measured once),
    coarse_shared, other_train_s (PQ codebooks) and add_s.
    """
    import faiss

    n, d = data.shape
    nlist = int(min(params["nlist"], max(1, n // 39)))  # as vector_index.build
    m = int(params.get("pq_m") or 0)
    if coarse.get("nlist") != nlist:
        flat_ivf = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
        start = time.perf_counter()
        flat_ivf.train(data)
        coarse.clear()
        coarse.update(
            nlist=nlist,
            train_s=time.perf_counter() - start,
            quantizer=faiss.clone_index(flat_ivf.quantizer),
        )
        phases["coarse_shared"] = False
        index: Any = flat_ivf if not m else None
    else:
        phases["coarse_shared"] = True
        index = None
    phases["coarse_train_s"] = round(coarse["train_s"], 2)
    start = time.perf_counter()
    if index is None:
        quantizer = faiss.clone_index(coarse["quantizer"])
        if m:
            if d % m:
                raise ValueError(f"pq_m={m} must divide the embedding dimension {d}")
            index = faiss.IndexIVFPQ(quantizer, d, nlist, m, 8, faiss.METRIC_INNER_PRODUCT)
        else:
            index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
        index.train(data)  # the quantizer is trained: only the PQ codebooks are
    phases["other_train_s"] = round(time.perf_counter() - start, 2)
    start = time.perf_counter()
    index.add(data)
    phases["add_s"] = round(time.perf_counter() - start, 2)
    index.nprobe = int(min(params["nprobe"], nlist))
    return index


def bench_type(
    kind: str,
    data: np.ndarray,
    queries: np.ndarray,
    truth: np.ndarray,
    args: argparse.Namespace,
    coarse: dict[str, Any],
) -> dict[str, Any]:
    """Build one index kind and measure it. ``coarse`` caches a trained IVF coarse quantizer."""
    import faiss

    n, d = data.shape
    index_type, params = product_params(kind, n, d, args)
    faiss.omp_set_num_threads(args.threads_build)
    gc.collect()
    rss0 = rss_bytes()
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    load = os.getloadavg()[0]
    start = time.perf_counter()
    phases: dict[str, Any] = {}
    if index_type == "ivf" and args.share_coarse:
        index = build_ivf_shared(data, params, coarse, phases)
    else:
        index = vector_index.build(data, index_type, params)
    build_s = time.perf_counter() - start
    if phases.get("coarse_shared"):
        build_s += phases["coarse_train_s"]  # the shared coarse training counts for each
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    rss1 = rss_bytes()
    size = serialized_bytes(index)
    build_cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    log(f"  {kind}: built in {build_s:.1f}s ({size / n:.1f} B/vector serialised)")
    result: dict[str, Any] = {
        "faiss_class": type(index).__name__,
        "build_params": params,
        "build_s": round(build_s, 2),
        "build_cpu_s": round(build_cpu, 2),
        "build_threads": args.threads_build,
        "build_loadavg_1min": round(load, 2),
        **({"build_phases": phases} if phases else {}),
        "bytes_per_vector_serialised": round(size / n, 2),
        "bytes_per_vector_rss_delta": round((rss1 - rss0) / n, 2),
        "raw_float32_bytes_per_vector": 4 * d,
    }
    if index_type == "ivf":
        result["nlist"] = int(index.nlist)

    param_name = {"hnsw": "efSearch", "ivf": "nprobe"}.get(index_type)
    if index_type == "hnsw":
        values = sorted(set(args.ef_search))
    elif index_type == "ivf":
        values = sorted({min(p, int(index.nlist)) for p in args.nprobe})
    else:
        values = [0]
    sweep: list[dict[str, Any]] = []
    tried: set[int] = set()
    extensions = 0
    while values:
        value = values.pop(0)
        if value in tried:
            continue
        tried.add(value)
        set_search_param(index_type, index, value)
        faiss.omp_set_num_threads(args.threads_build)
        # Flat is exact (the same search as the ground truth): check its recall on the QPS
        # subset only, which at 10 million saves a full pass of brute force.
        used = len(queries) if param_name else min(len(queries), args.flat_qps_queries)
        _, found = index.search(queries[:used], K)
        recall = recall_at_k(found, truth[:used])
        timing = measure_qps(index, queries[:used], args.qps_seconds)
        entry = {param_name: value} if param_name else {"recall_queries": used}
        entry.update({"recall@10": round(recall, 4), **timing})
        sweep.append(entry)
        log(f"  {kind} {entry}")
        # Not there yet at the end of the sweep: try up to two doublings, so the JSON shows
        # the setting that does meet the recall target (when one exists), unless recall has
        # stopped growing (IVF-PQ: its quantisation error caps recall, not nprobe).
        limit = int(index.nlist) if index_type == "ivf" else 4096
        best = max(e["recall@10"] for e in sweep)
        growing = len(sweep) < 2 or sweep[-1]["recall@10"] - sweep[-2]["recall@10"] >= 0.002
        if (
            not values
            and param_name
            and best < TARGET_RECALL
            and growing
            and extensions < 2
            and value * 2 <= limit
        ):
            values.append(value * 2)
            extensions += 1
    result["sweep"] = sweep
    meeting = [e for e in sweep if e["recall@10"] >= TARGET_RECALL]
    # The cheapest setting (smallest efSearch/nprobe: search cost grows with it) that meets the
    # recall target; wall-clock QPS is too noisy on a shared machine to rank settings by.
    chosen = meeting[0] if meeting else max(sweep, key=lambda e: e["recall@10"])
    result["chosen"] = {
        "rule": f"smallest setting with recall@10 >= {TARGET_RECALL}"
        if meeting
        else f"no setting reached recall@10 {TARGET_RECALL}: the most accurate one",
        **chosen,
        "meets_recall_target": bool(meeting),
        "meets_1m_target": bool(meeting) and chosen["qps"] >= TARGET_QPS,
        "meets_1m_target_by_p50_latency": bool(meeting)
        and chosen["qps_from_p50_latency"] >= TARGET_QPS,
    }
    if param_name:
        default_value = params.get(param_name)
        result["default_param"] = {param_name: default_value}
        at_default = [e for e in sweep if e[param_name] == default_value]
        if at_default:
            result["default_param"].update(
                {"recall@10": at_default[0]["recall@10"], "qps": at_default[0]["qps"]}
            )
    del index
    gc.collect()
    return result


def write_out(path: str | None, payload: dict[str, Any]) -> None:
    if not path:
        return
    tmp = Path(path).with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, indent=1))
    os.replace(tmp, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int_list, default=int_list("1000000,10000000"))
    parser.add_argument("--index-dir", default=str(default_index_dir()))
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--types", default="flat,hnsw,ivf,ivfpq")
    parser.add_argument("--threads-build", type=int, default=2)
    parser.add_argument("--ef-search", type=int_list, default=int_list("16,32,64,128"))
    parser.add_argument("--nprobe", type=int_list, default=int_list("4,8,16,32,64"))
    parser.add_argument("--pq-m", type=int, default=0, help="IVF-PQ sub-quantizers (0: d/2)")
    parser.add_argument(
        "--noise", type=float, default=1.0, help="noise norm / median real NN L2 distance"
    )
    parser.add_argument("--qps-seconds", type=float, default=3.0)
    parser.add_argument("--flat-qps-queries", type=int, default=100)
    parser.add_argument(
        "--hnsw-max-build-s",
        type=float,
        default=3600.0,
        help="skip an HNSW build whose estimate (from the previous size) exceeds this",
    )
    parser.add_argument(
        "--mem-budget-gb", type=float, default=8.0, help="skip an index estimated above this"
    )
    parser.add_argument(
        "--no-share-coarse",
        dest="share_coarse",
        action="store_false",
        help="build every IVF variant with vector_index.build (coarse k-means trained each time)",
    )
    parser.add_argument("--note", default=None, help="free text recorded in the JSON")
    parser.add_argument("--out", default=None, help="also write the JSON here (updated live)")
    args = parser.parse_args()
    kinds = [t.strip() for t in args.types.split(",") if t.strip()]
    for kind in kinds:
        if not KIND.match(kind):
            parser.error(f"unknown index type {kind!r}; choose from flat, hnsw, ivf, ivfpq[M]")

    import faiss

    try:
        source = SearchIndex.load(args.index_dir)
    except SimsearchError as exc:
        sys.exit(
            f"error: {exc}\n(build one, e.g. `simsearch build-index --model pca --index-dir "
            "/tmp/scale-src -q`, and pass --index-dir)"
        )
    seeds = np.ascontiguousarray(source.vectors, dtype=np.float32)
    n_seeds, d = seeds.shape
    log(f"source index {args.index_dir}: {n_seeds} x {d}")
    rng = np.random.default_rng(SEED)
    faiss.omp_set_num_threads(args.threads_build)

    # Noise scale from the real catalog's nearest-neighbour distances.
    sample = seeds[rng.choice(n_seeds, min(5000, n_seeds), replace=False)]
    real_nn = nn_cosine_distances(seeds, sample, skip_self=True)
    nn_l2 = math.sqrt(2 * float(np.median(real_nn)))
    sigma = args.noise * nn_l2 / math.sqrt(d)
    moved = perturb(sample, sigma, np.random.default_rng(SEED + 1))
    copy_to_source = 1.0 - np.sum(moved * sample, axis=1)

    # Queries: the index's embeddings of the test split, perturbed the same way.
    query_rng = np.random.default_rng(SEED + 2)
    try:
        from simsearch.data import load_split

        test_vectors = source.embed_pixels(load_split("test").images).astype(np.float32)
        query_source = (
            f"embeddings of {args.queries} of the {len(test_vectors)} Fashion-MNIST test images "
            "(not in the catalog), each + the same Gaussian noise, re-normalised"
        )
    except SimsearchError as exc:
        log(f"test split unavailable ({exc}); queries are fresh perturbations of catalog seeds")
        test_vectors = seeds
        query_source = (
            "fresh perturbations (independent noise) of catalog embeddings; test split unavailable"
        )
    picks = query_rng.choice(
        len(test_vectors), args.queries, replace=args.queries > len(test_vectors)
    )
    queries = perturb(test_vectors[picks], sigma, query_rng)

    payload: dict[str, Any] = {
        "partial": True,
        "machine": machine(),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        **({"note": args.note} if args.note else {}),
        "source_index": {
            "dir": str(args.index_dir),
            "count": n_seeds,
            "dim": d,
            "model": source.manifest.get("model", {}).get("model"),
            "code_size": source.manifest.get("model", {}).get("code_size"),
        },
        "data": {
            "method": "real embeddings + small Gaussian perturbations: each catalog vector = a "
            "uniformly drawn real catalog embedding + N(0, sigma^2 I_d) noise, then L2 "
            "re-normalised (float32, chunked, numpy Generator PCG64)",
            "seed": SEED,
            "sigma_per_component": round(sigma, 6),
            "noise_norm_expected": round(sigma * math.sqrt(d), 5),
            "noise_rule": f"noise norm = {args.noise} x median nearest-neighbour L2 distance "
            "of the real catalog",
            "real_catalog_nn_cosine_distance": pct(real_nn),
            "real_catalog_nn_l2_distance_median": round(nn_l2, 5),
            "copy_to_source_cosine_distance": pct(copy_to_source),
            "queries": query_source,
            "query_count": args.queries,
            "ground_truth": "exact top-10 by inner product, faiss.IndexFlatIP, "
            f"{args.threads_build} threads, batches of 1000 queries",
        },
        "protocol": {
            "k": K,
            "recall": "recall@10 = |approximate top-10 ∩ exact top-10| / 10, mean over queries",
            "qps": "single thread (faiss.omp_set_num_threads(1)), one (1, d) query per call "
            "through simsearch.vector_index.search, encoder excluded; median of 3 runs of "
            f"{args.qps_seconds} s cycling through the queries (flat: the first "
            f"{args.flat_qps_queries}); every call also timed: qps_from_p50_latency = 1 / "
            "median call latency (robust to preemption by other processes on this shared "
            "machine: an estimate for an idle core); qps_per_cpu_second = queries / CPU time of "
            "the thread",
            "memory": "bytes_per_vector_serialised = len(faiss.write_index(index)) / N (exact "
            "in-memory payload: vectors/codes, ids, graph links); bytes_per_vector_rss_delta "
            "= growth of this process's RSS over the build / N (includes allocator slack)",
            "build": f"simsearch.vector_index.build(vectors, type, default_params(type, N)) on "
            f"{args.threads_build} build thread(s); wall seconds"
            + (
                "; IVF variants: the same FAISS calls as vector_index.build, with the coarse "
                "k-means trained once per size and cloned (identical centroids); each variant's "
                "build_s = that training time + its own training + add (see build_phases)"
                if args.share_coarse
                else ""
            ),
            "targets": {"1M": f"recall@10 >= {TARGET_RECALL} at >= {TARGET_QPS:.0f} QPS, 1 thread"},
        },
        "sizes": {},
    }

    hnsw_seconds_per_vector: tuple[int, float] | None = None
    hnsw_bytes_per_vector = 0.0
    for n in args.sizes:
        log(f"size {n:,}: generating {n:,} x {d} float32 ({n * d * 4 / 1e9:.2f} GB)")
        start = time.perf_counter()
        data = generate(seeds, n, sigma, np.random.default_rng(SEED + 10 + n))
        gen_s = time.perf_counter() - start

        log(f"size {n:,}: ground truth")
        start = time.perf_counter()
        faiss.omp_set_num_threads(args.threads_build)
        exact = faiss.IndexFlatIP(d)
        exact.add(data)
        truth_scores = np.empty((len(queries), K), np.float32)
        truth = np.empty((len(queries), K), np.int64)
        for b in range(0, len(queries), 1000):
            truth_scores[b : b + 1000], truth[b : b + 1000] = exact.search(queries[b : b + 1000], K)
        del exact
        gc.collect()
        gt_s = time.perf_counter() - start
        gen_nn = nn_cosine_distances(data, data[:200], skip_self=True)
        coarse: dict[str, Any] = {}
        size_entry: dict[str, Any] = {
            "loadavg_1min_at_start": round(os.getloadavg()[0], 2),
            "n": n,
            "generate_s": round(gen_s, 2),
            "ground_truth_s": round(gt_s, 2),
            "data_gb": round(n * d * 4 / 1e9, 3),
            "query_top1_cosine_distance": pct(1.0 - truth_scores[:, 0]),
            "query_top10_cosine_distance": pct(1.0 - truth_scores[:, -1]),
            "catalog_nn_cosine_distance": pct(gen_nn),
            "types": {},
        }
        payload["sizes"][str(n)] = size_entry
        write_out(args.out, payload)

        for kind in kinds:
            if kind == "hnsw" and hnsw_seconds_per_vector is not None:
                prev_n, prev = hnsw_seconds_per_vector
                # HNSW insertion costs ~ log N per vector.
                estimate_s = prev * n * math.log(n) / math.log(prev_n)
                estimate_gb = hnsw_bytes_per_vector * n / 1e9
                if estimate_s > args.hnsw_max_build_s or estimate_gb > args.mem_budget_gb:
                    reason = (
                        f"skipped: estimated build {estimate_s / 60:.0f} min on "
                        f"{args.threads_build} threads (from the {prev_n:,} build, scaled by "
                        f"N log N) > budget {args.hnsw_max_build_s / 60:.0f} min"
                        if estimate_s > args.hnsw_max_build_s
                        else f"skipped: estimated {estimate_gb:.1f} GB > budget"
                        f" {args.mem_budget_gb} GB"
                    )
                    size_entry["types"]["hnsw"] = {
                        "skipped": reason,
                        "estimated_build_s": round(estimate_s),
                        "estimated_bytes_per_vector": hnsw_bytes_per_vector,
                        "estimated_index_gb": round(estimate_gb, 2),
                    }
                    log(f"  hnsw {reason}")
                    write_out(args.out, payload)
                    continue
            log(f"size {n:,}: {kind}")
            result = bench_type(kind, data, queries, truth, args, coarse)
            size_entry["types"][kind] = result
            if kind == "hnsw":
                hnsw_seconds_per_vector = (n, result["build_s"] / n)
                hnsw_bytes_per_vector = result["bytes_per_vector_serialised"]
            write_out(args.out, payload)
        del data
        gc.collect()

    payload["partial"] = False
    payload["elapsed_s"] = round(time.perf_counter() - STARTED, 1)
    write_out(args.out, payload)
    print(json.dumps(payload, indent=1))


if __name__ == "__main__":
    main()

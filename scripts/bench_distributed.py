"""Distributed benchmark: `simsearch embed` in this process vs on local Ray clusters, and the
fan-out search of sharded indexes.

    python scripts/bench_distributed.py [--index-dir indexes/fashion-mnist]
        [--sizes 60000,600000] [--workers 1,2] [--vectors 1000000] [--shards 1,4,16]
        [--types ivf,hnsw] [--queries 1000] [--photo-sides 500,1000]
        [--skip-embed] [--skip-photos] [--skip-search] [--out FILE]

Prints one JSON object on stdout (progress on stderr); with ``--out`` the object is also
rewritten after every measurement (``"partial": true`` until the end).

Embedding. The catalog is the Fashion-MNIST train split (60,000 items) or that split repeated
with distinct ids (600,000), embedded with the encoder of ``--index-dir`` by
``simsearch.embeddings.write_embeddings`` (the code behind ``simsearch embed``: preprocessing
input, ONNX Runtime, normalisation, Parquet parts, manifest) into a temporary folder:
in this process (ONNX Runtime on every core), and on a local Ray cluster
(``ray.cluster_utils.Cluster``: a head without CPUs for work and 1 or 2 worker nodes of 1 CPU
each, i.e. one encoder actor per node). ``images_per_s`` is items / wall time of the whole call
(actor start, Ray Data, Parquet writing included); ``images_per_s_steady`` is the rate between
the first and the last part written (file times), which leaves the start-up out;
``images_per_cpu_second`` is items / the CPU time the batches took (summed over the workers'
processes, all threads): the rate of one otherwise idle core, which a shared machine's wall
clock cannot show.

Photos. The CPU cost of reading and preprocessing product photos (JPEG squares of
``--photo-sides`` pixels made from Fashion-MNIST test items), which bounds the embedding of a
folder catalog of real photos.

Sharded search. ``--vectors`` vectors made as ``scripts/bench_scale.py`` makes them (real
embeddings of the index plus Gaussian noise of the size of a nearest-neighbour distance,
re-normalised; queries: embeddings of Fashion-MNIST test images perturbed the same way), split
into 1, 4 and 16 consecutive shards with the product's parameters for that size. IVF shards are
filled from ONE trained quantizer (as ``vector_index.build_shards`` does; trained once here for
all shard counts), HNSW shards are graphs of their own. Each query is one (1, d) call of
``ShardedIndex.search`` (the product's fan-out: the shards one after the other, on one thread,
merged top-k), timed in wall-clock and in CPU time of the searching thread; recall@10 is against
exact search.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import bench_scale  # data generation shared with the scale benchmark

from simsearch import SearchIndex, vector_index
from simsearch.search_index import default_index_dir

K = 10
SEED = 20240601
STARTED = time.perf_counter()


def log(message: str) -> None:
    print(f"[{time.perf_counter() - STARTED:8.1f}s] {message}", file=sys.stderr, flush=True)


def int_list(text: str) -> list[int]:
    return [int(float(part)) for part in text.split(",") if part.strip()]


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def write_out(path: str | None, payload: dict[str, Any]) -> None:
    if path:
        Path(path).write_text(json.dumps(payload, indent=2) + "\n")


# ---------------------------------------------------------------------- embedding


def catalog(size: int, batch_size: int) -> Any:
    """The train split (its first ``size`` items), or the split repeated up to ``size`` items
    with distinct ids, as embedding Items."""
    from simsearch.data import CLASS_NAMES, load_split
    from simsearch.embeddings import items_from

    train = load_split("train")
    repeats = math.ceil(size / len(train.images))
    pixels = np.concatenate([train.images] * repeats)[:size]
    labels = np.concatenate([train.labels] * repeats)[:size].astype(np.int16)
    ids = [f"fashion-mnist/train/{i % len(train.images):05d}/copy{i // len(train.images)}"
           for i in range(size)]  # fmt: skip
    columns = {"id": ids, "label": labels, "source": [""] * size}
    description = {"source": "fashion-mnist", "split": "train", "repeated_to": size}
    return items_from(columns, pixels, None, batch_size, list(CLASS_NAMES), description)


def embed_once(items: Any, source: SearchIndex, ray: str | None, workdir: Path) -> dict[str, Any]:
    from simsearch.embeddings import write_embeddings

    out = workdir / "emb"
    before = load()
    start = time.perf_counter()
    result = write_embeddings(items, source, out, images=True, ray=ray)
    seconds = time.perf_counter() - start
    times = sorted(p.stat().st_mtime for p in out.glob("part-*.parquet"))
    rows = [e["rows"] for e in result.manifest["parts"].values()]
    steady = None
    if len(times) > 2 and times[-1] > times[0]:
        steady = round((result.count - rows[0]) / (times[-1] - times[0]), 1)
    shutil.rmtree(out)
    return {
        "items": result.count,
        "parts": result.parts,
        "seconds": round(seconds, 2),
        "images_per_s": round(result.count / seconds, 1),
        "images_per_s_steady": steady,
        "cpu_seconds": round(result.cpu_seconds, 2),
        "images_per_cpu_second": round(result.count / result.cpu_seconds, 1),
        "loadavg_before": before,
        "loadavg_after": load(),
    }


def bench_embedding(args: argparse.Namespace, source: SearchIndex, payload: dict[str, Any]) -> None:
    results: dict[str, Any] = {}
    payload["embedding"] = {
        "model": source.manifest.get("model", {}).get("model"),
        "mirror": source.manifest.get("model", {}).get("mirror"),
        "batch_size": args.batch_size,
        "runs": results,
    }
    items = {size: catalog(size, args.batch_size) for size in args.sizes}
    with tempfile.TemporaryDirectory(prefix="bench-distributed-") as tmp:
        workdir = Path(tmp)
        for size in args.sizes:
            log(f"embedding {size:,} items in this process ...")
            run = embed_once(items[size], source, None, workdir)
            run["cores"] = os.cpu_count()
            results[f"in_process/{size}"] = run
            log(f"  {run['images_per_s']:,} images/s")
            write_out(args.out, payload)
        for workers in args.workers:
            import ray
            from ray.cluster_utils import Cluster

            log(f"starting a local Ray cluster: head + {workers} worker node(s) of 1 CPU ...")
            store = args.object_store_mb * 1024 * 1024
            cluster = Cluster(
                initialize_head=True,
                head_node_args={"num_cpus": 0, "object_store_memory": store},
                connect=False,
            )
            for _ in range(workers):
                cluster.add_node(num_cpus=1, object_store_memory=store // 2)
            cluster.wait_for_nodes()
            try:
                for size in args.sizes:
                    log(f"embedding {size:,} items on {workers} worker node(s) ...")
                    run = embed_once(items[size], source, cluster.address, workdir)
                    run |= {"worker_nodes": workers, "actors": workers}
                    run["images_per_s_per_actor"] = round(run["images_per_s"] / workers, 1)
                    results[f"ray_{workers}_workers/{size}"] = run
                    log(f"  {run['images_per_s']:,} images/s")
                    write_out(args.out, payload)
            finally:
                ray.shutdown()
                cluster.shutdown()


def bench_photos(args: argparse.Namespace, payload: dict[str, Any]) -> None:
    """CPU cost of reading and preprocessing product photos: a folder catalog of real photos
    is bound by this, not by the encoder (Fashion-MNIST items are 28x28 already)."""
    import io

    from PIL import Image

    from simsearch.data import load_split
    from simsearch.images import preprocess

    items = load_split("test").images[: args.photos]
    results: dict[str, Any] = {}
    payload["photo_preprocessing"] = {
        "what": "Fashion-MNIST test items inverted (dark on white), enlarged (bicubic) to a square "
        "of the given side, RGB JPEG quality 90; simsearch.images.preprocess(bytes) on one thread",
        "runs": results,
    }
    for side in args.photo_sides:
        blobs = []
        for pixels in items:
            image = Image.fromarray(255 - pixels).resize((side, side), Image.Resampling.BICUBIC)
            buffer = io.BytesIO()
            image.convert("RGB").save(buffer, "JPEG", quality=90)
            blobs.append(buffer.getvalue())
        start = time.process_time()
        for blob in blobs:
            preprocess(blob)
        cpu = time.process_time() - start
        results[f"jpeg_{side}px"] = {
            "images": len(blobs),
            "kib_each": round(float(np.mean([len(b) for b in blobs])) / 1024, 1),
            "images_per_cpu_second": round(len(blobs) / cpu, 1),
        }
        log(f"photos {side} px: {results[f'jpeg_{side}px']}")


# ---------------------------------------------------------------------- sharded search


def vectors_and_queries(
    source: SearchIndex, n: int, queries: int
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """``n`` catalog vectors and ``queries`` query vectors, made as bench_scale.py makes them."""
    from simsearch.data import load_split

    seeds = np.ascontiguousarray(source.vectors, dtype=np.float32)
    rng = np.random.default_rng(SEED)
    sample = seeds[rng.choice(len(seeds), min(5000, len(seeds)), replace=False)]
    nn_l2 = math.sqrt(2 * float(np.median(bench_scale.nn_cosine_distances(seeds, sample, True))))
    sigma = nn_l2 / math.sqrt(seeds.shape[1])
    vectors = bench_scale.generate(seeds, n, sigma, rng)
    test = source.embed_pixels(load_split("test").images).astype(np.float32)
    query_rng = np.random.default_rng(SEED + 2)
    picks = query_rng.choice(len(test), queries, replace=queries > len(test))
    data = {"vectors": n, "queries": queries, "sigma_per_component": round(sigma, 6)}
    return vectors, bench_scale.perturb(test[picks], sigma, query_rng), data


def time_queries(searcher: Any, queries: np.ndarray) -> dict[str, Any]:
    """One (1, d) query per call on one thread: latency percentiles and queries/s."""
    import faiss

    faiss.omp_set_num_threads(1)
    singles = [np.ascontiguousarray(queries[i : i + 1]) for i in range(len(queries))]
    for one in singles[:20]:  # warm-up
        searcher.search(one, K)
    latencies, cpu, found = [], [], []
    start = time.perf_counter()
    for one in singles:
        t0, c0 = time.perf_counter(), time.thread_time()
        _, rows = searcher.search(one, K)
        latencies.append(time.perf_counter() - t0)
        cpu.append(time.thread_time() - c0)
        found.append(rows[0])
    wall = time.perf_counter() - start
    p50, p99 = np.percentile(latencies, [50, 99])
    cpu_p50 = float(np.percentile(cpu, 50))
    return {
        "latency_ms_p50": round(1000 * float(p50), 4),
        "latency_ms_p99": round(1000 * float(p99), 4),
        "queries_per_s": round(len(singles) / wall, 1),
        # CPU time of the searching thread: what a query costs on an otherwise idle core.
        "cpu_ms_per_query_p50": round(1000 * cpu_p50, 4),
        "cpu_ms_per_query_mean": round(1000 * float(np.mean(cpu)), 4),
        "found": np.asarray(found),
    }


def bench_search(args: argparse.Namespace, source: SearchIndex, payload: dict[str, Any]) -> None:
    import faiss

    log(f"making {args.vectors:,} vectors ...")
    vectors, queries, data = vectors_and_queries(source, args.vectors, args.queries)
    exact = faiss.IndexFlatIP(vectors.shape[1])
    exact.add(vectors)
    faiss.omp_set_num_threads(os.cpu_count() or 1)
    _, truth = exact.search(queries, K)
    del exact
    results: dict[str, Any] = {}
    payload["sharded_search"] = {"data": data, "k": K, "runs": results}
    for kind in args.types:
        params = vector_index.default_params(kind, len(vectors))
        empty = None
        if kind == "ivf":
            log(f"training the IVF quantizer (nlist {params['nlist']}) once ...")
            start = time.perf_counter()
            faiss.omp_set_num_threads(args.threads_build)
            sample = vector_index.training_sample(vectors, params)
            empty = vector_index.trained_empty(sample, kind, params)
            payload["sharded_search"]["ivf_train_seconds"] = round(time.perf_counter() - start, 1)
        for shards in args.shards:
            log(f"{kind}: building {shards} shard(s) ...")
            faiss.omp_set_num_threads(args.threads_build)
            sizes = vector_index.shard_sizes(len(vectors), shards)
            start = time.perf_counter()
            if empty is not None:
                parts = np.split(vectors, np.cumsum(sizes)[:-1])
                searcher = vector_index.ShardedIndex(
                    [vector_index.VectorIndex(vector_index.filled(empty, p), kind, params)
                     for p in parts]
                )  # fmt: skip
            else:
                searcher = vector_index.build_shards(vectors, kind, params, sizes)
            built = time.perf_counter() - start
            memory = sum(bench_scale.serialized_bytes(s.index) for s in searcher.shards)
            before = load()
            timed = time_queries(searcher, queries)
            found = timed.pop("found")
            results[f"{kind}/{shards}"] = {
                "type": kind,
                "params": params,
                "shards": shards,
                "vectors_per_shard": sizes[0],
                "build_seconds": round(built, 1),
                "build_threads": args.threads_build,
                "bytes_per_vector": round(memory / len(vectors), 1),
                "bytes_per_shard": int(memory / shards),
                f"recall@{K}": round(bench_scale.recall_at_k(found, truth), 4),
                **timed,
                "loadavg_before": before,
                "loadavg_after": load(),
            }
            log(f"  {results[f'{kind}/{shards}']}")
            write_out(args.out, payload)
            del searcher


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--index-dir", default=str(default_index_dir()))
    parser.add_argument("--sizes", type=int_list, default=int_list("60000,600000"))
    parser.add_argument("--workers", type=int_list, default=int_list("1,2"))
    parser.add_argument("--batch-size", type=int, default=8192)
    parser.add_argument("--object-store-mb", type=int, default=2048)
    parser.add_argument("--vectors", type=int, default=1_000_000)
    parser.add_argument("--shards", type=int_list, default=int_list("1,4,16"))
    parser.add_argument("--types", default="ivf,hnsw")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--threads-build", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--photos", type=int, default=200)
    parser.add_argument("--photo-sides", type=int_list, default=int_list("500,1000"))
    parser.add_argument("--skip-embed", action="store_true")
    parser.add_argument("--skip-photos", action="store_true")
    parser.add_argument("--skip-search", action="store_true")
    parser.add_argument("--note", default=None)
    parser.add_argument("--out", default=None, help="also write the JSON here (updated live)")
    args = parser.parse_args()
    args.types = [t.strip() for t in args.types.split(",") if t.strip()]

    source = SearchIndex.load(args.index_dir)
    payload: dict[str, Any] = {
        "partial": True,
        "machine": bench_scale.machine(),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        **({"note": args.note} if args.note else {}),
        "index": {"dir": args.index_dir, "count": len(source), "dim": source.dim},
        "loadavg_start": load(),
    }
    if not args.skip_embed:
        bench_embedding(args, source, payload)
    if not args.skip_photos:
        bench_photos(args, payload)
    if not args.skip_search:
        bench_search(args, source, payload)
    payload["loadavg_end"] = load()
    payload["seconds"] = round(time.perf_counter() - STARTED, 1)
    payload["partial"] = False
    write_out(args.out, payload)
    print(json.dumps(payload, indent=2))


if __name__ == "__main__":
    main()

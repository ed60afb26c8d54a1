"""Near-duplicates on Fashion-MNIST: the pairs counted from the pixels, and what
``SearchIndex.duplicates`` finds of them (and besides them), how fast.

    simsearch build-index --split all --model-from indexes/fashion-mnist --index-dir /tmp/fm-all
    python scripts/bench_duplicates.py --index-dir /tmp/fm-all [--sheet others.png]

Needs an index of the train and test splits together (70,000 items; the command above re-embeds
them with the default model, no training) and the Fashion-MNIST IDX files.

Ground truth: every pair of images whose pixels differ by an RMS of at most ``--rms`` grey
levels, RMS = sqrt(sum of squared differences / 784). Found exactly without comparing all pairs
in 784-d: an orthonormal projection never lengthens a difference, so a range search over the
images' projections on a few principal axes (radius = the RMS bound) returns every such pair,
plus some others, which the full pixels then rule out. ``--brute-force`` checks it against an
exact range search over the 784-d pixels (several minutes).

Prints one JSON object: the ground truth, the lowest embedding similarity among its pairs (the
highest threshold that still finds them all), and per threshold the groups found, the
ground-truth pairs found in one group, the other pairs grouped (with their pixel RMS and
whether their labels agree), the pairs at the threshold that complete linkage left in two
groups, and timings (median of ``--repeats`` runs of the library call, through the index's
search and with ``exact=True``).
``--sheet OUT.png`` draws the groups holding such other pairs, captioned with RMS and similarity.
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
import time
from datetime import UTC, datetime
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np

from simsearch import SearchIndex
from simsearch.data import item_id, load_split
from simsearch.duplicates import DEFAULT_THRESHOLD, Duplicates, sheet_block
from simsearch.figures.sheets import SheetBlock, contact_sheet

PROJECTION_DIM = 32  # principal axes the candidate search runs on
PCA_SAMPLE = 10_000  # images the axes are fitted on (any orthonormal axes keep it exact)
SWEEP = (0.99, 0.995, 0.997, 0.998, 0.999)


def machine() -> dict[str, Any]:
    import faiss

    return {
        "cpus": os.cpu_count(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "faiss": faiss.__version__,
    }


def pixel_pairs(images: np.ndarray, rms: float, brute_force: bool) -> dict[str, Any]:
    """Every pair (i < j) of (n, 28, 28) uint8 images within ``rms`` grey levels."""
    import faiss

    started = time.perf_counter()
    flat = images.reshape(len(images), -1)
    x = flat.astype(np.float32)
    radius = rms * rms * flat.shape[1]  # squared L2 distance at the RMS bound
    if brute_force:
        index = faiss.IndexFlatL2(x.shape[1])
        index.add(x)
        limits, _, found = index.range_search(x, radius + 0.5)
        method = "exact range search over the 784-d pixels"
    else:
        rng = np.random.default_rng(0)
        sample = x[rng.choice(len(x), min(PCA_SAMPLE, len(x)), replace=False)]
        mean = sample.mean(axis=0)
        centred = (sample - mean).astype(np.float64)
        eigenvalues, eigenvectors = np.linalg.eigh(centred.T @ centred)
        axes = eigenvectors[:, np.argsort(eigenvalues)[::-1][:PROJECTION_DIM]]
        projected = np.ascontiguousarray((x - mean) @ axes.astype(np.float32))
        index = faiss.IndexFlatL2(PROJECTION_DIM)
        index.add(projected)
        # A margin for float32 rounding: the projected distance can only be shorter.
        limits, _, found = index.range_search(projected, radius * 1.01 + 1.0)
        method = (
            f"range search over {PROJECTION_DIM} principal axes (a superset), checked on the "
            "784-d pixels"
        )
    queries = np.repeat(np.arange(len(x)), np.diff(limits).astype(np.int64))
    keep = queries < found
    a, b = queries[keep], found[keep].astype(np.int64)
    candidates = len(a)
    diff = flat[a].astype(np.int32) - flat[b].astype(np.int32)
    squared = (diff * diff).sum(axis=1)
    within = squared <= radius
    a, b = a[within], b[within]
    pair_rms = np.sqrt(squared[within] / flat.shape[1])
    digests = {hash(image.tobytes()) for image in flat}
    return {
        "a": a,
        "b": b,
        "rms": pair_rms,
        "summary": {
            "rms": rms,
            "pairs": len(a),
            "items_in_pairs": len(set(a.tolist()) | set(b.tolist())),
            "pairs_by_rms": {f"<={r}": int((pair_rms <= r).sum()) for r in range(0, int(rms) + 1)},
            "byte_identical_images": len(flat) - len(digests),
            "candidates_checked": candidates,
            "method": method,
            "seconds": round(time.perf_counter() - started, 1),
        },
    }


def pixel_rms(images: np.ndarray, i: int, j: int) -> float:
    diff = images[i].astype(np.int32) - images[j].astype(np.int32)
    return float(np.sqrt((diff * diff).mean()))


def similar_pairs(vectors: np.ndarray, threshold: float) -> dict[tuple[int, int], float]:
    """Every pair (i < j) of unit vectors at ``threshold`` or above: an exact range search."""
    import faiss

    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    limits, sims, found = index.range_search(vectors, threshold)
    queries = np.repeat(np.arange(len(vectors)), np.diff(limits).astype(np.int64))
    keep = queries < found
    pairs = zip(queries[keep].tolist(), found[keep].tolist(), sims[keep].tolist(), strict=True)
    return {(i, j): s for i, j, s in pairs}


def score(
    result: Duplicates,
    truth: set[tuple[int, int]],
    images: np.ndarray,
    labels: np.ndarray,
    similar: dict[tuple[int, int], float],
) -> dict[str, Any]:
    """What a run found, measured against the ground-truth pairs (rows of the index) and
    against all pairs at its threshold (``similar``: the pairs at a lower one, or the same)."""
    grouped: set[tuple[int, int]] = set()
    for group in result:
        grouped.update(combinations(sorted(group.rows), 2))
    others = sorted(grouped - truth)
    other_rms = [pixel_rms(images, i, j) for i, j in others]
    sizes = [len(group.ids) for group in result]
    ids = result.index.ids  # type: ignore[union-attr]
    at_threshold = {pair for pair, sim in similar.items() if sim >= result.threshold}
    return {
        "threshold": result.threshold,
        "groups": len(result.groups),
        "items_in_groups": sum(sizes),
        "largest_group": max(sizes, default=0),
        "pairs_at_threshold": len(at_threshold),
        "pairs_in_groups": len(grouped),
        "pairs_at_threshold_split_by_complete_linkage": [
            [str(ids[i]), str(ids[j])] for i, j in sorted(at_threshold - grouped)
        ],
        "truth_pairs_found": len(truth & grouped),
        "truth_pairs_missed": [[str(ids[i]), str(ids[j])] for i, j in sorted(truth - grouped)],
        "other_pairs": len(others),
        "other_pairs_rms": {
            "min": round(min(other_rms), 2) if others else None,
            "median": round(statistics.median(other_rms), 2) if others else None,
            "max": round(max(other_rms), 2) if others else None,
        },
        "other_pairs_with_different_labels": sum(labels[i] != labels[j] for i, j in others),
    }


def timed(
    index: SearchIndex, threshold: float, exact: bool, repeats: int
) -> tuple[Any, dict[str, Any]]:
    """The result, and wall and CPU seconds per run with their medians. On a shared machine
    the wall time depends on the other jobs; the CPU time (all threads) much less."""
    wall, cpu, result = [], [], None
    for _ in range(repeats):
        started, cpu_started = time.perf_counter(), time.process_time()
        result = index.duplicates(threshold, exact=exact)
        wall.append(round(time.perf_counter() - started, 2))
        cpu.append(round(time.process_time() - cpu_started, 2))
    return result, {
        "wall_seconds": wall,
        "wall_seconds_median": statistics.median(wall),
        "cpu_seconds": cpu,
        "cpu_seconds_median": statistics.median(cpu),
    }


def cli_run(index_dir: str) -> dict[str, float]:
    """One ``simsearch duplicates --json`` run in a fresh process: wall and CPU seconds."""
    command = [str(Path(sys.executable).with_name("simsearch")), "duplicates", "--json", "-q"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run([*command, "--index-dir", index_dir], check=True, capture_output=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    return {"wall_seconds": round(time.perf_counter() - started, 2), "cpu_seconds": round(cpu, 2)}


def other_sheet(
    result: Duplicates, truth: set[tuple[int, int]], images: np.ndarray, out: str
) -> int:
    """Draw the groups that hold a pair beyond the RMS bound, weakest group first."""
    blocks = []
    for group in reversed(result.groups):
        pairs = set(combinations(sorted(group.rows), 2))
        if pairs <= truth:
            continue
        block = sheet_block(result, group)
        first = group.rows[0]
        captions = [
            (caption[0], f"{caption[1]} rms {pixel_rms(images, first, row):.1f}" if n else "first")
            for n, (caption, row) in enumerate(zip(block.captions, group.rows, strict=True))
        ]
        blocks.append(SheetBlock(block.title, block.pixels, captions))
    if blocks:
        contact_sheet(blocks, out)
    return len(blocks)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--index-dir", required=True, help="an index of --split all")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--rms", type=float, default=4.0)
    parser.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--brute-force", action="store_true")
    parser.add_argument("--sheet", default=None, help="PNG of the groups beyond the RMS bound")
    args = parser.parse_args()

    load_at_start = machine()["load_average"]
    train, test = load_split("train", args.data_dir), load_split("test", args.data_dir)
    images = np.concatenate([train.images, test.images])
    labels = np.concatenate([train.labels, test.labels])
    ids = [item_id("train", i) for i in range(len(train.images))]
    ids += [item_id("test", i) for i in range(len(test.images))]

    index = SearchIndex.load(args.index_dir)
    row_of = {str(i): row for row, i in enumerate(index.ids)}
    missing = [i for i in ids if i not in row_of]
    if missing:
        raise SystemExit(f"{args.index_dir} lacks {len(missing)} items (e.g. {missing[0]})")
    rows = np.asarray([row_of[i] for i in ids])
    # From here on everything is in index rows.
    images_by_row = np.empty_like(images)
    images_by_row[rows] = images
    labels_by_row = np.empty_like(labels)
    labels_by_row[rows] = labels
    if not np.array_equal(index.images, images_by_row):
        raise SystemExit(f"{args.index_dir}: its images are not the Fashion-MNIST pixels")

    found = pixel_pairs(images_by_row, args.rms, args.brute_force)
    truth = {(int(min(i, j)), int(max(i, j))) for i, j in zip(found["a"], found["b"], strict=True)}
    vectors = index.vectors
    truth_sims = (vectors[found["a"]] * vectors[found["b"]]).sum(axis=1)

    default, default_seconds = timed(index, args.threshold, False, args.repeats)
    exact, exact_seconds = timed(index, args.threshold, True, args.repeats)
    same = [g.ids for g in default] == [g.ids for g in exact]
    command = cli_run(args.index_dir)
    similar = similar_pairs(vectors, min(*SWEEP, args.threshold))
    sweep = [
        score(index.duplicates(t), truth, images_by_row, labels_by_row, similar) for t in SWEEP
    ]
    sheet_groups = (
        other_sheet(default, truth, images_by_row, args.sheet) if args.sheet is not None else None
    )
    report = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine() | {"load_average_at_start": load_at_start},
        "index": {
            "dir": args.index_dir,
            "items": len(index),
            "type": index.searcher.kind,
            "model": index.manifest["model"].get("model"),
            "encoder_sha256": index.manifest["model"].get("encoder_sha256"),
        },
        "ground_truth": found["summary"],
        "truth_lowest_similarity": round(float(truth_sims.min()), 6) if len(truth) else None,
        "default_threshold": {
            **score(default, truth, images_by_row, labels_by_row, similar),
            "timing_index_search": default_seconds,
            "timing_exact": exact_seconds,
            "timing_cli": command,
            "exact_gives_the_same_groups": same,
        },
        "sweep": sweep,
        "sheet": {"path": args.sheet, "groups": sheet_groups} if args.sheet else None,
    }
    print(json.dumps(report, indent=1, default=int))


if __name__ == "__main__":
    main()

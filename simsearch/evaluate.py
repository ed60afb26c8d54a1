"""Retrieval quality under the evaluation protocol, next to pixel and PCA baselines.

Protocol
--------
- Catalog: the index's items, normally the Fashion-MNIST train split (60,000). An index built with
  ``--limit N`` is evaluated over its N items; ``protocol`` in the result then says so.
- Queries: the Fashion-MNIST test split (10,000), embedded with the index's own encoder
  (``index.embed_pixels``); ``limit`` keeps only the first N.
- A result is relevant when its class equals the query's. Search is exact: FAISS
  ``IndexFlatIP`` over the L2-normalised vectors (cosine similarity), top ``K = 100``.

Metrics (each a mean over the queries, each in [0, 1])
------------------------------------------------------
- ``P@k`` for k = 1, 10, 100: relevant results among the top k, divided by k.
- ``mAP@100``: per query ``AP@100 = (1 / min(100, R)) * sum of P@i over the ranks i <= 100 that
  hold a relevant result``, where R is the number of relevant catalog items for that query
  (AP = 0 when R = 0); then the mean over the queries.
- ``knn10_accuracy``: the majority class of the top-10 neighbours equals the query's class.
  Ties between classes with the same count go to the class whose neighbours have the highest
  summed similarity (then to the lower class id).
- ``per_class``: P@10 of the queries of each class, keyed by class name.
- ``confusion``: a 10 x 10 matrix, row = query class, column = neighbour class, value = the
  fraction of that row's top-10 neighbours (each row sums to 1).
- Baselines computed the same way: raw pixels (784-d, cosine, exact) and PCA with the model's
  embedding dimension, fit on the catalog images (:func:`simsearch.encoders.fit_pca`).
- For an approximate index (type other than ``flat``): ``recall@10``, the mean fraction of the
  exact top-10 (over ``index.vectors``) that the index's own search returns.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from simsearch.data import CLASS_NAMES, load_split
from simsearch.encoders import fit_pca, normalize
from simsearch.errors import ConfigError, EvaluationError
from simsearch.progress import Advance, Reporter
from simsearch.search_index import SearchIndex

KS: tuple[int, ...] = (1, 10, 100)
K = max(KS)  # neighbours retrieved per query
KNN = 10  # neighbours that vote in the k-NN accuracy
QUERIES = "fashion-mnist/test"
QUERY_BATCH = 1000
PREFIX = "fashion-mnist/"


@dataclass
class Scored:
    """The metrics of one embedding, and what the per-class and confusion tables need."""

    metrics: dict[str, float]
    per_query_p10: np.ndarray  # (m,) float64
    neighbour_labels: np.ndarray  # (m, K) int
    rows: np.ndarray | None = None  # (m, K) int64 catalog rows, when known


def evaluate(
    index: SearchIndex,
    data_dir: str | None = None,
    queries: str = QUERIES,
    limit: int | None = None,
    reporter: Reporter | None = None,
    *,
    baselines: bool = True,
) -> dict[str, Any]:
    """Score ``index`` with the evaluation protocol; returns the JSON-ready result.

    ``limit`` keeps the first N test queries. ``baselines=False`` skips the raw-pixel and PCA
    baselines (``"baselines": {}``), e.g. when comparing several models over one catalog.

    Raises EvaluationError when the catalog is not labelled Fashion-MNIST train data (or does not
    match the dataset found for ``data_dir``), ConfigError on bad arguments, and the data
    module's errors when the dataset cannot be read.
    """
    start = time.perf_counter()
    reporter = reporter or Reporter(quiet=True)
    if queries != QUERIES:
        raise ConfigError(
            f"queries must be {QUERIES!r} (the protocol's query set), got {queries!r}"
        )
    if limit is not None and limit < 1:
        raise ConfigError(f"--limit-queries must be at least 1, got {limit}")
    train = load_split("train", data_dir)
    positions = check_catalog(index, train.images, train.labels)
    test = load_split("test", data_dir)
    m = len(test.images) if limit is None else min(limit, len(test.images))
    query_pixels, query_labels = test.images[:m], test.labels[:m].astype(np.int64)

    catalog_labels = np.asarray(index.labels, dtype=np.int64)
    n_classes = len(CLASS_NAMES)
    relevant = np.bincount(catalog_labels, minlength=n_classes)[query_labels]
    catalog_images = np.asarray(index.images)

    def search(catalog: np.ndarray, query_vectors: np.ndarray, what: str) -> Scored:
        with reporter.task(f"searching ({what})", total=len(query_vectors), unit="queries") as adv:
            scores, rows = exact_search(catalog, query_vectors, K, adv)
        scored = score_neighbours(
            catalog_labels[rows], scores, query_labels, relevant, n_classes=n_classes
        )
        scored.rows = rows
        return scored

    reporter.message(
        f"evaluating {len(index):,} catalog items x {m:,} queries "
        f"({index.manifest.get('model', {}).get('model', '?')}, {index.dim}-d)"
    )
    query_vectors = _embed(index, query_pixels, reporter)
    model = search(index.vectors, query_vectors, "model")

    baseline_results: dict[str, Any] = {}
    raw: Scored | None = None
    pca: Scored | None = None
    pca_dim = min(index.dim, 28 * 28)
    if baselines:
        raw = search(_pixel_vectors(catalog_images), _pixel_vectors(query_pixels), "raw pixels")
        reporter.message(f"fitting PCA-{pca_dim} on the catalog ...")
        mean, components = fit_pca(catalog_images, pca_dim)
        pca = search(
            _pca_vectors(catalog_images, mean, components),
            _pca_vectors(query_pixels, mean, components),
            f"PCA-{pca_dim}",
        )
        baseline_results = {
            "raw_pixels": {"dim": 28 * 28, **raw.metrics},
            "pca": {"dim": pca_dim, **pca.metrics},
        }

    index_type = str(index.manifest["index"]["type"])
    recall = None
    if index_type != "flat":
        recall = _recall_at_10(index, query_vectors, model.rows)

    per_class: dict[str, dict[str, Any]] = {}
    for label, name in enumerate(CLASS_NAMES):
        mask = query_labels == label
        entry: dict[str, Any] = {
            "P@10": _mean(model.per_query_p10[mask]),
            "queries": int(mask.sum()),
        }
        if raw is not None and pca is not None:
            entry["raw_pixels_P@10"] = _mean(raw.per_query_p10[mask])
            entry["pca_P@10"] = _mean(pca.per_query_p10[mask])
        per_class[name] = entry

    manifest_model = index.manifest.get("model", {})
    return {
        "protocol": _protocol(positions, len(train.images), m, len(test.images)),
        "model": {"kind": manifest_model.get("model"), "dim": index.dim, **model.metrics},
        "baselines": baseline_results,
        "per_class": per_class,
        "confusion": {
            "rows": "query class",
            "columns": "neighbour class",
            "value": f"fraction of the top-{KNN} neighbours",
            "classes": list(CLASS_NAMES),
            "matrix": confusion(query_labels, model.neighbour_labels, n_classes).round(4).tolist(),
        },
        "index": {
            "type": index_type,
            "params": index.manifest["index"].get("params", {}),
            "count": len(index),
            "dim": index.dim,
            "model": manifest_model.get("model"),
            "code_size": manifest_model.get("code_size"),
            "exact": index_type == "flat",
            "recall@10": recall,
        },
        "seconds": round(time.perf_counter() - start, 2),
    }


# ---------------------------------------------------------------------------- the metrics


def score_neighbours(
    neighbour_labels: np.ndarray,
    neighbour_scores: np.ndarray,
    query_labels: np.ndarray,
    relevant_counts: np.ndarray,
    n_classes: int = len(CLASS_NAMES),
    ks: tuple[int, ...] = KS,
    knn: int = KNN,
) -> Scored:
    """Metrics of ranked neighbours (see the module docstring for the definitions).

    ``neighbour_labels`` (m, k) int and ``neighbour_scores`` (m, k) float: the classes and
    similarities of each query's neighbours, best first, with k >= max(ks) and k >= knn.
    ``query_labels`` (m,) int; ``relevant_counts`` (m,) int: R, the number of catalog items of
    the query's class. Returns the metrics ``P@k`` for k in ``ks``, ``mAP@max(ks)`` and
    ``knn{knn}_accuracy`` as floats in [0, 1].
    """
    labels = np.asarray(neighbour_labels, dtype=np.int64)
    scores = np.asarray(neighbour_scores, dtype=np.float64)
    query_labels = np.asarray(query_labels, dtype=np.int64)
    top = max(ks)
    if labels.ndim != 2 or labels.shape[1] < max(top, knn) or labels.shape != scores.shape:
        raise ConfigError(
            f"need (m, >= {max(top, knn)}) neighbour labels and scores, got {labels.shape} "
            f"and {scores.shape}"
        )
    if len(labels) == 0:
        raise ConfigError("no queries to score")
    relevant = labels[:, :top] == query_labels[:, None]  # (m, top) bool
    metrics = {f"P@{k}": _mean(relevant[:, :k].mean(axis=1)) for k in ks}
    precision_at_i = np.cumsum(relevant, axis=1) / np.arange(1, top + 1)
    denominator = np.minimum(top, np.asarray(relevant_counts, dtype=np.int64))
    ap = np.where(
        denominator > 0,
        (precision_at_i * relevant).sum(axis=1) / np.maximum(denominator, 1),
        0.0,
    )
    metrics[f"mAP@{top}"] = _mean(ap)
    predicted = knn_vote(labels[:, :knn], scores[:, :knn], n_classes)
    metrics[f"knn{knn}_accuracy"] = _mean(predicted == query_labels)
    return Scored(metrics, relevant[:, :KNN].mean(axis=1), labels)


def knn_vote(labels: np.ndarray, scores: np.ndarray, n_classes: int) -> np.ndarray:
    """Majority class of each row of neighbour ``labels`` (m, k); ties -> highest summed score.

    Remaining ties (equal count and equal summed similarity) go to the lower class id.
    """
    m, k = labels.shape
    counts = np.zeros((m, n_classes))
    sums = np.zeros((m, n_classes))
    rows = np.repeat(np.arange(m), k)
    np.add.at(counts, (rows, labels.ravel()), 1.0)
    np.add.at(sums, (rows, labels.ravel()), scores.ravel())
    # Lexicographic (count, summed similarity): |sum of a class| <= its count <= k, so one more
    # vote always outweighs any difference of sums.
    return np.asarray((counts * (2 * k + 1) + sums).argmax(axis=1))


def confusion(query_labels: np.ndarray, neighbour_labels: np.ndarray, n_classes: int) -> np.ndarray:
    """(n_classes, n_classes): row = query class, column = class of its top-KNN neighbours,
    value = fraction of that row's neighbours; a class without queries has a row of zeros."""
    top = np.asarray(neighbour_labels)[:, :KNN]
    matrix = np.zeros((n_classes, n_classes))
    np.add.at(matrix, (np.repeat(query_labels, top.shape[1]), top.ravel()), 1.0)
    totals = matrix.sum(axis=1, keepdims=True)
    return np.divide(matrix, totals, out=np.zeros_like(matrix), where=totals > 0)


def exact_search(
    catalog: np.ndarray, queries: np.ndarray, k: int, advance: Advance | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product top-k: catalog (n, d), queries (m, d) float32 unit rows ->
    scores (m, k) float32, rows (m, k) int64 (batches of QUERY_BATCH queries)."""
    import faiss

    catalog = np.ascontiguousarray(catalog, dtype=np.float32)
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    if k > len(catalog):
        raise EvaluationError(
            f"the protocol retrieves {k} neighbours per query; the catalog has only "
            f"{len(catalog)} items"
        )
    flat = faiss.IndexFlatIP(catalog.shape[1])
    flat.add(catalog)
    scores = np.empty((len(queries), k), np.float32)
    rows = np.empty((len(queries), k), np.int64)
    for start in range(0, len(queries), QUERY_BATCH):
        batch = queries[start : start + QUERY_BATCH]
        scores[start : start + len(batch)], rows[start : start + len(batch)] = flat.search(batch, k)
        if advance is not None:
            advance(len(batch))
    return scores, rows


# ---------------------------------------------------------------------------- the catalog


def check_catalog(
    index: SearchIndex, train_images: np.ndarray, train_labels: np.ndarray
) -> np.ndarray:
    """Check that the index's catalog is labelled Fashion-MNIST train data; return the items'
    positions (n,) int64 in the train split. Raises EvaluationError, naming what is wrong."""
    catalog = index.manifest.get("catalog", {})
    source = catalog.get("source")
    if source != "fashion-mnist":
        raise EvaluationError(
            f"evaluation needs a Fashion-MNIST catalog; this index's catalog is {source!r}"
        )
    if tuple(index.label_names) != CLASS_NAMES:
        raise EvaluationError(
            "evaluation needs the Fashion-MNIST class names; this index has "
            f"{index.label_names or 'none'}"
        )
    labels = np.asarray(index.labels)
    unlabelled = int((labels < 0).sum())
    if unlabelled:
        raise EvaluationError(
            f"{unlabelled:,} of {len(labels):,} catalog items have no label; evaluation needs a "
            "labelled catalog"
        )
    if len(index) < K:
        raise EvaluationError(f"the protocol needs at least {K} catalog items, got {len(index)}")
    splits, positions = _parse_ids(index.ids)
    if np.any(splits != "train"):
        others = sorted(set(splits.tolist()) - {"train"})
        raise EvaluationError(
            "the protocol's catalog is the Fashion-MNIST train split (the test split is the "
            f"query set), but this index holds items of {', '.join(others)}; build it with "
            "--split train"
        )
    if (
        positions.max() >= len(train_labels)
        or np.any(train_labels[positions].astype(np.int64) != labels.astype(np.int64))
        or not np.array_equal(train_images[positions], np.asarray(index.images))
    ):
        raise EvaluationError(
            "the index's catalog does not match the Fashion-MNIST train split found now "
            f"({len(train_labels):,} items); evaluate with the --data-dir the index was built from"
        )
    return positions


def _parse_ids(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    splits: list[str] = []
    positions: list[int] = []
    for item in np.asarray(ids).tolist():
        parts = str(item).split("/")
        if len(parts) != 3 or parts[0] + "/" != PREFIX or not parts[2].isdigit():
            raise EvaluationError(
                f"catalog item {item!r} is not a Fashion-MNIST item; evaluation needs a catalog of "
                "fashion-mnist/train/NNNNN items"
            )
        splits.append(parts[1])
        positions.append(int(parts[2]))
    return np.asarray(splits), np.asarray(positions, dtype=np.int64)


def _protocol(positions: np.ndarray, n_train: int, m: int, n_test: int) -> dict[str, Any]:
    n = len(positions)
    catalog = "fashion-mnist/train"
    if n < n_train:
        contiguous = np.array_equal(positions, np.arange(n))
        catalog += f"[:{n}]" if contiguous else f" (subset of {n} items)"
    queries = QUERIES if m == n_test else f"{QUERIES}[:{m}]"
    protocol: dict[str, Any] = {
        "catalog": catalog,
        "queries": queries,
        "catalog_items": n,
        "query_items": m,
        "relevant": "same class",
        "k": list(KS),
        "knn": KNN,
        "search": "exact cosine: FAISS IndexFlatIP over L2-normalised vectors",
        "full": n == n_train and m == n_test,
    }
    if not protocol["full"]:
        protocol["note"] = (
            f"subset: {n:,} of {n_train:,} catalog items and {m:,} of {n_test:,} queries; "
            "figures are not comparable with the full protocol"
        )
    return protocol


# ---------------------------------------------------------------------------- embeddings


def _embed(index: SearchIndex, pixels: np.ndarray, reporter: Reporter) -> np.ndarray:
    out = np.empty((len(pixels), index.dim), np.float32)
    with reporter.task("embedding queries", total=len(pixels), unit="images") as advance:
        for start in range(0, len(pixels), QUERY_BATCH):
            batch = pixels[start : start + QUERY_BATCH]
            out[start : start + len(batch)] = index.embed_pixels(batch)
            advance(len(batch))
    return out


def _pixel_vectors(images: np.ndarray) -> np.ndarray:
    """(n, 28, 28) uint8 -> (n, 784) float32 unit rows (cosine on raw pixels)."""
    return normalize(np.asarray(images, dtype=np.float32).reshape(len(images), -1))


def _pca_vectors(images: np.ndarray, mean: np.ndarray, components: np.ndarray) -> np.ndarray:
    x = np.asarray(images, dtype=np.float32).reshape(len(images), -1) / 255.0
    return normalize((x - mean) @ components)


def _recall_at_10(index: SearchIndex, query_vectors: np.ndarray, exact_rows: Any) -> float:
    """Mean |approximate top-10 & exact top-10| / 10; ``exact_rows`` (m, >= 10) come from
    exact search over ``index.vectors``."""
    exact = np.asarray(exact_rows)[:, :10]
    _, approx = index.search(query_vectors, 10)
    found = (approx[:, :, None] == exact[:, None, :]).any(axis=2) & (approx >= 0)
    return _mean(found.sum(axis=1) / 10.0)


def _mean(values: np.ndarray) -> float:
    return round(float(np.mean(values)), 6) if len(values) else 0.0


# ---------------------------------------------------------------------------- the human report

METRIC_ROWS = (
    ("P@1", "P@1"),
    ("P@10", "P@10"),
    ("P@100", "P@100"),
    ("mAP@100", "mAP@100"),
    ("knn10_accuracy", "10-NN accuracy"),
)


def format_report(result: dict[str, Any]) -> str:
    """The human-readable tables of an :func:`evaluate` result: metrics x (model, baselines),
    per-class P@10, and the neighbour-class confusion in percent."""
    protocol, index, model = result["protocol"], result["index"], result["model"]
    baselines = result.get("baselines") or {}
    columns: list[tuple[str, dict[str, Any]]] = [(f"model ({model.get('kind')})", model)]
    if "raw_pixels" in baselines:
        columns.append(("raw pixels", baselines["raw_pixels"]))
    if "pca" in baselines:
        columns.append((f"PCA-{baselines['pca']['dim']}", baselines["pca"]))
    widths = [max(10, len(name)) for name, _ in columns]

    def row(label: str, values: list[str]) -> str:
        cells = "  ".join(f"{v:>{w}}" for v, w in zip(values, widths, strict=True))
        return f"{label:<16}{cells}".rstrip()

    lines = [
        f"catalog   {protocol['catalog']} ({protocol['catalog_items']:,} items); "
        f"queries {protocol['queries']} ({protocol['query_items']:,}); relevant = same class",
        f"index     {index['type']}, {index['count']:,} x {index['dim']}-d {index['model']} "
        f"embeddings; exact cosine search for every column",
    ]
    if not protocol.get("full"):
        lines.append(f"note      {protocol['note']}")
    lines += ["", row("metric", [name for name, _ in columns])]
    for key, label in METRIC_ROWS:
        lines.append(row(label, [f"{block[key]:.4f}" for _, block in columns]))
    if index.get("recall@10") is not None:
        lines.append(
            f"recall@10 of the {index['type']} index vs exact search: {index['recall@10']:.4f}"
        )

    lines += ["", row("per-class P@10", [name for name, _ in columns])]
    for name, entry in result["per_class"].items():
        values = [f"{entry['P@10']:.4f}"]
        if len(columns) == 3:
            values += [f"{entry['raw_pixels_P@10']:.4f}", f"{entry['pca_P@10']:.4f}"]
        lines.append(row(name, values))

    conf = result["confusion"]
    short = [name.split("/")[0][:5] for name in conf["classes"]]
    lines += [
        "",
        f"neighbour classes, % of each query class's top-{KNN} (row = query, column = neighbour)",
        " " * 12 + "".join(f"{s:>6}" for s in short),
    ]
    for name, values in zip(conf["classes"], conf["matrix"], strict=True):
        lines.append(f"{name[:11]:<12}" + "".join(f"{100 * v:>6.1f}" for v in values))
    lines += ["", f"evaluated in {result['seconds']:.1f} s"]
    return "\n".join(lines)

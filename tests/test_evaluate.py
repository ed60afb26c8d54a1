"""The evaluation protocol: hand-checked metrics, the result's shape, the CLI, clear errors, and
(slow) every autoencoder kind end to end plus a quality regression against raw pixels."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner, Result

from simsearch.cli import app
from simsearch.data import CLASS_NAMES, load_split
from simsearch.errors import EvaluationError
from simsearch.evaluate import evaluate, exact_search, knn_vote, score_neighbours
from simsearch.recipes import RECIPES
from simsearch.search_index import SearchIndex
from tests.conftest import real_data_or_skip

runner = CliRunner()
METRICS = ["P@1", "P@10", "P@100", "mAP@100", "knn10_accuracy"]


def cli(*args: str | Path) -> Result:
    return runner.invoke(app, [str(a) for a in args])


def derived(index: SearchIndex, rows: slice | None = None, **changes: Any) -> SearchIndex:
    """An in-memory copy of ``index`` (optionally only ``rows``) with some fields replaced."""
    rows = rows or slice(None)
    fields: dict[str, Any] = {
        "encoder": index.encoder,
        "encoder_file": index.encoder_file,
        "vectors": index.vectors[rows],
        "ids": index.ids[rows],
        "labels": index.labels[rows],
        "sources": index.sources[rows],
        "images": np.asarray(index.images)[rows],
        "manifest": json.loads(json.dumps(index.manifest)),
    }
    fields.update(changes)
    return SearchIndex(**fields)


@pytest.fixture(scope="module")
def result(pca_index_dir: Path, fake_data_dir: Path) -> dict[str, Any]:
    return evaluate(SearchIndex.load(pca_index_dir), str(fake_data_dir))


# ---------------------------------------------------------------------------- metrics by hand


def test_metrics_by_hand() -> None:
    # Query 0 (class 0): neighbours 0, 1, 0 -> relevant at ranks 1 and 3; R = 2.
    # Query 1 (class 1): neighbours 0, 0, 1 -> relevant at rank 3 only; R = 5.
    labels = np.array([[0, 1, 0], [0, 0, 1]])
    scores = np.array([[0.9, 0.8, 0.7], [0.9, 0.8, 0.7]])
    scored = score_neighbours(labels, scores, np.array([0, 1]), np.array([2, 5]), 2, (1, 3), 3)
    m = scored.metrics
    assert m["P@1"] == pytest.approx(0.5)  # (1 + 0) / 2
    assert m["P@3"] == pytest.approx(0.5)  # (2/3 + 1/3) / 2
    # AP@3: q0 = (P@1 + P@3) / min(3, 2) = (1 + 2/3) / 2 = 5/6; q1 = P@3 / min(3, 5) = 1/9.
    assert m["mAP@3"] == pytest.approx((5 / 6 + 1 / 9) / 2, abs=1e-6)
    # Votes: q0 -> class 0 (right), q1 -> class 0 (wrong).
    assert m["knn3_accuracy"] == pytest.approx(0.5)


def test_ap_counts_a_query_without_relevant_items_as_zero() -> None:
    labels = np.array([[1, 1], [0, 1]])
    relevant_counts = np.array([0, 1])  # no catalog item of query 0's class at all
    scored = score_neighbours(
        labels, np.ones((2, 2)), np.array([0, 0]), relevant_counts, 2, (2,), 2
    )
    assert scored.metrics["mAP@2"] == pytest.approx((0.0 + 1.0) / 2)  # q1: relevant at rank 1


def test_knn_vote_majority_then_summed_similarity() -> None:
    labels = np.array([[1, 2, 1, 2], [1, 2, 1, 2], [3, 1, 3, 2]])
    scores = np.array([[0.9, 0.95, 0.1, 0.2], [0.9, 0.5, 0.8, 0.5], [0.1, 0.99, 0.1, 0.98]])
    # Row 0: 2-2 tie, class 2 sums 1.15 > 1.0; row 1: class 1 sums 1.7 > 1.0; row 2: majority 3.
    assert knn_vote(labels, scores, 4).tolist() == [2, 1, 3]


def test_exact_search_returns_the_known_neighbours() -> None:
    catalog = np.eye(4, dtype=np.float32)
    queries = np.array([[0.6, 0.8, 0, 0], [0, 0, 0.28, 0.96]], np.float32)
    scores, rows = exact_search(catalog, queries, 2)
    assert rows.tolist() == [[1, 0], [3, 2]]
    assert np.allclose(scores, [[0.8, 0.6], [0.96, 0.28]])
    with pytest.raises(EvaluationError, match="only 4 items"):
        exact_search(catalog, queries, 5)


# ---------------------------------------------------------------------------- evaluate()


def test_result_shape_and_ranges(result: dict[str, Any]) -> None:
    assert result["protocol"]["catalog"] == "fashion-mnist/train"
    assert result["protocol"]["queries"] == "fashion-mnist/test"
    assert result["protocol"]["k"] == [1, 10, 100]
    assert result["protocol"]["full"] is True
    assert (result["protocol"]["catalog_items"], result["protocol"]["query_items"]) == (400, 100)
    assert result["baselines"]["pca"]["dim"] == 16
    assert result["baselines"]["raw_pixels"]["dim"] == 784
    for block in (result["model"], result["baselines"]["raw_pixels"], result["baselines"]["pca"]):
        for name in METRICS:
            assert 0.0 <= block[name] <= 1.0, (name, block)
        assert block["P@1"] > 0.5  # the fake classes are easy shapes: far above chance (0.1)
    assert list(result["per_class"]) == list(CLASS_NAMES)
    assert sum(entry["queries"] for entry in result["per_class"].values()) == 100
    matrix = np.array(result["confusion"]["matrix"])
    assert matrix.shape == (10, 10)
    assert np.allclose(matrix.sum(axis=1), 1.0, atol=1e-3)
    # The diagonal of the confusion is the per-class P@10 of the model.
    per_class = [result["per_class"][name]["P@10"] for name in CLASS_NAMES]
    assert np.allclose(np.diag(matrix), per_class, atol=1e-3)
    assert result["index"] == {
        "type": "flat",
        "params": {},
        "count": 400,
        "dim": 16,
        "model": "pca",
        "code_size": 16,
        "exact": True,
        "recall@10": None,
    }
    assert result["seconds"] >= 0
    json.dumps(result)  # JSON-ready


def test_pca_model_equals_the_pca_baseline(result: dict[str, Any]) -> None:
    # The fixture's model IS PCA-16 fit on the catalog: both columns must agree.
    model = {name: result["model"][name] for name in METRICS}
    baseline = {name: result["baselines"]["pca"][name] for name in METRICS}
    assert model == pytest.approx(baseline, abs=1e-6)


def test_raw_pixel_baseline_matches_brute_force(
    result: dict[str, Any], fake_data_dir: Path
) -> None:
    train, test = load_split("train", fake_data_dir), load_split("test", fake_data_dir)

    def unit(x: np.ndarray) -> np.ndarray:
        x = x.reshape(len(x), -1).astype(np.float64)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    similarity = unit(test.images) @ unit(train.images).T
    top10 = np.argsort(-similarity, axis=1, kind="stable")[:, :10]
    p10 = (train.labels[top10] == test.labels[:, None]).mean()
    assert result["baselines"]["raw_pixels"]["P@10"] == pytest.approx(p10, abs=0.005)


def test_subset_catalog_and_limited_queries(pca_index_dir: Path, fake_data_dir: Path) -> None:
    subset = derived(SearchIndex.load(pca_index_dir), slice(0, 150))
    out = evaluate(subset, str(fake_data_dir), limit=20, baselines=False)
    protocol = out["protocol"]
    assert protocol["catalog"] == "fashion-mnist/train[:150]"
    assert protocol["queries"] == "fashion-mnist/test[:20]"
    assert protocol["full"] is False and "not comparable" in protocol["note"]
    assert out["baselines"] == {}
    assert sum(entry["queries"] for entry in out["per_class"].values()) == 20


def test_approximate_index_reports_recall(pca_index_dir: Path, fake_data_dir: Path) -> None:
    index = SearchIndex.load(pca_index_dir)
    manifest = json.loads(json.dumps(index.manifest))
    manifest["index"] = {"type": "hnsw", "params": {"M": 8, "efConstruction": 40, "efSearch": 16}}
    out = evaluate(derived(index, manifest=manifest), str(fake_data_dir), baselines=False)
    assert out["index"]["exact"] is False
    assert 0.5 <= out["index"]["recall@10"] <= 1.0


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda ix: {"labels": np.full(len(ix), -1, np.int16)}, "400 of 400 catalog items have no"),
        (lambda ix: {"labels": (ix.labels + 1) % 10}, "does not match the Fashion-MNIST train"),
        (
            lambda ix: {"ids": np.char.replace(ix.ids.astype(str), "/train/", "/test/")},
            "--split train",
        ),
        (lambda ix: {"ids": np.array([f"shoe{i}.png" for i in range(len(ix))])}, "not a Fashion"),
    ],
    ids=["unlabelled", "other-data", "test-split", "folder"],
)
def test_catalogs_the_protocol_cannot_score(
    pca_index_dir: Path, fake_data_dir: Path, change: Any, message: str
) -> None:
    index = SearchIndex.load(pca_index_dir)
    with pytest.raises(EvaluationError, match=message):
        evaluate(derived(index, **change(index)), str(fake_data_dir))


def test_foreign_catalog_source(pca_index_dir: Path, fake_data_dir: Path) -> None:
    index = SearchIndex.load(pca_index_dir)
    manifest = json.loads(json.dumps(index.manifest))
    manifest["catalog"]["source"] = "folder"
    with pytest.raises(EvaluationError, match="needs a Fashion-MNIST catalog"):
        evaluate(derived(index, manifest=manifest), str(fake_data_dir))


# ---------------------------------------------------------------------------- the CLI


def test_cli_json_is_one_object(pca_index_dir: Path, fake_data_dir: Path) -> None:
    res = cli(
        "evaluate", "--index-dir", pca_index_dir, "--data-dir", fake_data_dir, "--json",
        "--limit-queries", "50",
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    lines = res.stdout.strip().splitlines()
    assert len(lines) == 1
    out = json.loads(lines[0])
    keys = {"protocol", "model", "baselines", "per_class", "confusion", "index", "seconds"}
    assert keys <= set(out)
    assert set(METRICS) <= set(out["model"]) and set(METRICS) <= set(out["baselines"]["pca"])
    assert out["baselines"]["pca"]["dim"] == 16
    assert out["per_class"]["Ankle boot"]["P@10"] >= 0
    assert out["protocol"]["query_items"] == 50


def test_cli_table(pca_index_dir: Path, fake_data_dir: Path) -> None:
    res = cli("evaluate", "--index-dir", pca_index_dir, "--data-dir", fake_data_dir, "--quiet")
    assert res.exit_code == 0, res.output
    lines = res.stdout.splitlines()
    header = next(line for line in lines if line.startswith("metric"))
    assert header.split() == ["metric", "model", "(pca)", "raw", "pixels", "PCA-16"]
    p10 = next(line for line in lines if line.startswith("P@10 "))
    assert len(p10.split()) == 4 and all(0 <= float(v) <= 1 for v in p10.split()[1:])
    assert sum(line.startswith("Ankle boot") for line in lines) == 2  # per-class, confusion
    assert res.stderr == ""  # --quiet


def test_cli_unlabelled_catalog_is_one_line_exit_1(
    pca_index_dir: Path, fake_data_dir: Path, tmp_path: Path
) -> None:
    index = SearchIndex.load(pca_index_dir)
    derived(index, labels=np.full(len(index), -1, np.int16)).save(tmp_path / "unlabelled")
    res = cli("evaluate", "--index-dir", tmp_path / "unlabelled", "--data-dir", fake_data_dir)
    assert res.exit_code == 1
    assert res.stdout == ""
    err = res.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "no label" in err[0]
    assert "Traceback" not in res.output


def test_cli_usage_errors(tmp_path: Path) -> None:
    assert cli("evaluate", "--limit-queries", "0").exit_code == 2
    res = cli("evaluate", "--index-dir", tmp_path / "none")
    assert res.exit_code == 1 and res.stderr.startswith("error: ")


# ---------------------------------------------------------------------------- real training


@pytest.mark.slow
@pytest.mark.parametrize("kind", [kind for kind in RECIPES if kind != "pca"])
def test_every_kind_builds_exports_queries_and_evaluates(kind: str, tmp_path: Path) -> None:
    data = real_data_or_skip()
    directory = tmp_path / kind
    res = cli(
        "build-index", "--model", kind, "--limit", "1000", "--epochs", "1", "--code-size", "16",
        "--index-dir", directory, "--data-dir", data, "--quiet",
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    index = SearchIndex.load(directory)
    assert index.encoder_file.name == "encoder.onnx" and index.dim == 16
    assert "autoencoder.keras" in index.extra_files
    hits = index.query(np.asarray(index.images[5]), k=3)
    assert hits[0].id == "fashion-mnist/train/00005"
    assert hits[0].similarity == pytest.approx(1.0, abs=1e-4)
    res = cli(
        "evaluate", "--index-dir", directory, "--data-dir", data, "--json",
        "--limit-queries", "200", "--quiet",
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["model"]["kind"] == kind
    assert out["protocol"]["catalog"] == "fashion-mnist/train[:1000]"
    assert out["model"]["P@10"] > 0.3  # one epoch on 900 images: far above chance (0.1)
    # A fresh process, as a user runs it: the saved autoencoder must load without the classes
    # that building registered in this one (the VAE model, the gain layer).
    figure = tmp_path / "reconstruction.png"
    proc = subprocess.run(
        [sys.executable, "-c", "from simsearch.cli import app; app()", "reconstruct",
         "--index-dir", str(directory), "--out", str(figure), "--n", "4", "--quiet"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert figure.stat().st_size > 0


@pytest.mark.slow
def test_vae_encoder_outputs_the_posterior_mean(tmp_path: Path) -> None:
    from simsearch.encoders import load_encoder
    from simsearch.models import load_autoencoder
    from simsearch.training import TrainConfig, train

    images = load_split("train", real_data_or_skip()).images[:500]
    trained = train(images, TrainConfig(model="vae", code_size=8, epochs=1), tmp_path)
    exported = load_encoder(trained.encoder_file).encode(images[:4])
    autoencoder = load_autoencoder(tmp_path / "autoencoder.keras")
    mean, log_var = autoencoder.posterior(images[:4].astype(np.float32))
    assert exported.shape == (4, 8)
    assert np.allclose(exported, np.asarray(mean), atol=1e-4)
    assert not np.allclose(np.asarray(mean), np.asarray(log_var))
    # Inference decodes the mean: deterministic reconstructions in [0, 1].
    x = images[:4].astype(np.float32)
    a = np.asarray(autoencoder.predict(x, verbose=0))
    b = np.asarray(autoencoder.predict(x, verbose=0))
    assert a.shape == (4, 28, 28) and np.array_equal(a, b)
    assert a.min() >= 0 and a.max() <= 1


@pytest.mark.slow
def test_regression_small_dense_training_beats_raw_pixels(tmp_path: Path) -> None:
    """Quality guard: a small fixed-seed dense autoencoder must retrieve better than raw pixels.

    3,000 train items, 20 epochs of batch 32 (fewer epochs or bigger batches do not reliably
    beat pixels at this size), evaluated on the whole held-out test split with the protocol (the
    first 500 test queries alone favour pixels by 2 points). Measured on the 2-core reference
    machine: P@10 0.7398 vs raw pixels 0.7201 (PCA-32 0.7319).
    """
    from simsearch.build import BuildConfig, build_index
    from simsearch.training import TrainConfig

    data = str(real_data_or_skip())
    config = BuildConfig(
        limit=3000,
        data_dir=data,
        train=TrainConfig(model="dense", code_size=32, epochs=20, batch_size=32, seed=0),
    )
    build_index(config, tmp_path / "index")
    out = evaluate(SearchIndex.load(tmp_path / "index"), data)
    model, raw = out["model"]["P@10"], out["baselines"]["raw_pixels"]["P@10"]
    print(f"P@10 dense {model:.4f} vs raw pixels {raw:.4f} (PCA {out['baselines']['pca']['P@10']})")
    assert out["protocol"]["catalog"] == "fashion-mnist/train[:3000]"
    assert out["protocol"]["query_items"] == 10_000
    assert model > raw + 0.01, (model, raw)

"""``build-index --use-labels``: a training-only classifier head shapes the code."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from simsearch.cli import app
from simsearch.errors import ConfigError
from simsearch.training import TrainConfig, check_labels, train
from tests.fakedata import make_images
from tests.test_cli import assert_one_line_error

runner = CliRunner()


def run(*args: str | Path) -> object:
    return runner.invoke(app, [str(a) for a in args])


@pytest.mark.slow
def test_build_index_use_labels(fake_data_dir: Path, tmp_path: Path) -> None:
    """The flag trains (1 epoch, fake data), the manifest records it, the encoder stays
    pixels -> code and the training history carries the classification term."""
    directory = tmp_path / "labelled"
    result = run(
        "build-index", "--use-labels", "--epochs", "1", "--code-size", "16", "--batch-size", "64",
        "--data-dir", fake_data_dir, "--index-dir", directory, "--quiet",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    manifest = json.loads((directory / "manifest.json").read_text())
    model = manifest["model"]
    assert model["use_labels"] is True and model["model"] == "conv-denoising"
    # The model section records what was trained (no noise in the corruption, half-whitened,
    # mirror-averaged), the build section what was asked for (None = the mode's default).
    trained = [model[name] for name in ("noise", "whiten", "mirror", "tail_convs")]
    assert trained == [0.0, 0.25, True, 0]
    assert manifest["build"]["train"]["use_labels"] is True
    assert manifest["build"]["train"]["noise"] is None
    assert manifest["embedding_dim"] == 16 and manifest["count"] == 400
    from simsearch.search_index import SearchIndex

    index = SearchIndex.load(directory)
    history = json.loads(index.model_file("history.json").read_text())
    assert {"loss", "val_loss", "logits_loss", "reconstruction_loss"} <= set(history)
    assert index.embed(index.images[:3]).shape == (3, 16)
    assert index.query(index.images[7], k=1)[0].id == "fashion-mnist/train/00007"
    info = run("info", "--index-dir", directory, "--json")
    assert info.exit_code == 0, info.output


def test_use_labels_on_unlabelled_folder_is_one_line_error(tmp_path: Path) -> None:
    images, _ = make_images(30, seed=3)
    folder = tmp_path / "shop"
    for i, image in enumerate(images):
        sub = folder / ("a" if i % 2 else "b")
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(sub / f"{i:03d}.png")
    args = ["build-index", "--catalog", folder, "--use-labels", "--index-dir", tmp_path / "i"]
    result = run(*args, "--quiet")
    assert_one_line_error(result, "--use-labels needs labelled training images")
    assert "--labels-from-folders" in result.stderr  # type: ignore[attr-defined]
    assert not (tmp_path / "i").exists()


def test_use_labels_with_one_class_is_one_line_error(tmp_path: Path) -> None:
    images, _ = make_images(25, seed=4)
    folder = tmp_path / "shop" / "shoes"
    folder.mkdir(parents=True)
    for i, image in enumerate(images):
        Image.fromarray(image).save(folder / f"{i:03d}.png")
    result = run(
        "build-index", "--catalog", tmp_path / "shop", "--labels-from-folders", "--use-labels",
        "--index-dir", tmp_path / "i", "--quiet",
    )  # fmt: skip
    assert_one_line_error(result, "at least 2 classes")


def test_use_labels_refuses_pca(fake_data_dir: Path, tmp_path: Path) -> None:
    result = run(
        "build-index", "--model", "pca", "--use-labels", "--data-dir", fake_data_dir,
        "--index-dir", tmp_path / "i", "--quiet",
    )  # fmt: skip
    assert_one_line_error(result, "other than pca or vae")


def test_check_labels() -> None:
    with pytest.raises(ConfigError, match="no labels"):
        check_labels(None, 10)
    with pytest.raises(ConfigError, match="no labels"):
        check_labels(np.full(10, -1), 10)
    with pytest.raises(ConfigError, match="5 labels for 10"):
        check_labels(np.zeros(5), 10)
    out = check_labels(np.array([0, 1, -1, 1], np.int16), 4)  # unknown labels are kept as -1
    assert out.dtype == np.int32 and out.tolist() == [0, 1, -1, 1]


def test_train_without_labels_raises_before_training(tmp_path: Path) -> None:
    images, _ = make_images(40, seed=5)
    with pytest.raises(ConfigError, match="--use-labels"):
        train(images, TrainConfig(use_labels=True, epochs=1), tmp_path)
    assert not any(tmp_path.iterdir())


def test_margin_loss_ignores_unknown_labels() -> None:
    from simsearch.training import _margin_loss

    loss = _margin_loss(TrainConfig(label_scale=10.0, label_margin=0.2), 3)
    logits = np.array([[10.0, 0.0, 0.0], [0.0, 10.0, 0.0]], np.float32)
    values = np.asarray(loss(np.array([0, -1]), logits))
    assert values[1] == 0.0
    expected = -np.log(np.exp(8.0) / (np.exp(8.0) + 2.0))  # the margin lowers the true logit
    assert values[0] == pytest.approx(expected, rel=1e-4)

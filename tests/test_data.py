from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from simsearch import data
from simsearch.errors import DatasetCorruptError, DatasetNotFoundError
from tests.conftest import real_data_or_skip
from tests.fakedata import write_dataset


def test_reads_synthetic_idx_files(fake_data_dir: Path) -> None:
    split = data.load_split("train", fake_data_dir)
    assert split.images.shape == (400, 28, 28) and split.images.dtype == np.uint8
    assert split.labels.shape == (400,) and set(split.labels.tolist()) == set(range(10))
    assert split.ids[42] == "fashion-mnist/train/00042"
    assert data.load_split("test", fake_data_dir).ids[-1] == "fashion-mnist/test/00099"


def test_roundtrip_write_read(tmp_path: Path) -> None:
    array = np.arange(5 * 28 * 28, dtype=np.uint32).astype(np.uint8).reshape(5, 28, 28)
    data.write_idx(tmp_path / "x.gz", array)
    np.testing.assert_array_equal(
        data.read_idx(tmp_path / "x.gz", data.IMAGES_MAGIC, (28, 28)), array
    )


def _write_raw(path: Path, payload: bytes) -> Path:
    with gzip.open(path, "wb") as f:
        f.write(payload)
    return path


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (struct.pack(">IIII", 0x0803, 2, 28, 28) + bytes(28 * 28), "expected"),  # one image short
        (struct.pack(">IIII", 0x0801, 1, 28, 28) + bytes(28 * 28), "bad magic"),
        (struct.pack(">IIII", 0x0803, 1, 32, 32) + bytes(32 * 32), "item shape"),
        (b"\x00\x00", "too short"),
        (struct.pack(">IIII", 0x0803, 1, 28, 28) + bytes(28 * 28 + 1), "expected"),
    ],
)
def test_corrupt_idx_is_a_clear_error(tmp_path: Path, payload: bytes, message: str) -> None:
    path = _write_raw(tmp_path / "bad.gz", payload)
    with pytest.raises(DatasetCorruptError, match=message):
        data.read_idx(path, data.IMAGES_MAGIC, (28, 28))


def test_not_gzip_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "x.gz"
    path.write_bytes(b"this is not gzip")
    with pytest.raises(DatasetCorruptError, match="cannot read"):
        data.read_idx(path, data.IMAGES_MAGIC, (28, 28))


def test_lookup_order_explicit_then_keras_cache_then_debian(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    explicit = write_dataset(tmp_path / "explicit", 20, 10)
    cache = write_dataset(tmp_path / "home" / ".keras" / "datasets" / "fashion-mnist", 30, 10)
    monkeypatch.setattr(data, "DEBIAN_DIR", tmp_path / "debian")
    assert data.find_data_dir(explicit) == explicit
    monkeypatch.setenv("SIMSEARCH_DATA_DIR", str(explicit))
    assert data.find_data_dir() == explicit
    monkeypatch.delenv("SIMSEARCH_DATA_DIR")
    assert data.find_data_dir() == cache
    assert len(data.load_split("train").images) == 30


def test_explicit_dir_without_files_names_what_is_missing(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetNotFoundError, match=r"train-images-idx3-ubyte\.gz"):
        data.load_split("train", tmp_path / "empty")


def test_nothing_found_lists_every_option(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(data, "DEBIAN_DIR", tmp_path / "nowhere")
    # No network here: the Keras download fails, and the message lists all four options.
    monkeypatch.setattr(data, "_download_split", _no_download)
    with pytest.raises(DatasetNotFoundError) as info:
        data.load_split("train")
    message = str(info.value)
    for option in (
        "--data-dir",
        "SIMSEARCH_DATA_DIR",
        ".keras/datasets",
        "dataset-fashion-mnist",
        "network",
    ):
        assert option in message
    assert "\n" not in message


def _no_download(split: str) -> data.DatasetSplit:
    raise DatasetNotFoundError(data.not_found_message())


def test_reads_the_real_debian_files() -> None:
    directory = real_data_or_skip()
    train = data.load_split("train", directory)
    test = data.load_split("test", directory)
    assert train.images.shape == (60_000, 28, 28) and test.images.shape == (10_000, 28, 28)
    assert np.bincount(train.labels).tolist() == [6000] * 10
    assert np.bincount(test.labels).tolist() == [1000] * 10
    assert train.labels[0] == 9  # the first training item is an ankle boot

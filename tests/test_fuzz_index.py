"""Random bit flips in every file of an index and in its manifest: each command either gives
the right answer or one clean line (exit 1), never a traceback or a wrong label."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from simsearch import SearchIndex, storage
from simsearch.cli import app
from tests.conftest import with_index_type

runner = CliRunner()
ITEM = "fashion-mnist/train/00007"


@pytest.fixture(scope="module")
def fuzz_index(tmp_path_factory: pytest.TempPathFactory, pca_index_dir: Path) -> Path:
    """An HNSW index with removed items (faiss_rows.npy) and training files beside the encoder:
    every kind of file an index can hold."""
    work = tmp_path_factory.mktemp("fuzz")
    index = SearchIndex.load(pca_index_dir)
    hnsw = with_index_type(index, "hnsw", {"M": 8, "efConstruction": 40, "efSearch": 32})
    for name, data in (("history.json", b'{"loss": [0.31, 0.22]}'), ("curve.png", b"\x89PNG..")):
        (work / name).write_bytes(data)
        hnsw.extra_files[name] = storage.Existing(work / name, storage.sha256_file(work / name))
    hnsw.remove([f"fashion-mnist/train/{i:05d}" for i in range(0, 30, 3)])  # tombstones
    hnsw.save(work / "idx")
    assert "faiss_rows.npy" in hnsw.manifest["files"]
    for i, row in enumerate((5, 42)):
        Image.fromarray(np.asarray(hnsw.images[row])).save(work / f"q{i}.png")
    return work / "idx"


def commands(directory: Path, work: Path) -> list[list[str]]:
    queries = [str(work / "q0.png"), str(work / "q1.png")]
    return [
        ["query", *queries, "--json", "-k", "5", "--index-dir", str(directory)],
        ["info", "--json", "--index-dir", str(directory)],
        ["export-item", ITEM, str(work / "out.png"), "--index-dir", str(directory)],
        ["verify", "--index-dir", str(directory)],
    ]


def outcome(args: list[str]) -> tuple[int, str]:
    result: Any = runner.invoke(app, args)
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        args,
        result.exception,
    )
    assert "Traceback" not in result.output
    if result.exit_code:
        lines = result.stderr.strip().splitlines()
        assert result.exit_code == 1 and lines, (args, result.output)
        assert all(line.startswith("error: ") for line in lines), result.stderr
        if args[0] != "verify":  # verify names each damaged file on its own line
            assert len(lines) == 1, result.stderr
    return result.exit_code, result.stdout


def flip_cases(directory: Path, n: int, seed: int) -> list[tuple[str, int, int]]:
    """(file relative to the index, byte offset, bit) - the manifest drawn as often as all the
    data files together, the offsets uniform over each file."""
    rng = np.random.default_rng(seed)
    manifest = json.loads((directory / "manifest.json").read_text())
    files = [entry["path"] for entry in manifest["files"].values()]
    cases = []
    for _ in range(n):
        name = "manifest.json" if rng.random() < 0.5 else files[int(rng.integers(len(files)))]
        size = (directory / name).stat().st_size
        cases.append((name, int(rng.integers(size)), int(rng.integers(8))))
    return cases


def fuzz(fuzz_index: Path, tmp_path: Path, n: int, seed: int) -> None:
    work = fuzz_index.parent
    baseline = [outcome(args) for args in commands(fuzz_index, work)]
    assert all(code == 0 for code, _ in baseline)
    baseline_png = (work / "out.png").read_bytes()
    for name, offset, bit in flip_cases(fuzz_index, n, seed):
        damaged = tmp_path / "damaged"
        shutil.rmtree(damaged, ignore_errors=True)
        shutil.copytree(fuzz_index, damaged)
        path = damaged / name
        blob = bytearray(path.read_bytes())
        blob[offset] ^= 1 << bit
        path.write_bytes(bytes(blob))
        (work / "out.png").unlink(missing_ok=True)
        results = [outcome(args) for args in commands(damaged, work)]
        context = f"{name} byte {offset} bit {bit}"
        assert results[-1][0] == 1, f"verify missed {context}"
        for (code, stdout), (_, expected) in zip(results[:2], baseline[:2], strict=True):
            if code == 0:  # a correct answer: exactly what the intact index says
                assert stdout.replace(str(damaged), str(fuzz_index)) == expected, context
        if results[2][0] == 0:
            assert (work / "out.png").read_bytes() == baseline_png, context


def test_bit_flips_give_a_right_answer_or_one_line(fuzz_index: Path, tmp_path: Path) -> None:
    fuzz(fuzz_index, tmp_path, n=40, seed=0)


@pytest.mark.slow
def test_bit_flips_many(fuzz_index: Path, tmp_path: Path) -> None:
    fuzz(fuzz_index, tmp_path, n=400, seed=1)

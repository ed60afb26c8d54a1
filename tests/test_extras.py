"""Commands that need an optional extra say which one, in one line, when it is missing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

# Runs the real CLI in a fresh interpreter where TensorFlow and Keras cannot be imported
# (a None entry in sys.modules makes their import fail as if they were not installed).
WITHOUT_TENSORFLOW = (
    "import sys; sys.modules['keras'] = None; sys.modules['tensorflow'] = None; "
    "from simsearch.cli import app; app(prog_name='simsearch')"
)


def run_without_tensorflow(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", WITHOUT_TENSORFLOW, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_build_index_without_tensorflow_names_the_extra(
    fake_data_dir: Path, tmp_path: Path
) -> None:
    result = run_without_tensorflow(
        "build-index",
        "--data-dir",
        fake_data_dir,
        "--index-dir",
        tmp_path / "idx",
        "--epochs",
        "1",
        "-q",
    )
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: training an autoencoder needs TensorFlow and Keras")
    assert "pip install 'simsearch[train]'" in lines[0]
    assert not (tmp_path / "idx" / "manifest.json").exists()


def test_pca_build_needs_no_tensorflow(fake_data_dir: Path, tmp_path: Path) -> None:
    result = run_without_tensorflow(
        "build-index",
        "--model",
        "pca",
        "--code-size",
        "8",
        "--data-dir",
        fake_data_dir,
        "--index-dir",
        tmp_path / "idx",
        "-q",
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "idx" / "manifest.json").exists()

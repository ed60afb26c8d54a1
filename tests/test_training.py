"""Training: the recipes and what each kind fills in, the brightness jitter, the decoder refit,
the mirror-averaged encoder, the tail convs, the builder hook, TensorFlow's quiet start, and
that a conv-denoising autoencoder loads back. Tests that fit a model are marked slow."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from simsearch.errors import ConfigError
from simsearch.recipes import RECIPES, default_text
from simsearch.training import TrainConfig, train
from tests.conftest import real_data_or_skip
from tests.fakedata import make_images

REPOSITORY = Path(__file__).resolve().parent.parent


def test_random_gain_scales_each_image_in_training_only() -> None:
    from simsearch.models import random_gain

    layer = random_gain(0.6, 1.4)
    x = np.full((64, 28, 28), 0.5, np.float32)
    x[:, 0, 0] = 0.9  # 0.9 * gain > 1 for gains above 1.11: capped at 1
    assert np.array_equal(np.asarray(layer(x, training=False)), x)
    out = np.asarray(layer(x, training=True))
    gains = out[:, 5, 5] / 0.5
    assert gains.min() >= 0.6 - 1e-6 and gains.max() <= 1.4 + 1e-6
    assert gains.std() > 0.1  # one draw per image, not one per batch
    assert np.allclose(out[:, 1:, :], gains[:, None, None] * 0.5)  # the same gain over an image
    assert out.max() <= 1.0 and np.allclose(out[:, 0, 0], np.minimum(0.9 * gains, 1.0))


def test_conv_denoising_autoencoder_saves_and_loads_back(tmp_path: Path) -> None:
    """The saved training graph holds the custom gain layer: loading must find it."""
    from simsearch.models import build_model, load_autoencoder

    model = build_model("conv-denoising", 8)
    x = make_images(4, seed=1)[0].astype(np.float32)
    before = np.asarray(model.autoencoder(x, training=False))
    model.autoencoder.save(tmp_path / "autoencoder.keras")
    loaded = load_autoencoder(tmp_path / "autoencoder.keras")
    assert np.allclose(np.asarray(loaded(x, training=False)), before, atol=1e-6)


@pytest.mark.slow
def test_refit_decoder_fits_clean_codes_and_leaves_the_encoder() -> None:
    from keras import losses

    from simsearch.models import build_model
    from simsearch.training import refit_decoder

    model = build_model("conv-denoising", 8)
    x = make_images(1024, seed=3)[0].astype(np.float32)
    codes = np.asarray(model.encoder(x, training=False))
    before = float(np.mean(losses.binary_crossentropy(x / 255.0, model.autoencoder(x))))
    refit_decoder(model, codes, x, "binary_crossentropy", 32)
    after = float(np.mean(losses.binary_crossentropy(x / 255.0, model.autoencoder(x))))
    assert after < before - 0.03
    assert np.array_equal(np.asarray(model.encoder(x, training=False)), codes)


@pytest.mark.slow
def test_conv_denoising_encoder_gives_a_mirror_image_the_same_code(tmp_path: Path) -> None:
    """The exported encoder (ONNX, the query path) averages an image's code with its mirror
    image's, so a flipped photo finds the same items; the saved Keras copy loads and agrees."""
    from simsearch.encoders import load_encoder
    from simsearch.models import load_autoencoder

    images, _ = make_images(200, seed=3)
    trained = train(images, TrainConfig(code_size=8, epochs=1, batch_size=32), tmp_path)
    encoder = load_encoder(trained.encoder_file)
    codes = encoder.encode(images[:20])
    mirrored = encoder.encode(images[:20, :, ::-1])
    assert np.allclose(codes, mirrored, atol=1e-5)
    assert np.allclose(encoder.encode(images[:1]), codes[:1], atol=1e-5)  # a single query too
    assert not np.allclose(codes[0], codes[1], atol=1e-3)  # and still tells images apart
    keras_encoder = load_autoencoder(tmp_path / "encoder.keras")
    assert np.allclose(np.asarray(keras_encoder(images[:20].astype(np.float32))), codes, atol=1e-4)


@pytest.mark.slow
def test_no_mirror_exports_the_plain_encoder(tmp_path: Path) -> None:
    from simsearch.encoders import load_encoder

    images, _ = make_images(200, seed=3)
    config = TrainConfig(code_size=8, epochs=1, batch_size=32, mirror=False)
    encoder = load_encoder(train(images, config, tmp_path).encoder_file)
    assert not np.allclose(encoder.encode(images[:20]), encoder.encode(images[:20, :, ::-1]))
    with pytest.raises(ConfigError, match="--mirror needs an autoencoder"):
        TrainConfig(model="pca", mirror=True).validate()


def test_effective_config_fills_in_each_kinds_defaults() -> None:
    """What is trained (and recorded in the manifest's model section) for each "None = the
    default" option; values given explicitly are kept."""

    def filled(config: TrainConfig) -> tuple[Any, ...]:
        effective = config.effective()
        return (effective.whiten, effective.mirror, effective.tail_convs, effective.noise)

    assert filled(TrainConfig()) == (0.25, True, 0, 0.1)
    assert filled(TrainConfig(use_labels=True)) == (0.25, True, 0, 0.0)
    assert filled(TrainConfig(model="pca")) == (0.0, False, 0, None)
    assert filled(TrainConfig(model="dense", use_labels=True)) == (0.0, False, 0, None)
    given = TrainConfig(use_labels=True, whiten=0.0, mirror=False, tail_convs=2, noise=0.05)
    assert filled(given) == (0.0, False, 2, 0.05)


@pytest.mark.slow
def test_tail_convs_deepen_the_exported_encoder(tmp_path: Path) -> None:
    from simsearch.encoders import load_encoder
    from simsearch.models import load_autoencoder

    images, _ = make_images(200, seed=3)
    config = TrainConfig(code_size=8, epochs=1, batch_size=32, tail_convs=2)
    trained = train(images, config, tmp_path)
    assert trained.describe()["tail_convs"] == 2
    strides = sorted(conv.strides for conv in convs(load_autoencoder(tmp_path / "encoder.keras")))
    assert strides == [(1, 1), (1, 1), (2, 2), (2, 2)]
    assert load_encoder(trained.encoder_file).encode(images[:3]).shape == (3, 8)


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (TrainConfig(tail_convs=5), "between 0 and 4"),
        (TrainConfig(model="dense", tail_convs=1), "needs --model conv-denoising"),
        (TrainConfig(noise=0.6), "between 0 and 0.5"),
        (TrainConfig(model="vae", noise=0.1), "needs --model conv-denoising"),
        (TrainConfig(model="pca", whiten=0.25), "--whiten needs an autoencoder"),
        (TrainConfig(model="pca", mirror=True), "--mirror needs an autoencoder"),
        (TrainConfig(code_size=1), "--code-size must be between 2 and 1024"),
        (TrainConfig(epochs=0), "--epochs must be at least 1"),
        (TrainConfig(model="transformer"), "unknown --model 'transformer'; choose one of"),
        (TrainConfig(model="vae", use_labels=True), "other than pca or vae"),
    ],
)
def test_impossible_configurations_are_refused_before_training(
    bad: TrainConfig, message: str, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError, match=message):
        train(make_images(40, seed=1)[0], bad, tmp_path)
    assert not any(tmp_path.iterdir())


def convs(layer: Any) -> list[Any]:
    """The Conv2D layers of a Keras model, through its nested models."""
    import keras

    if isinstance(layer, keras.layers.Conv2D):
        return [layer]
    return [conv for inner in getattr(layer, "layers", []) for conv in convs(inner)]


def test_recipes_are_the_defaults_the_help_states() -> None:
    """The CLI's help is written from the recipe table: change a recipe, the help follows."""
    from typer.testing import CliRunner

    from simsearch.cli import app

    assert default_text("whiten") == "0.25 for conv-denoising, else 0"
    assert default_text("mirror") == "on for conv-denoising, else off"
    help_text = " ".join(CliRunner().invoke(app, ["build-index", "--help"]).stdout.split())
    assert f"[{default_text('whiten')}]" in help_text
    spec = RECIPES["conv-denoising"].corruption
    assert spec is not None
    assert f"[{spec.noise:g}; {RECIPES['conv-denoising'].labels_noise:g} with --use-labels]" in (
        help_text
    )
    for kind in RECIPES:
        assert kind in help_text
    for name in ("code_size", "epochs", "batch_size", "seed", "loss"):
        option = "--" + name.replace("_", "-")
        default = f"[default: {getattr(TrainConfig, name)}]"
        assert f"{option} " in help_text and default in help_text.split(option, 1)[1][:200]


def _python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"} | env
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=300,
        env=environment,
        cwd=REPOSITORY,
        check=True,
    )


QUIET_IMPORT = (
    "import os, sys\n"
    "from simsearch.models import import_keras\n"
    "os.write(2, b'before\\n')\n"
    "keras = import_keras()\n"
    "print('keras', keras.__version__, file=sys.stderr)\n"
)


def test_start_up_lines_are_filtered_from_stderr() -> None:
    """What import_keras does around the import, in a process without TensorFlow: what is
    written to file descriptor 2 (as TensorFlow's C++ code writes) is held back; the start-up
    notices are dropped, everything else is passed on in order."""
    code = (
        "import os, sys\n"
        "from simsearch.models import _startup_lines_hidden\n"
        "with _startup_lines_hidden():\n"
        "    os.write(2, b'WARNING: All log messages before absl::InitializeLog() is called\\n')\n"
        "    os.write(2, b'I0000 port.cc:153] oneDNN custom operations are on. You may see\\n')\n"
        "    os.write(2, b'a real warning\\n')\n"
        "    print('from Python', file=sys.stderr)\n"
        "print('after', file=sys.stderr)\n"
    )
    assert _python(code).stderr == "a real warning\nfrom Python\nafter\n"


@pytest.mark.slow
def test_tensorflow_starts_quietly() -> None:
    """TensorFlow's real start-up lines are the ones filtered; what else the process writes to
    stderr around the import still shows."""
    lines = _python(QUIET_IMPORT).stderr.splitlines()
    assert lines[0] == "before" and lines[1].startswith("keras ") and len(lines) == 2, lines


@pytest.mark.slow
def test_tensorflow_start_up_lines_show_when_asked() -> None:
    """TF_CPP_MIN_LOG_LEVEL=0 (what build-index --verbose sets) shows them."""
    stderr = _python(QUIET_IMPORT, TF_CPP_MIN_LOG_LEVEL="0").stderr
    assert "oneDNN" in stderr or "absl" in stderr, stderr


@pytest.mark.slow
def test_build_index_prints_no_tensorflow_lines(fake_data_dir: Path, tmp_path: Path) -> None:
    """A whole build in a fresh process, as a user runs it: its stderr holds simsearch's status
    lines only."""
    args = ["--model", "dense", "--epochs", "1", "--code-size", "8", "--limit", "200"]
    args += ["--data-dir", str(fake_data_dir), "--index-dir", str(tmp_path / "index")]
    run = subprocess.run(
        [sys.executable, "-m", "simsearch.cli", "build-index", *args],
        capture_output=True,
        text=True,
        timeout=600,
        env={k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"},
        cwd=REPOSITORY,
    )
    assert run.returncode == 0, run.stderr
    for noise in ("oneDNN", "absl", "cpu_feature_guard", "WARNING", "Traceback"):
        assert noise not in run.stderr, run.stderr
    assert "built " in run.stdout


@pytest.mark.slow
def test_a_builder_replaces_the_network_and_keeps_the_training(tmp_path: Path) -> None:
    """The public hook research variants use: ``train(..., builder=...)`` trains the network
    the builder returns (here narrower convs) with the library's corruption-based validation,
    mirror averaging, whitening and ONNX export."""
    from simsearch import models
    from simsearch.encoders import load_encoder
    from simsearch.recipes import Corruption

    def narrow(config: TrainConfig) -> models.Autoencoder:
        encoder = models.conv_encoder(config.code_size, ((8, 2), (16, 2)), hidden=32)
        decoder = models.mlp_decoder(config.code_size, (64,))
        corrupt = models.corruption(Corruption(shift=1, zoom=0.0, noise=0.05, gain=None))
        return models.denoising_autoencoder(encoder, decoder, corrupt)

    images, _ = make_images(200, seed=3)
    config = TrainConfig(code_size=8, epochs=1, batch_size=32)
    trained = train(images, config, tmp_path, builder=narrow)
    filters = sorted(
        conv.filters for conv in convs(models.load_autoencoder(tmp_path / "encoder.keras"))
    )
    assert filters == [8, 16]
    encoder = load_encoder(trained.encoder_file)
    assert np.allclose(encoder.encode(images[:5]), encoder.encode(images[:5, :, ::-1]), atol=1e-5)
    assert trained.config.whiten == 0.25 and trained.config.mirror is True


@pytest.mark.slow
@pytest.mark.parametrize(
    "variant", [["--variant", "sphere"], ["--variant", "erase", "--contrast-weight", "0.1"]]
)
def test_research_script_runs_a_variant(variant: list[str]) -> None:
    """scripts/research/research_model.py builds its variants through the hook: its own
    training graph, an extra corruption layer, the contrastive wrapper (one epoch on 300
    images; scored on the whole protocol)."""
    data = real_data_or_skip()
    run = subprocess.run(
        [sys.executable, "scripts/research/research_model.py", *variant, "--epochs", "1",
         "--limit", "300", "--whiten-powers", "0", "--data-dir", str(data)],
        capture_output=True, text=True, timeout=900, cwd=REPOSITORY,
        env=os.environ | {"PYTHONPATH": str(REPOSITORY)},
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    assert out["epochs_run"] == 1
    assert 0.3 < out["results"]["whiten=0.0"]["protocol"]["P@10"] <= 1.0

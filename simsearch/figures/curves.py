"""Training curves (matplotlib): train and validation loss per epoch."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from simsearch.errors import ConfigError
from simsearch.figures.drawing import CLASS_COLORS, INK, check_writable, new_figure, save_figure

CURVE_SIZE = (6.0, 3.6)  # inches at DPI: 600 x 360 px
LOSS_NAMES = {"bce": "binary cross-entropy", "mse": "mean squared error"}


def loss_label(loss: str) -> str:
    """The y-axis label for a TrainConfig.loss: "loss (binary cross-entropy)"."""
    return f"loss ({LOSS_NAMES[loss]})" if loss in LOSS_NAMES else "loss"


def training_curve(
    history: dict[str, list[float]],
    out: str | os.PathLike[str],
    loss_name: str = "loss",
    title: str = "autoencoder training",
) -> Path:
    """Train and validation loss per epoch (Keras ``History.history``) into the PNG ``out``.

    Marks the epoch with the lowest validation loss (the weights early stopping keeps).
    CURVE_SIZE inches at DPI (600 x 360 px). Raises ConfigError (no loss values) or OutputError.
    """
    out = check_writable(out)
    losses = [float(v) for v in history.get("loss", [])]
    if not losses:
        raise ConfigError("the training history has no 'loss' values")
    fig, ax = new_figure(CURVE_SIZE)
    from matplotlib.ticker import MaxNLocator

    epochs = list(range(1, len(losses) + 1))
    ax.plot(epochs, losses, marker="o", markersize=4, color=CLASS_COLORS[0], label="train")
    val = [float(v) for v in history.get("val_loss", [])]
    if val:
        ax.plot(
            epochs[: len(val)],
            val,
            marker="o",
            markersize=4,
            color=CLASS_COLORS[1],
            label="validation",
        )
        best = int(np.argmin(val))
        ax.scatter(
            [best + 1],
            [val[best]],
            s=140,
            facecolors="none",
            edgecolors=INK,
            zorder=3,
            label=f"best validation: {val[best]:.4f} (epoch {best + 1})",
        )
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel(loss_name)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(frameon=False)
    return save_figure(fig, out)

"""What a training run uses: one recipe per model kind, and :class:`TrainConfig`.

A :class:`Recipe` holds what a model kind trains with unless told otherwise (whitening, mirror
averaging and, for ``conv-denoising``, the training corruption with its ``--use-labels``
variant); :class:`TrainConfig` holds what every kind shares (code size, epochs, optimiser, ...).
Each default has its home here: :meth:`TrainConfig.effective` fills in the kind's, the models
and their corruption read them, and the CLI's help is written from them.

Importing this module is free (no numpy, no TensorFlow): the CLI reads it to write its help.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from simsearch.errors import ConfigError


@dataclass(frozen=True)
class Corruption:
    """The random corruption of a denoising autoencoder's training input (the target stays
    clean), so the code learns to ignore what a photographed query brings: integer shifts of up
    to ``shift`` px, a horizontal flip, a zoom of +-``zoom``, Gaussian noise of std ``noise`` (on
    [0, 1] pixels) and a brightness ``gain`` drawn per image (None = none)."""

    shift: int = 2
    zoom: float = 0.1
    noise: float = 0.1
    gain: tuple[float, float] | None = (0.6, 1.4)


@dataclass(frozen=True)
class Recipe:
    """A model kind's own defaults: what ``build-index --model KIND`` trains when no option says
    otherwise. ``whiten``: the eigenvalue power of the PCA-whitening folded into the exported
    encoder (0 = none); ``mirror``: the exported code is the mean of the image's and its mirror
    image's; ``corruption``: the training corruption (None = the kind has none to tune);
    ``labels_noise``: the corruption's noise with ``--use-labels``."""

    description: str
    whiten: float = 0.0
    mirror: bool = False
    corruption: Corruption | None = None
    labels_noise: float | None = None


DEFAULT_MODEL = "conv-denoising"
# Each part of the default recipe raised P@10 on the validation slice; the noise is left out
# with labels, where it capped the classifier head (scripts/research/README.md).
RECIPES: dict[str, Recipe] = {
    "conv-denoising": Recipe(
        "convolutional denoising autoencoder (the default): Conv2D+BN encoder trained to "
        "reconstruct the clean image from shifted, flipped, zoomed, noisy and brightness-"
        "jittered inputs; code = mean of the image's and its mirror image's, half-whitened",
        whiten=0.25,
        mirror=True,
        corruption=Corruption(),
        labels_noise=0.0,
    ),
    "pca": Recipe("PCA of the pixels (the optimal linear autoencoder); no TensorFlow, seconds"),
    "dense": Recipe("dense autoencoder 784-512-128-D-128-512-784"),
    "deep": Recipe("deep dense autoencoder 784-1024-512-256-128-D and mirror"),
    "conv": Recipe(
        "convolutional autoencoder: strided Conv2D + BN encoder, Conv2DTranspose decoder"
    ),
    "denoising": Recipe("dense autoencoder trained to remove Gaussian noise and 1-2 px shifts"),
    "sparse": Recipe("dense autoencoder with an L1 activity penalty on the code"),
    "vae": Recipe(
        "variational autoencoder 784-512-128-(mean, log-variance D)-128-512-784; the embedding "
        "is the mean of q(z|x)"
    ),
}
MAX_TAIL_CONVS = 4


def recipe(kind: str) -> Recipe:
    """The recipe of ``kind``; ConfigError naming the kinds when there is none."""
    if kind not in RECIPES:
        raise ConfigError(f"unknown --model {kind!r}; choose one of {', '.join(RECIPES)}")
    return RECIPES[kind]


def default_text(field: str) -> str:
    """A recipe field's defaults in words, for the CLI's help: "0.25 for conv-denoising, else 0"
    (the kinds that differ from the most common value), or the one value every kind shares."""
    values = {kind: getattr(entry, field) for kind, entry in RECIPES.items()}
    listed = list(values.values())
    common = max(listed, key=listed.count)
    special = [f"{_word(v)} for {kind}" for kind, v in values.items() if v != common]
    return ", ".join([*special, f"else {_word(common)}"]) if special else _word(common)


def _word(value: object) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    return f"{value:g}" if isinstance(value, float) else str(value)


def corruption_kinds() -> list[str]:
    """The kinds that train on a corrupted input whose noise ``--noise`` sets."""
    return [kind for kind, entry in RECIPES.items() if entry.corruption is not None]


@dataclass
class TrainConfig:
    """Everything that decides what a training run produces. ``None`` means "the kind's recipe"
    (:meth:`effective` fills it in); the other defaults are the same for every kind."""

    model: str = DEFAULT_MODEL
    code_size: int = 64
    epochs: int = 20
    batch_size: int = 256
    learning_rate: float = 2e-3  # AdamW peak rate, cosine-decayed to 0 over the run
    weight_decay: float = 1e-4
    whiten: float | None = None
    mirror: bool | None = None
    # conv-denoising: stride-1 convs at 7x7 after the strided ones (a deeper encoder, slower).
    tail_convs: int = 0
    noise: float | None = None  # std of the training corruption's Gaussian noise
    loss: str = "bce"  # binary cross-entropy on [0, 1] pixels, or "mse"
    validation_fraction: float = 0.1  # held out from the TRAIN split; test is the query set
    patience: int = 3  # early stopping on the validation loss (with labels: the head's accuracy)
    seed: int = 0
    # --use-labels: a training-only cosine-softmax head on the code (scaled cosine logits with
    # an additive margin, CosFace's values), loss = reconstruction + label_weight * its
    # cross-entropy.
    use_labels: bool = False
    label_weight: float = 1.0
    label_scale: float = 30.0
    label_margin: float = 0.35

    def validate(self) -> None:
        """ConfigError (one line, naming the option) for anything that cannot be trained."""
        entry = recipe(self.model)
        if not 2 <= self.code_size <= 1024:
            raise ConfigError(f"--code-size must be between 2 and 1024, got {self.code_size}")
        if self.epochs < 1:
            raise ConfigError(f"--epochs must be at least 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.loss not in ("bce", "mse"):
            raise ConfigError(f"--loss must be bce or mse, got {self.loss!r}")
        if self.whiten is not None and not 0.0 <= self.whiten <= 0.5:
            raise ConfigError(f"--whiten must be between 0 and 0.5, got {self.whiten}")
        if not 0.0 < self.validation_fraction < 0.5:
            raise ConfigError("validation fraction must be in (0, 0.5)")
        if self.mirror and self.model == "pca":
            raise ConfigError("--mirror needs an autoencoder model, not pca")
        if self.whiten and self.model == "pca":
            raise ConfigError("--whiten needs an autoencoder model, not pca")
        if not 0 <= self.tail_convs <= MAX_TAIL_CONVS:
            raise ConfigError(
                f"--tail-convs must be between 0 and {MAX_TAIL_CONVS}, got {self.tail_convs}"
            )
        if self.tail_convs and self.model != "conv-denoising":
            raise ConfigError(f"--tail-convs needs --model conv-denoising, got {self.model!r}")
        if self.noise is not None and not 0.0 <= self.noise <= 0.5:
            raise ConfigError(f"--noise must be between 0 and 0.5, got {self.noise}")
        if self.noise is not None and entry.corruption is None:
            kinds = " or ".join(corruption_kinds())
            raise ConfigError(f"--noise needs --model {kinds}, got {self.model!r}")
        if self.use_labels and self.model in ("pca", "vae"):
            raise ConfigError(
                f"--use-labels needs an autoencoder model other than pca or vae, got {self.model!r}"
            )
        if self.label_weight < 0 or self.label_scale <= 0:
            raise ConfigError("label weight must be >= 0 and label scale > 0")

    def effective(self) -> TrainConfig:
        """This configuration with every ``None`` filled in from the kind's recipe: what is
        trained (and recorded in the manifest's model section)."""
        entry = recipe(self.model)
        noise = None
        if entry.corruption is not None:
            noise = entry.corruption.noise
            if self.use_labels and entry.labels_noise is not None:
                noise = entry.labels_noise
        return replace(
            self,
            whiten=self.whiten if self.whiten is not None else entry.whiten,
            mirror=self.mirror if self.mirror is not None else entry.mirror,
            noise=self.noise if self.noise is not None else noise,
        )

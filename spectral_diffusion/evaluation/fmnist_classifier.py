"""An offline feature extractor for Fréchet distances on Fashion-MNIST.

InceptionV3 weights must be downloaded, which offline clusters and CI cannot do, and Inception
features of 28x28 grey clothes are a poor measure anyway. Instead a small CNN classifier is
trained on the Fashion-MNIST train split (deterministically, once, in about 3 minutes on a
2-core CPU: ``classifier_training.py``) and its penultimate layer serves as the feature space,
as in the "FID with a LeNet" practice for MNIST-like data.

Inputs are the framework's Fashion-MNIST format (``spectral_diffusion/data/fashion_mnist.py``):
float images ``(N, 1, 32, 32)`` in [-1, 1], the 28x28 pictures padded with the background -1.

This module loads given weights. Where the default weights come from (a repository-local copy
at :data:`DEFAULT_WEIGHTS`, else the per-user cache, trained there on first use) is
``fmnist_weights.py``. Typical use::

    extractor = FMNISTFeatureExtractor(resolve_weights(None)).to(device)
    stats = FeatureStatistics(extractor=extractor.identity, metadata={"split": "test"})
    for images, _ in loader:
        stats.update(extractor(images.to(device)))
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from torch import nn

from spectral_diffusion.utils.cache import user_cache_dir
from spectral_diffusion.utils.checkpoint import load_checkpoint, load_network_weights

#: A repository-local copy of the default weights, relative to the current working directory
#: (normally the repository root). Read before the per-user cache when it exists: it is where
#: ``scripts/train_fid_classifier.py`` wrote them before there was a cache, and statistics made
#: with those weights stay valid.
DEFAULT_WEIGHTS = Path("checkpoints/fmnist_classifier.pt")
#: File name of the default weights in the per-user cache (``utils/cache.py``).
CACHED_WEIGHTS_NAME = "fmnist_classifier.pt"
#: The command that creates the weights, quoted in error messages.
TRAIN_COMMAND = "python scripts/train_fid_classifier.py"
#: Input size the classifier is built for: Fashion-MNIST padded as the framework's data module does.
IMAGE_SHAPE = (1, 32, 32)
NUM_CLASSES = 10


def _conv_block(c_in: int, c_out: int) -> nn.Sequential:
    """3x3 convolution, batch norm, ReLU, 2x2 max pool (halves the size)."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    )


class FMNISTClassifier(nn.Module):
    """A small CNN for ``(N, 1, 32, 32)`` Fashion-MNIST images in [-1, 1].

    Three conv blocks (32x32 -> 16 -> 8 -> 4, about 10M MACs per image, so it trains on a CPU in
    minutes) and a fully connected layer of ``num_features`` ReLU units on the flattened 4x4 maps:
    that layer, the input of the final linear classifier, is what :meth:`features` returns (as
    Inception's pool3 layer is for FID).

    Args:
        width: channels of the first conv block (doubled in each of the next two).
        num_features: dimension ``d`` of the feature vectors.
        dropout: dropout before the final classifier (training only; features are taken before it).
    """

    def __init__(self, width: int = 32, num_features: int = 128, dropout: float = 0.2) -> None:
        super().__init__()
        self.num_features = num_features
        self.body = nn.Sequential(
            _conv_block(IMAGE_SHAPE[0], width),
            _conv_block(width, 2 * width),
            _conv_block(2 * width, 4 * width),
            nn.Flatten(),
            nn.Linear(4 * width * (IMAGE_SHAPE[1] // 8) * (IMAGE_SHAPE[2] // 8), num_features),
            nn.ReLU(inplace=True),
        )
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(num_features, NUM_CLASSES))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate-layer features ``(N, num_features)``."""
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits ``(N, 10)``."""
        return self.head(self.body(x))


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file: identifies the exact weights that feature statistics were made with."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class FMNISTFeatureExtractor(nn.Module):
    """Frozen :class:`FMNISTClassifier` mapping images ``(N, 1, 32, 32)`` in [-1, 1] to features ``(N, d)``.

    It has a ``num_features`` attribute, so it can also be passed to torchmetrics'
    ``FrechetInceptionDistance(feature=...)``. It stays in eval mode (a ``.train()`` call, e.g. from
    a parent module, does not switch batch norm or dropout back on) and has no trainable parameters.

    Args:
        weights_path: a state dict saved by ``scripts/train_fid_classifier.py`` (or trained on
            first use: ``fmnist_weights.resolve_weights(None)`` gives the default weights).
        batch_size: images per forward pass; larger inputs are processed in chunks of this size.
    """

    #: Recorded with feature statistics (together with :attr:`weights_sha256`).
    name = "fmnist_classifier"

    def __init__(self, weights_path: str | Path, batch_size: int = 1024) -> None:
        super().__init__()
        path = Path(weights_path).expanduser()
        if not path.is_file():
            # A path that was asked for is never replaced by other weights: they would measure
            # in another feature space.
            raise FileNotFoundError(
                f"Fashion-MNIST feature extractor weights {path} (absolute: {path.absolute()}) do not exist. "
                f"Create them there with `{TRAIN_COMMAND} output={path.absolute()}`, or leave weights_path unset "
                "(e.g. metrics.fid.weights_path=null) for the default weights, which are trained once on first "
                f"use and cached in {user_cache_dir() / CACHED_WEIGHTS_NAME}."
            )
        state = load_checkpoint(path)
        if not isinstance(state, dict) or not {"body.0.0.weight", "head.1.weight"} <= state.keys():
            raise ValueError(
                f"{path} does not hold FMNISTClassifier weights (a state dict with keys 'body.0.0.weight', "
                "'head.1.weight', ...); "
                f"create them with `{TRAIN_COMMAND}`"
            )
        width = state["body.0.0.weight"].shape[0]
        num_features = state["head.1.weight"].shape[1]
        self.classifier = FMNISTClassifier(width=width, num_features=num_features)
        load_network_weights(self.classifier, state, str(path))
        self.classifier.requires_grad_(False)
        self.classifier.eval()
        self.num_features = num_features
        self.batch_size = batch_size
        self.weights_path = path
        self.weights_sha256 = file_sha256(path)

    @property
    def identity(self) -> str:
        """Name and weights hash, for :class:`FeatureStatistics`: statistics made with other weights
        are then refused rather than compared."""
        return f"{self.name}-{self.weights_sha256[:12]}"

    def train(self, mode: bool = True) -> FMNISTFeatureExtractor:
        """Always eval: the extractor is frozen, whatever a parent module asks."""
        return super().train(False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Features ``(N, d)`` (float32, on the extractor's device) of images ``(N, 1, 32, 32)`` in [-1, 1]."""
        if not isinstance(images, torch.Tensor) or images.ndim != 4 or tuple(images.shape[1:]) != IMAGE_SHAPE:
            shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise ValueError(
                f"the Fashion-MNIST feature extractor takes images of shape (N, 1, 32, 32), got {shape}; "
                "pad 28x28 images to 32x32 with -1 as FashionMNISTDataModule does"
            )
        if not images.is_floating_point():
            raise ValueError(
                f"the Fashion-MNIST feature extractor takes float images in [-1, 1], got dtype {images.dtype}; "
                "convert uint8 images with x.float() / 127.5 - 1"
            )
        parameter = next(self.classifier.parameters())
        images = images.to(device=parameter.device, dtype=parameter.dtype)
        if len(images) == 0:
            return images.new_zeros(0, self.num_features)
        return torch.cat([self.classifier.features(chunk) for chunk in images.split(self.batch_size)])

    def extra_repr(self) -> str:
        return f"weights={self.weights_path}, sha256={self.weights_sha256[:12]}, num_features={self.num_features}"

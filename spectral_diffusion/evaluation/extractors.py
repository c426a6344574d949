"""Pluggable feature extractors for Fréchet distances and KID: ``build_feature_extractor(name, ...)``.

Every extractor takes **uint8 images** ``(N, C, H, W)`` (what a saved PNG holds: generated
samples are quantised exactly like the reference images) and returns float features ``(N, d)``.
It also carries

- ``identity``: network + weights hash (+ resize), stored with cached statistics so that
  statistics of another extractor are refused rather than compared;
- ``metric_key``: the name its Fréchet distance is reported under. Only Inception features give
  ``fid``; the offline Fashion-MNIST classifier gives ``fd_fmnist``, never called FID;
- ``resize``: how images are brought to the network's input size (recorded in the protocol).

Extractors:

- ``inception``: InceptionV3 (torch-fidelity TF-ported weights), 2048-d (:mod:`.inception`).
- ``fmnist_classifier``: the offline Fashion-MNIST classifier, 128-d (:mod:`.fmnist_classifier`);
  without ``weights_path``, its default weights, trained once on first use (:mod:`.fmnist_weights`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from spectral_diffusion.evaluation.fmnist_classifier import IMAGE_SHAPE, FMNISTFeatureExtractor
from spectral_diffusion.evaluation.fmnist_weights import resolve_weights
from spectral_diffusion.evaluation.inception import InceptionFeatureExtractor


class FMNISTClassifierExtractor(nn.Module):
    """uint8 ``(N, 1, 32, 32)`` images -> features of the offline Fashion-MNIST classifier.

    The uint8 values are mapped back to [-1, 1] exactly as the data module maps the IDX bytes,
    so real images reach the classifier bit-identical to training. No resize: the classifier takes
    the framework's padded 32x32 format and anything else is refused.

    ``weights_path=None`` means the default weights, trained and cached on first use
    (:func:`~.fmnist_weights.default_weights`); a given path must exist.
    """

    name = "fmnist_classifier"
    metric_key = "fd_fmnist"
    resize = "none (Fashion-MNIST padded to 1x32x32)"

    def __init__(self, weights_path: str | Path | None = None, batch_size: int = 1024) -> None:
        super().__init__()
        self.classifier = FMNISTFeatureExtractor(resolve_weights(weights_path), batch_size=batch_size)
        self.num_features = self.classifier.num_features

    @property
    def identity(self) -> str:
        return self.classifier.identity

    def train(self, mode: bool = True) -> FMNISTClassifierExtractor:
        return super().train(False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dtype != torch.uint8 or tuple(images.shape[1:]) != IMAGE_SHAPE:
            raise ValueError(
                f"the fmnist_classifier extractor takes uint8 images (N, 1, 32, 32), got {images.dtype} "
                f"{tuple(images.shape)}: it only measures Fashion-MNIST-shaped models (use inception otherwise)"
            )
        return self.classifier(images.float() / 127.5 - 1.0)


#: name -> constructor(weights_path, batch_size)
EXTRACTORS: dict[str, Callable[..., nn.Module]] = {
    "inception": InceptionFeatureExtractor,
    "fmnist_classifier": FMNISTClassifierExtractor,
}


def build_feature_extractor(
    name: str,
    weights_path: str | Path | None = None,
    device: torch.device | str = "cpu",
    batch_size: int | None = None,
) -> nn.Module:
    """The feature extractor ``name`` (``inception`` or ``fmnist_classifier``), frozen, on ``device``."""
    if name not in EXTRACTORS:
        raise ValueError(f"metrics.fid.feature_extractor={name!r} is not known; choose one of {sorted(EXTRACTORS)}")
    kwargs = {} if batch_size is None else {"batch_size": batch_size}
    return EXTRACTORS[name](weights_path, **kwargs).to(device).eval()

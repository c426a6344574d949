"""InceptionV3 pool features for FID/KID: torch-fidelity's TF-ported weights, through torchmetrics.

The network is torchmetrics' ``NoTrainInceptionV3`` (torch-fidelity's port of the TensorFlow
2015-12-05 graph that the original FID code used), returning the 2048-d pool3 features.

**Resize, pinned:** images are resized to 299x299 with torch-fidelity's
``interpolate_bilinear_2d_like_tensorflow1x`` (TF1 bilinear, no antialiasing), i.e. torchmetrics'
``antialias=False``. That is what torch-fidelity (and so the LDM protocol) and the TF FID code
do; torchmetrics' newer default ``antialias=True`` gives different numbers. :data:`RESIZE` is
recorded with every result.

Weights: downloaded by torch-fidelity on first use (into the torch hub cache), or read from a
local file (``metrics.fid.weights_path``), which is first checked with ``weights_only=True``.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from torch import nn

from spectral_diffusion.utils.checkpoint import load_checkpoint
from spectral_diffusion.utils.errors import UserError

#: The resize every Inception feature in this project goes through (recorded in metrics.json).
RESIZE = "torch-fidelity tf1 bilinear to 299x299, no antialias (torchmetrics antialias=False)"
#: torch-fidelity's weights file, as its URL names it: identifies the default weights.
DEFAULT_WEIGHTS_NAME = "weights-inception-2015-12-05-6726825d.pth"
NUM_FEATURES = 2048


class InceptionWeightsUnavailableError(UserError, RuntimeError):
    """The Inception weights could not be downloaded and no local file was given."""


def _weights_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:12]


class InceptionFeatureExtractor(nn.Module):
    """uint8 images ``(N, C, H, W)`` (C = 1 or 3, any size) -> InceptionV3 pool features ``(N, 2048)``.

    Grey images are repeated to three channels, as torch-fidelity does.

    Args:
        weights_path: a local copy of torch-fidelity's weights (``None``: download, or the hub cache).
        batch_size: images per forward pass.
    """

    name = "inception_v3"
    metric_key = "fid"
    resize = RESIZE
    num_features = NUM_FEATURES

    def __init__(self, weights_path: str | Path | None = None, batch_size: int = 64) -> None:
        super().__init__()
        try:
            from torchmetrics.image.fid import NoTrainInceptionV3
        except ImportError as err:  # pragma: no cover - torchmetrics is a dependency
            raise ImportError("Inception features need torchmetrics: pip install torchmetrics") from err
        path = None
        if weights_path is not None:
            path = Path(weights_path).expanduser()
            if not path.is_file():
                raise FileNotFoundError(
                    f"metrics.fid.weights_path={path} does not exist; it must be torch-fidelity's "
                    f"{DEFAULT_WEIGHTS_NAME} (downloadable from the torch-fidelity v0.2.0 release)"
                )
            # torch-fidelity reads the file with weights_only=False; make sure it holds tensors only.
            load_checkpoint(path)
        try:
            self.net = NoTrainInceptionV3(
                name="inception-v3-compat",
                features_list=[str(NUM_FEATURES)],
                feature_extractor_weights_path=None if path is None else str(path),
                antialias=False,
            )
        except ModuleNotFoundError as err:
            raise ModuleNotFoundError(
                "Inception features need torch-fidelity (pip install torch-fidelity), which holds the "
                "TF-ported InceptionV3"
            ) from err
        except OSError as err:  # URLError, socket errors, ... when offline
            raise InceptionWeightsUnavailableError(
                f"cannot download the InceptionV3 weights ({type(err).__name__}: {err}). Offline, download "
                f"torch-fidelity's {DEFAULT_WEIGHTS_NAME} elsewhere and pass metrics.fid.weights_path=FILE, "
                "or use metrics.fid.feature_extractor=fmnist_classifier (reported as fd_fmnist, not FID)"
            ) from err
        self.net.requires_grad_(False)
        self.batch_size = batch_size
        self.weights = DEFAULT_WEIGHTS_NAME if path is None else f"{path.name}-{_weights_digest(path)}"

    @property
    def identity(self) -> str:
        """Network, weights and resize: statistics from anything else are refused."""
        return f"{self.name}-2048-{self.weights}-tf1bilinear"

    def train(self, mode: bool = True) -> InceptionFeatureExtractor:
        return super().train(False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] not in (1, 3):
            raise ValueError(
                f"Inception features take uint8 images (N, 1 or 3, H, W); got {images.dtype} {tuple(images.shape)}"
            )
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        device = next(self.net.parameters()).device
        if len(images) == 0:
            return torch.zeros(0, NUM_FEATURES, device=device)
        return torch.cat([self.net(chunk.to(device)) for chunk in images.split(self.batch_size)]).float()

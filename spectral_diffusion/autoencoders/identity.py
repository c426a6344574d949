"""Pixel space as a first stage: the diffusion model sees the images themselves."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from spectral_diffusion.autoencoders.base import FirstStage


class IdentityFirstStage(FirstStage):
    """Encode and decode are the identity; factor 1, shift 0 and scale 1, fixed.

    Images in [-1, 1] already have the range a diffusion schedule expects, which is why pixel-space
    models are trained on them unscaled; the statistics are therefore marked as set.
    """

    def __init__(self, channels: int) -> None:
        super().__init__(image_channels=channels, latent_channels=channels, downsample_factor=1)
        self.latent_stats_set.fill_(True)
        self._freeze()

    def encode_raw(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return x

    def decode_raw(self, raw: torch.Tensor) -> torch.Tensor:
        return raw

    def set_latent_stats(self, shift: torch.Tensor | Sequence[float], scale: torch.Tensor | Sequence[float]) -> None:
        """Only the fixed 0 / 1 are accepted: pixel space is not re-normalised."""
        shift_t = self._as_channel_vector(shift, "shift")
        scale_t = self._as_channel_vector(scale, "scale")
        if not (torch.all(shift_t == 0) and torch.all(scale_t == 1)):
            raise ValueError(
                "IdentityFirstStage (pixel space, autoencoder=identity) has fixed latent stats shift=0, scale=1; "
                f"got shift={shift_t.tolist()}, scale={scale_t.tolist()}"
            )

    def _describe_source(self) -> dict[str, Any]:
        return {"kind": "identity", "source": None}

"""Training objectives, each a small callable."""

from spectral_diffusion.losses.denoising import DenoisingLoss

__all__ = ["DenoisingLoss"]

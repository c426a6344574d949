"""Training objectives, each a small callable."""

from spectral_diffusion.losses.autoencoder import AutoencoderLoss, ExtraTerm
from spectral_diffusion.losses.denoising import DenoisingLoss
from spectral_diffusion.losses.distillation import SpectralDistillationLoss

__all__ = ["AutoencoderLoss", "DenoisingLoss", "ExtraTerm", "SpectralDistillationLoss"]

"""First stages: frozen maps between images and (normalised) latents, and the framework's own autoencoder.

Select one with the ``autoencoder`` config group: ``identity`` (pixel space), ``framework`` (a
checkpoint of ``python train.py experiment=fmnist_autoencoder``) or ``diffusers`` (a pretrained
``AutoencoderKL`` / ``VQModel``).
"""

from spectral_diffusion.autoencoders.base import FirstStage
from spectral_diffusion.autoencoders.diffusers_autoencoder import AutoencoderLoadError, DiffusersAutoencoder
from spectral_diffusion.autoencoders.framework_autoencoder import FrameworkAutoencoder, KLFirstStage
from spectral_diffusion.autoencoders.identity import IdentityFirstStage
from spectral_diffusion.autoencoders.kl_autoencoder import KLAutoencoder
from spectral_diffusion.autoencoders.stats import estimate_latent_stats

__all__ = [
    "AutoencoderLoadError",
    "DiffusersAutoencoder",
    "FirstStage",
    "FrameworkAutoencoder",
    "IdentityFirstStage",
    "KLAutoencoder",
    "KLFirstStage",
    "estimate_latent_stats",
]

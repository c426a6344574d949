"""spectral-diffusion: train slim (latent) diffusion models, distil them from large teachers, and
measure them by FID and MACs."""

__version__ = "0.1.0"

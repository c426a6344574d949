"""spectral-diffusion: train slim (latent) diffusion models, distil them from large teachers, and
measure them by FID and MACs.

The diffusers classes of exported models are importable from the top level, as diffusers' loaders
look them up: ``model_index.json`` names each component as ``["spectral_diffusion", CLASS]``, and
diffusers resolves that with ``getattr(spectral_diffusion, CLASS)``. They are imported on first use,
so ``import spectral_diffusion`` stays free of torch and diffusers.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

#: Top-level name -> the module that defines it.
_LAZY_EXPORTS = {
    "SpectralUNet2DModel": "spectral_diffusion.networks.diffusers_unet",
    "SpectralAutoencoderKL": "spectral_diffusion.autoencoders.diffusers_kl",
    "SpectralDiffusionPipeline": "spectral_diffusion.pipelines.spectral_pipeline",
}

__all__ = ["__version__", *_LAZY_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _LAZY_EXPORTS:
        return getattr(importlib.import_module(_LAZY_EXPORTS[name]), name)
    raise AttributeError(f"module 'spectral_diffusion' has no attribute {name!r}")

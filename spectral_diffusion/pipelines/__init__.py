"""diffusers pipelines of this framework's models (the exported ``SpectralDiffusionPipeline``)."""

from spectral_diffusion.pipelines.spectral_pipeline import SpectralDiffusionPipeline

__all__ = ["SpectralDiffusionPipeline"]

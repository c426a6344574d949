"""The diffusion process (schedule, noising, parameterisations) and its samplers."""

from spectral_diffusion.diffusion.process import PREDICTION_TYPES, GaussianDiffusion
from spectral_diffusion.diffusion.samplers import DDIMSampler, DDPMSampler, Sampler, sample, spaced_timesteps
from spectral_diffusion.diffusion.schedules import SCHEDULES, make_betas

__all__ = [
    "PREDICTION_TYPES",
    "SCHEDULES",
    "DDIMSampler",
    "DDPMSampler",
    "GaussianDiffusion",
    "Sampler",
    "make_betas",
    "sample",
    "spaced_timesteps",
]

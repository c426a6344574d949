"""The diffusion process (schedule, noising, parameterisations) and its samplers."""

from spectral_diffusion.diffusion.guidance import GUIDANCE_AFTER, ClassifierFreeGuidance
from spectral_diffusion.diffusion.process import PREDICTION_TYPES, GaussianDiffusion
from spectral_diffusion.diffusion.samplers import (
    DDIMSampler,
    DDPMSampler,
    DPMSolverPlusPlusSampler,
    Sampler,
    dpm_solver_timesteps,
    randn,
    sample,
    spaced_timesteps,
)
from spectral_diffusion.diffusion.schedules import SCHEDULES, make_betas

__all__ = [
    "GUIDANCE_AFTER",
    "PREDICTION_TYPES",
    "SCHEDULES",
    "ClassifierFreeGuidance",
    "DDIMSampler",
    "DDPMSampler",
    "DPMSolverPlusPlusSampler",
    "GaussianDiffusion",
    "Sampler",
    "dpm_solver_timesteps",
    "make_betas",
    "randn",
    "sample",
    "spaced_timesteps",
]

"""Lightning wiring: the LightningModule, its callbacks and the assembly from config."""

from spectral_diffusion.training.callbacks import EMA, SampleGrid
from spectral_diffusion.training.module import DiffusionModule, step_generator

__all__ = ["EMA", "DiffusionModule", "SampleGrid", "step_generator"]

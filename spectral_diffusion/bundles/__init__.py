"""Trained models as one object (:class:`ModelBundle`), and reading diffusers model folders into one."""

from spectral_diffusion.bundles.bundle import ModelBundle
from spectral_diffusion.bundles.diffusers_folder import (
    DiffusersLoadError,
    DiffusersUNet,
    diffusion_from_scheduler_config,
    load_diffusers_bundle,
)

__all__ = [
    "DiffusersLoadError",
    "DiffusersUNet",
    "ModelBundle",
    "diffusion_from_scheduler_config",
    "load_diffusers_bundle",
]

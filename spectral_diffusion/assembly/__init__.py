"""The one place that turns configs into objects: the parts of a run from the composed config, and
trained models from checkpoints through one loader with an allow-list.

- ``parts.py``: network, process, sampler, first stage, teacher from the config the user composed;
- ``load.py: load_run``: a ``train.py`` checkpoint or a diffusers folder as a ``ModelBundle``;
- ``registry.py``: what a checkpoint's stored config may have rebuilt, group by group;
- ``teachers.py``, ``first_stages.py``: the config targets of ``teacher=`` and ``autoencoder=framework``.

It sits above every part it builds and below evaluation, training and the entry points.
"""

from spectral_diffusion.assembly.load import load_run, stored_data
from spectral_diffusion.assembly.parts import (
    build_diffusion,
    build_first_stage,
    build_network,
    build_sampler,
    build_teacher,
    check_data_fits_model,
    is_identity,
    loss_needs_teacher,
)
from spectral_diffusion.assembly.registry import build_stored, register
from spectral_diffusion.utils.errors import ConfigError

__all__ = [
    "ConfigError",
    "build_diffusion",
    "build_first_stage",
    "build_network",
    "build_sampler",
    "build_stored",
    "build_teacher",
    "check_data_fits_model",
    "is_identity",
    "load_run",
    "loss_needs_teacher",
    "register",
    "stored_data",
]

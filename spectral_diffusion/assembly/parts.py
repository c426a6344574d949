"""The run's parts from a composed Hydra config: network, process, sampler, first stage, teacher.

These read the config the user composed (``configs/`` plus the command line), which is trusted, so
they go through ``hydra.utils.instantiate`` and may name any class. A checkpoint's stored config is
not trusted and is rebuilt by ``load.py`` through the registry instead.
"""

from __future__ import annotations

import logging

import hydra
import lightning as L
from omegaconf import DictConfig, OmegaConf
from torch import nn

from spectral_diffusion.diffusion.process import GaussianDiffusion
from spectral_diffusion.diffusion.samplers import Sampler
from spectral_diffusion.losses.distillation import SpectralDistillationLoss
from spectral_diffusion.teachers import Teacher
from spectral_diffusion.utils.errors import ConfigError

log = logging.getLogger(__name__)


def build_network(model_cfg: DictConfig) -> nn.Module:
    """The network described by a ``model/`` preset."""
    if "_target_" not in model_cfg:
        raise ConfigError(f"the model config has no _target_: {OmegaConf.to_yaml(model_cfg)}")
    return hydra.utils.instantiate(model_cfg)


def build_diffusion(diffusion_cfg: DictConfig) -> GaussianDiffusion:
    return hydra.utils.instantiate(diffusion_cfg)


def build_sampler(sampler_cfg: DictConfig, diffusion: GaussianDiffusion) -> Sampler:
    return hydra.utils.instantiate(sampler_cfg, diffusion=diffusion)


def is_identity(first_stage: nn.Module | None) -> bool:
    return first_stage is None or type(first_stage).__name__ == "IdentityFirstStage"


def build_first_stage(autoencoder_cfg: DictConfig | None) -> nn.Module | None:
    """The frozen first stage of an ``autoencoder/`` config; ``None`` for pixel space (identity)."""
    if autoencoder_cfg is None or "_target_" not in autoencoder_cfg:
        return None
    first_stage = hydra.utils.instantiate(autoencoder_cfg)
    return None if is_identity(first_stage) else first_stage


def build_teacher(teacher_cfg: DictConfig | None) -> Teacher | None:
    """The frozen teacher of a ``teacher/`` config (``None`` for ``teacher=none``)."""
    if teacher_cfg is None or "_target_" not in teacher_cfg:
        return None
    teacher = hydra.utils.instantiate(teacher_cfg)
    log.info("teacher %s: %.2fM parameters", teacher.source, sum(p.numel() for p in teacher.net.parameters()) / 1e6)
    return teacher


def loss_needs_teacher(loss_cfg: DictConfig) -> bool:
    return issubclass(hydra.utils.get_class(loss_cfg._target_), SpectralDistillationLoss)


def check_data_fits_model(
    datamodule: L.LightningDataModule, net: nn.Module, first_stage: nn.Module | None = None
) -> None:
    """Fail early, naming both configs, if the data's sample shape is not what the network takes.

    Images are compared through the first stage (an image of 3x256x256 is a 3x64x64 VQ-f4 latent).
    """
    data_shape = getattr(datamodule, "image_shape", None)
    if data_shape is not None and first_stage is not None and not getattr(datamodule, "provides_latents", False):
        data_shape = first_stage.latent_shape(tuple(data_shape))
    net_shape = (getattr(net, "in_channels", None), getattr(net, "image_size", None), getattr(net, "image_size", None))
    if data_shape is not None and None not in net_shape and tuple(data_shape) != net_shape:
        raise ConfigError(
            f"the data gives samples of shape {tuple(data_shape)} but the model takes {net_shape} "
            f"(model.in_channels={net_shape[0]}, model.image_size={net_shape[1]}); pick a model preset "
            "for this data, or override model.in_channels / model.image_size"
        )
    labels = getattr(datamodule, "num_classes", None)
    wanted = getattr(net, "num_classes", None)
    if wanted is not None and labels is not None and wanted != labels:
        raise ConfigError(f"model.num_classes={wanted} but the data has {labels} classes")
    context = getattr(datamodule, "context_dim", None)  # text embeddings (data/text_embeddings.py)
    if context is not None and getattr(net, "context_dim", None) != context:
        raise ConfigError(
            f"the data's text embeddings are {context} wide but model.context_dim={getattr(net, 'context_dim', None)}; "
            f"set model.context_dim={context}"
        )

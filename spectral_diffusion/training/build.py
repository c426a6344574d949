"""Assemble the run's parts from a Hydra config: the one place that knows the config's layout.

``train.py`` and ``evaluate.py`` both go through here, so a checkpoint's stored config rebuilds
exactly the model that wrote it.
"""

from __future__ import annotations

import logging

import hydra
import lightning as L
from omegaconf import DictConfig, OmegaConf
from torch import nn

from spectral_diffusion.diffusion.process import GaussianDiffusion
from spectral_diffusion.diffusion.samplers import Sampler
from spectral_diffusion.training.module import DiffusionModule

log = logging.getLogger(__name__)


class ConfigError(ValueError):
    """The config asks for something inconsistent (the message names the keys)."""


def build_network(model_cfg: DictConfig) -> nn.Module:
    """The network described by a ``model/`` preset."""
    if "_target_" not in model_cfg:
        raise ConfigError(f"the model config has no _target_: {OmegaConf.to_yaml(model_cfg)}")
    return hydra.utils.instantiate(model_cfg)


def build_diffusion(diffusion_cfg: DictConfig) -> GaussianDiffusion:
    return hydra.utils.instantiate(diffusion_cfg)


def build_sampler(sampler_cfg: DictConfig, diffusion: GaussianDiffusion) -> Sampler:
    return hydra.utils.instantiate(sampler_cfg, diffusion=diffusion)


def build_module(cfg: DictConfig, net: nn.Module | None = None) -> DiffusionModule:
    """The LightningModule of a run config (``net`` overrides building it from ``cfg.model``)."""
    net = net if net is not None else build_network(cfg.model)
    diffusion = build_diffusion(cfg.diffusion)
    loss = hydra.utils.instantiate(cfg.loss, diffusion=diffusion)
    sampler = build_sampler(cfg.sampler, diffusion)
    module = hydra.utils.instantiate(cfg.module, net=net, diffusion=diffusion, loss=loss, sampler=sampler)
    # Set after instantiation: Hydra would try to instantiate the _target_ keys inside it.
    module.run_config = OmegaConf.to_container(cfg, resolve=True)
    return module


def check_data_fits_model(datamodule: L.LightningDataModule, net: nn.Module) -> None:
    """Fail early, naming both configs, if the data's sample shape is not what the network takes."""
    data_shape = getattr(datamodule, "image_shape", None)
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

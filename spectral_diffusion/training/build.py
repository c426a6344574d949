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
from spectral_diffusion.losses.distillation import SpectralDistillationLoss
from spectral_diffusion.teachers import Teacher, check_teacher_fits

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


def build_module(cfg: DictConfig, net: nn.Module | None = None) -> L.LightningModule:
    """The LightningModule of a run config (``net`` overrides building it from ``cfg.model``).

    ``module=autoencoder`` runs train the framework's own autoencoder; everything else trains a
    diffusion model, distilled from ``teacher=`` when the loss asks for one.
    """
    if str(cfg.module._target_).endswith("AutoencoderModule"):
        from spectral_diffusion.training.autoencoder_module import build_autoencoder_module

        return build_autoencoder_module(cfg)

    net = net if net is not None else build_network(cfg.model)
    diffusion = build_diffusion(cfg.diffusion)
    first_stage = build_first_stage(cfg.get("autoencoder"))

    loss_kwargs: dict = {}
    adopted_first_stage: dict | None = None
    teacher_cfg = cfg.get("teacher")
    if loss_needs_teacher(cfg.loss):
        teacher = build_teacher(teacher_cfg)
        if teacher is None:
            raise ConfigError(
                f"loss={cfg.loss._target_.rsplit('.', 1)[-1]} distils from a teacher, but there is none (teacher=none). Add "
                "teacher=checkpoint teacher.ckpt_path=PATH (a run of this framework) or "
                "teacher=diffusers teacher.path=DIR_OR_HUB_ID, or use loss=denoising"
            )
        if teacher.first_stage is not None and is_identity(first_stage):
            # The student lives in the teacher's latent space unless told otherwise.
            log.info("using the teacher's autoencoder as the first stage: %s", teacher.first_stage.describe())
            first_stage = teacher.first_stage
            adopted_first_stage = teacher.first_stage_config
        check_teacher_fits(teacher, net, diffusion)
        loss_kwargs = {"teacher": teacher, "student": net}
    elif teacher_cfg is not None and "_target_" in teacher_cfg:
        log.warning(
            "teacher=%s is configured but loss=%s does not use it; not loading it",
            teacher_cfg._target_,
            cfg.loss._target_,
        )

    loss = hydra.utils.instantiate(cfg.loss, diffusion=diffusion, **loss_kwargs)
    sampler = build_sampler(cfg.sampler, diffusion)
    module = hydra.utils.instantiate(
        cfg.module, net=net, diffusion=diffusion, loss=loss, sampler=sampler, first_stage=first_stage
    )
    # Set after instantiation: Hydra would try to instantiate the _target_ keys inside it.
    module.run_config = OmegaConf.to_container(cfg, resolve=True)
    if adopted_first_stage is not None:
        # Record the teacher's autoencoder as this run's own, so the checkpoint decodes by itself.
        module.run_config["autoencoder"] = adopted_first_stage
    return module


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

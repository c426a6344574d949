"""The LightningModule of a run config, wired from the parts that ``assembly/`` builds.

``build_module`` is where ``train.py`` gets its module: a :class:`DiffusionModule` (distilled from
``teacher=`` when the loss asks for one), or with ``module=autoencoder`` the framework's own
:class:`AutoencoderModule`.
"""

from __future__ import annotations

import logging

import hydra
import lightning as L
from omegaconf import DictConfig, OmegaConf
from torch import nn

from spectral_diffusion.assembly import (
    build_diffusion,
    build_first_stage,
    build_network,
    build_sampler,
    build_teacher,
    is_identity,
    loss_needs_teacher,
)
from spectral_diffusion.autoencoders.framework_autoencoder import KL_TARGETS
from spectral_diffusion.losses.autoencoder import AutoencoderLoss
from spectral_diffusion.teachers import check_teacher_fits
from spectral_diffusion.training.autoencoder_module import AutoencoderModule
from spectral_diffusion.utils.errors import ConfigError

log = logging.getLogger(__name__)


def run_record(cfg: DictConfig) -> dict:
    """The resolved run config that every checkpoint stores: the run's settings, not Hydra's own node.

    Set after instantiation: Hydra would try to instantiate the ``_target_`` keys inside it.
    """
    return {k: v for k, v in OmegaConf.to_container(cfg, resolve=True).items() if k != "hydra"}


def build_module(cfg: DictConfig, net: nn.Module | None = None) -> L.LightningModule:
    """The LightningModule of a run config (``net`` overrides building it from ``cfg.model``).

    ``module=autoencoder`` runs train the framework's own autoencoder; everything else trains a
    diffusion model, distilled from ``teacher=`` when the loss asks for one.
    """
    if str(cfg.module._target_).endswith("AutoencoderModule"):
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
                f"loss={cfg.loss._target_.rsplit('.', 1)[-1]} distils from a teacher, but there is none (teacher=none). "
                "Add teacher=checkpoint teacher.ckpt_path=PATH (a run of this framework) or "
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
    module.run_config = run_record(cfg)
    if adopted_first_stage is not None:
        # Record the teacher's autoencoder as this run's own, so the checkpoint decodes by itself.
        module.run_config["autoencoder"] = adopted_first_stage
    return module


def build_autoencoder_module(cfg: DictConfig) -> AutoencoderModule:
    """The :class:`AutoencoderModule` of a run config (``model`` must be a KLAutoencoder preset)."""
    target = cfg.model.get("_target_")
    if target not in KL_TARGETS:
        raise ConfigError(
            f"module=autoencoder trains a KLAutoencoder, but model._target_={target}; "
            "use model=autoencoder/fmnist_kl_f4 (or experiment=fmnist_autoencoder)"
        )
    net = hydra.utils.instantiate(cfg.model)
    loss = hydra.utils.instantiate(cfg.loss)
    if not isinstance(loss, AutoencoderLoss):
        raise ConfigError(
            f"module=autoencoder needs loss=autoencoder, but loss._target_={cfg.loss._target_} "
            "(experiment=fmnist_autoencoder sets both)"
        )
    module = hydra.utils.instantiate(cfg.module, net=net, loss=loss)
    module.run_config = run_record(cfg)
    return module

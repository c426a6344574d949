"""Teachers from this framework's own checkpoints (e.g. an ``ldm_*`` or ``fmnist_base`` run)."""

from __future__ import annotations

from pathlib import Path

import hydra
import torch
from omegaconf import OmegaConf
from torch import nn

from spectral_diffusion.diffusion.process import GaussianDiffusion
from spectral_diffusion.teachers.base import Teacher
from spectral_diffusion.utils.checkpoint import (
    METADATA_KEY,
    checkpoint_config,
    load_checkpoint,
    load_network_weights,
    network_state_dict,
)


def _call(net: nn.Module, x_t: torch.Tensor, t: torch.Tensor, class_labels: torch.Tensor | None) -> torch.Tensor:
    return net(x_t, t, class_labels)


def load_checkpoint_teacher(ckpt_path: str, use_ema: bool = True) -> Teacher:
    """The network, diffusion process and first stage of a checkpoint written by ``train.py``.

    The EMA weights are used when the checkpoint has them (``use_ema``); the first stage is rebuilt
    from the stored ``autoencoder`` config with the latent statistics stored next to it.
    """
    checkpoint = load_checkpoint(ckpt_path, map_location="cpu")
    config = checkpoint_config(checkpoint)
    metadata = checkpoint.get(METADATA_KEY, {})
    if config is None or "diffusion" not in metadata:
        raise ValueError(
            f"teacher.ckpt_path={ckpt_path} holds no spectral_diffusion config: it was not written by this "
            "framework's train.py. For a diffusers model use teacher=diffusers teacher.path=DIR_OR_HUB_ID"
        )
    # A checkpoint is user input: only this framework's classes may be built from its config.
    for key in ("model", "autoencoder"):
        target = str((config.get(key) or {}).get("_target_", "spectral_diffusion."))
        if not target.startswith("spectral_diffusion."):
            raise ValueError(
                f"teacher.ckpt_path={ckpt_path}: its {key} config names _target_={target!r}, which is not a "
                "class of this framework; refusing to build it"
            )
    net = hydra.utils.instantiate(OmegaConf.create(config["model"]))
    load_network_weights(net, network_state_dict(checkpoint, use_ema=use_ema), source=str(ckpt_path))
    diffusion = GaussianDiffusion(**metadata["diffusion"])

    first_stage = None
    stored_stage = config.get("autoencoder")
    if stored_stage and "Identity" not in str(stored_stage.get("_target_", "")):
        first_stage = hydra.utils.instantiate(OmegaConf.create(stored_stage))
        stats = metadata.get("latent_stats")
        if stats:
            first_stage.set_latent_stats(torch.tensor(stats["shift"]), torch.tensor(stats["scale"]))

    size = net.image_size
    return Teacher(
        net=net,
        call=_call,
        diffusion=diffusion,
        input_shape=(net.in_channels, size, size),
        num_classes=getattr(net, "num_classes", None),
        first_stage=first_stage,
        source=f"checkpoint:{Path(ckpt_path).expanduser().resolve()}",
        first_stage_config=dict(stored_stage) if first_stage is not None else None,
    )

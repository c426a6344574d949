"""What evaluation needs of a model, whether a checkpoint of this framework or a frozen teacher.

:class:`GenerativeModel` bundles the denoiser, its diffusion process, its first stage (the latent
space; ``None`` for pixel space) and its sample shape, so that generation, cost, throughput and the
spectral report treat a student and its teacher alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from spectral_diffusion.diffusion.process import GaussianDiffusion
from spectral_diffusion.training.build import ConfigError, build_diffusion, build_first_stage, build_network
from spectral_diffusion.utils.checkpoint import (
    METADATA_KEY,
    checkpoint_config,
    load_checkpoint,
    load_network_weights,
    network_state_dict,
)


@dataclass
class GenerativeModel:
    """A denoiser ``(x_t, t, class_labels) -> output`` with what is needed to sample and decode.

    Attributes:
        denoiser: the network (or a :class:`~spectral_diffusion.teachers.Teacher`), in eval mode.
        diffusion: its diffusion process (schedule, prediction type).
        first_stage: its frozen autoencoder, ``None`` in pixel space.
        shape: ``(C, H, W)`` of what the denoiser denoises.
        num_classes: classes of a class-conditional model, else ``None``.
        source: where it came from (checkpoint path, teacher source).
        weights: ``ema`` or ``raw`` for this framework's checkpoints, else ``""``.
        global_step: training step of a checkpoint (-1 if unknown).
        config: the run config stored in its checkpoint (``None`` for other sources).
    """

    denoiser: nn.Module
    diffusion: GaussianDiffusion
    first_stage: nn.Module | None
    shape: tuple[int, int, int]
    num_classes: int | None = None
    source: str = ""
    weights: str = ""
    global_step: int = -1
    config: dict[str, Any] | None = None

    @property
    def class_conditional(self) -> bool:
        return self.num_classes is not None

    def to(self, device: torch.device | str) -> GenerativeModel:
        self.denoiser.to(device)
        if self.first_stage is not None:
            self.first_stage.to(device)
        return self

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Samples in data space (images nominally in [-1, 1])."""
        return self.first_stage.decode(latents) if self.first_stage is not None else latents

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images into the space the denoiser works in (identity in pixel space)."""
        return self.first_stage.encode(images) if self.first_stage is not None else images


def stored_first_stage(checkpoint: dict[str, Any], stored: dict[str, Any]) -> nn.Module | None:
    """The first stage a checkpoint was trained in (``None``: pixel space), with its latent statistics."""
    first_stage = build_first_stage(OmegaConf.create(stored["autoencoder"])) if stored.get("autoencoder") else None
    if first_stage is None:
        return None
    stats = checkpoint.get(METADATA_KEY, {}).get("latent_stats")
    if stats:
        first_stage.set_latent_stats(torch.tensor(stats["shift"]), torch.tensor(stats["scale"]))
    return first_stage


def load_checkpoint_model(
    ckpt_path: str | Path, use_ema: bool = True, model_cfg: DictConfig | None = None
) -> GenerativeModel:
    """The network of a ``train.py`` checkpoint, EMA weights by default, with its process and first stage.

    ``model_cfg`` overrides the stored model config (it must then fit the weights). A checkpoint
    without the EMA callback's raw copy has only one set of weights; ``weights`` says ``raw`` then.
    """
    checkpoint = load_checkpoint(ckpt_path)
    stored = checkpoint_config(checkpoint)
    if model_cfg is None and stored is None:
        raise ConfigError(
            f"{ckpt_path} holds no spectral_diffusion config; pass the model it was trained with, model=PRESET"
        )
    net = build_network(model_cfg if model_cfg is not None else OmegaConf.create(stored["model"]))
    load_network_weights(net, network_state_dict(checkpoint, use_ema=use_ema), source=str(ckpt_path))
    diffusion_cfg = (stored or {}).get("diffusion")
    diffusion = build_diffusion(OmegaConf.create(diffusion_cfg)) if diffusion_cfg else None
    return GenerativeModel(
        denoiser=net.eval(),
        diffusion=diffusion,
        first_stage=stored_first_stage(checkpoint, stored) if stored else None,
        shape=(net.in_channels, net.image_size, net.image_size),
        num_classes=getattr(net, "num_classes", None),
        source=str(Path(ckpt_path).resolve()),
        weights="ema" if use_ema and "current_model_state" in checkpoint else "raw",
        global_step=int(checkpoint.get("global_step", -1)),
        config=stored,
    )


def teacher_model(teacher: nn.Module) -> GenerativeModel:
    """A :class:`~spectral_diffusion.teachers.Teacher` (checkpoint or diffusers) as a :class:`GenerativeModel`."""
    return GenerativeModel(
        denoiser=teacher,
        diffusion=teacher.diffusion,
        first_stage=teacher.first_stage,
        shape=tuple(teacher.input_shape),
        num_classes=teacher.num_classes,
        source=teacher.source,
    )

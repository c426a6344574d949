"""A trained model as one object: the network with everything needed to sample, decode and describe it.

Every loader of the framework returns a :class:`ModelBundle`: a ``train.py`` checkpoint, a diffusers
model folder (``assembly/load.py: load_run``), or the module being trained (the FD monitor). A
teacher is a frozen bundle plus what distillation needs (``teachers/base.py``). Evaluation, sampling
and inpainting take bundles, so they work the same on any of these.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from spectral_diffusion.diffusion.process import GaussianDiffusion


@dataclass
class ModelBundle:
    """A denoising network ``(x_t, t, class_labels) -> output`` with its process, latent space and record.

    Attributes:
        network: the denoising network (in eval mode when loaded).
        diffusion: its diffusion process (schedule, prediction type); ``None`` for a bare preset.
        first_stage: its frozen autoencoder with its latent statistics, ``None`` in pixel space.
        shape: ``(C, H, W)`` of what the network denoises.
        num_classes: classes of a class-conditional model, else ``None``.
        source: where it came from (``checkpoint:PATH``, ``diffusers:PATH``, ...).
        weights: ``ema`` or ``raw`` for this framework's checkpoints, else ``""``.
        global_step: training step of a checkpoint (-1 if unknown).
        config: the run config stored in its checkpoint (checked; ``None`` for other sources).
        first_stage_config: an ``autoencoder/`` config that rebuilds ``first_stage`` (a student that
            adopts this model's latent space stores it, so its own checkpoint decodes).
    """

    network: nn.Module
    diffusion: GaussianDiffusion | None
    first_stage: nn.Module | None
    shape: tuple[int, int, int]
    num_classes: int | None = None
    source: str = ""
    weights: str = ""
    global_step: int = -1
    config: dict[str, Any] | None = None
    first_stage_config: dict[str, Any] | None = None

    @property
    def class_conditional(self) -> bool:
        return self.num_classes is not None

    @property
    def prediction_type(self) -> str | None:
        return self.diffusion.prediction_type if self.diffusion is not None else None

    def to(self, device: torch.device | str) -> ModelBundle:
        self.network.to(device)
        if self.first_stage is not None:
            self.first_stage.to(device)
        return self

    def freeze(self) -> ModelBundle:
        """Eval mode and no gradients for the network and the first stage."""
        for module in (self.network, self.first_stage):
            if module is not None:
                module.requires_grad_(False)
                module.eval()
        return self

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Samples in data space (images nominally in [-1, 1])."""
        return self.first_stage.decode(latents) if self.first_stage is not None else latents

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images into the space the network works in (identity in pixel space)."""
        return self.first_stage.encode(images) if self.first_stage is not None else images

    def describe(self) -> dict[str, Any]:
        """JSON-able summary for run records and error messages."""
        return {
            "source": self.source,
            "network": type(self.network).__name__,
            "shape": list(self.shape),
            "num_classes": self.num_classes,
            "diffusion": self.diffusion.describe() if self.diffusion is not None else None,
            "first_stage": getattr(self.first_stage, "describe", lambda: None)() if self.first_stage else None,
            "weights": self.weights,
            "global_step": self.global_step,
        }

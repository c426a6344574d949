"""The frozen teacher: a denoiser with its diffusion process and (optionally) its latent space.

A :class:`Teacher` is built by one of the loaders (``framework.py`` for this framework's
checkpoints, ``diffusers_teacher.py`` for diffusers LDMs and DDPMs). It is always frozen: eval
mode, no gradients. The LightningModule keeps it out of its state_dict, its optimizer and its EMA
(see ``training/module.py``), so it is never written into the student's checkpoint.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from spectral_diffusion.diffusion.process import GaussianDiffusion
from spectral_diffusion.teachers.features import decoder_feature_points


class Teacher(nn.Module):
    """A frozen denoising network with everything needed to compare a student against it.

    Args:
        net: the network; called as ``call(net, x_t, t, class_labels)``.
        call: how to call ``net`` and get its output tensor (diffusers models return dataclasses).
        diffusion: the process the teacher was trained with (schedule and prediction type).
        input_shape: ``(C, H, W)`` of what the teacher denoises (its latent shape).
        num_classes: number of classes if class-conditional.
        first_stage: the teacher's autoencoder (its latent space), ``None`` for pixel space.
        source: where it was loaded from, for messages and the run record.
        first_stage_config: an ``autoencoder/`` config that rebuilds ``first_stage``; a student
            that adopts the teacher's latent space stores it, so its checkpoint can be decoded.
    """

    def __init__(
        self,
        net: nn.Module,
        call: Callable[[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor],
        diffusion: GaussianDiffusion,
        input_shape: tuple[int, int, int],
        num_classes: int | None = None,
        first_stage: nn.Module | None = None,
        source: str = "",
        first_stage_config: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.net = net
        self._call = call
        self.diffusion = diffusion
        self.input_shape = tuple(int(s) for s in input_shape)
        self.num_classes = num_classes
        self.first_stage = first_stage
        self.source = source
        self.first_stage_config = first_stage_config
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> Teacher:
        # Always eval: dropout off and norms frozen, whatever the surrounding module does.
        return super().train(False)

    @property
    def prediction_type(self) -> str:
        return self.diffusion.prediction_type

    def feature_points(self) -> list[nn.Module]:
        return decoder_feature_points(self.net)

    @torch.no_grad()
    def forward(self, x_t: torch.Tensor, t: torch.Tensor, class_labels: torch.Tensor | None = None) -> torch.Tensor:
        # A teacher kept in bfloat16 (teacher.torch_dtype) still answers in the student's dtype.
        dtype = next(self.net.parameters()).dtype
        return self._call(self.net, x_t.to(dtype), t, class_labels).to(x_t.dtype)

    @torch.no_grad()
    def predict_as(
        self, prediction_type: str, x_t: torch.Tensor, t: torch.Tensor, class_labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The teacher's output converted to ``prediction_type`` (eps, v or x0) at the same ``x_t, t``."""
        output = self(x_t, t, class_labels)
        if prediction_type == self.prediction_type:
            return output
        x0, eps = self.diffusion.predict_x0_eps(output.float(), x_t.float(), t)
        return self.diffusion.model_output_from(x0, eps, t, prediction_type).to(output.dtype)

    def describe(self) -> dict[str, Any]:
        """JSON-able summary for the run record and error messages."""
        return {
            "source": self.source,
            "network": type(self.net).__name__,
            "input_shape": list(self.input_shape),
            "num_classes": self.num_classes,
            "diffusion": self.diffusion.describe(),
            "first_stage": getattr(self.first_stage, "describe", lambda: None)() if self.first_stage else None,
        }

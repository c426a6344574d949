"""The frozen teacher: a model bundle, plus what distillation needs from it.

A :class:`Teacher` wraps a :class:`~spectral_diffusion.bundles.ModelBundle` from the one loader
(``assembly/teachers.py``: a ``train.py`` checkpoint or a diffusers folder). It is always frozen:
eval mode, no gradients. The LightningModule keeps it out of its state_dict, its optimizer and its
EMA (see ``training/module.py``), so it is never written into the student's checkpoint. On top of
the bundle it gives distillation the decoder's feature points and its output in the student's
parameterisation.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from spectral_diffusion.bundles import ModelBundle
from spectral_diffusion.diffusion.process import GaussianDiffusion
from spectral_diffusion.teachers.features import decoder_feature_points


class Teacher(nn.Module):
    """A frozen model bundle with everything needed to compare a student against it.

    Args:
        bundle: the trained model (network, process, first stage, shape, classes, source).
    """

    def __init__(self, bundle: ModelBundle) -> None:
        super().__init__()
        self.bundle = bundle
        self.net = bundle.network
        self.first_stage = bundle.first_stage
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> Teacher:
        # Always eval: dropout off and norms frozen, whatever the surrounding module does.
        return super().train(False)

    # -- the bundle's record --------------------------------------------------------------------
    @property
    def diffusion(self) -> GaussianDiffusion:
        return self.bundle.diffusion

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.bundle.shape)

    @property
    def num_classes(self) -> int | None:
        return self.bundle.num_classes

    @property
    def source(self) -> str:
        return self.bundle.source

    @property
    def first_stage_config(self) -> dict[str, Any] | None:
        return self.bundle.first_stage_config

    @property
    def prediction_type(self) -> str:
        return self.diffusion.prediction_type

    # -- what distillation needs ------------------------------------------------------------------
    def feature_points(self) -> list[nn.Module]:
        return decoder_feature_points(self.net)

    @torch.no_grad()
    def forward(self, x_t: torch.Tensor, t: torch.Tensor, class_labels: torch.Tensor | None = None) -> torch.Tensor:
        # A teacher kept in bfloat16 (teacher.torch_dtype) still answers in the student's dtype.
        dtype = next(self.net.parameters()).dtype
        return self.net(x_t.to(dtype), t, class_labels).to(x_t.dtype)

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
        return self.bundle.describe()

"""Where decoder features are read, and recording them with forward hooks.

Distillation compares teacher and student at matching *scales*: the network's output and the
output of each decoder (up-path) level before it is up-sampled. These helpers find those points in
this framework's :class:`~spectral_diffusion.networks.UNet` and in diffusers' ``UNet2DModel``, so a
teacher of either kind can be paired with a student by spatial size.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from torch import nn


def decoder_feature_points(net: nn.Module) -> list[nn.Module]:
    """The modules whose outputs are the decoder's per-level features, lowest resolution first.

    - this framework's UNet: the last block of each ``up_levels[i]`` (its output is the level's
      feature map, before the level's up-sampling layer);
    - diffusers' ``UNet2DModel``: the last attention (or, without attention, the last resnet) of
      each ``up_blocks[i]``, i.e. the block's output before its up-sampler.
    """
    net = getattr(net, "unet", net)  # bundles/diffusers_folder.py: DiffusersUNet wraps diffusers' UNet2DModel
    if hasattr(net, "up_levels"):
        return [level.blocks[-1] for level in net.up_levels]
    if hasattr(net, "up_blocks"):
        points = []
        for block in net.up_blocks:
            attentions = getattr(block, "attentions", None)
            points.append(attentions[-1] if attentions is not None and len(attentions) else block.resnets[-1])
        return points
    raise TypeError(
        f"cannot find decoder features in a {type(net).__name__}: feature distillation knows this "
        "framework's UNet (up_levels) and diffusers' UNet2DModel (up_blocks); use loss.features=false "
        "for output-only distillation"
    )


class FeatureRecorder:
    """Records the outputs of ``modules`` during a forward pass, while :meth:`recording` is active.

    The hooks stay registered for the recorder's lifetime and cost nothing outside ``recording``.
    Outputs are kept as produced: with autograd for the student, without for the teacher (which is
    run under ``torch.no_grad``).
    """

    def __init__(self, modules: Sequence[nn.Module]) -> None:
        self.features: list[torch.Tensor | None] = [None] * len(modules)
        self._active = False
        self._handles = [m.register_forward_hook(self._hook(i)) for i, m in enumerate(modules)]

    def _hook(self, index: int):
        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            if self._active:
                # diffusers' attention blocks may return tuples; the feature map comes first.
                self.features[index] = output[0] if isinstance(output, tuple) else output

        return hook

    @contextlib.contextmanager
    def recording(self) -> Iterator[list[torch.Tensor | None]]:
        """Record during the body; yields the list that the body's forward pass fills in."""
        self.features = [None] * len(self._handles)
        self._active = True
        try:
            yield self.features
        finally:
            self._active = False
            self.features = []  # the caller holds the recorded list; drop our reference to it

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

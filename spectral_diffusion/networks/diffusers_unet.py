"""The framework's UNet as a diffusers model: ``ModelMixin`` + ``ConfigMixin``, saved as config.json + safetensors.

``SpectralUNet2DModel`` is what ``scripts/export.py format=diffusers`` writes to ``unet/``. Its
config holds the :class:`~spectral_diffusion.networks.unet.UNet` arguments (``sample_size`` is
the UNet's ``image_size``, named as diffusers' UNets name it), so diffusers' own
``from_pretrained`` / ``save_pretrained`` / ``push_to_hub`` work on it unchanged, and its forward
pass has diffusers' UNet signature: ``unet(sample, timestep, class_labels).sample``.

The UNet itself is held as ``self.net``, so weights are stored as ``net.<name>``; the framework
unwraps it (:attr:`network`) wherever it needs the plain network (feature hooks of distillation,
cost counting, ONNX export).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.unets.unet_2d import UNet2DOutput

from spectral_diffusion.networks.unet import UNet


class SpectralUNet2DModel(ModelMixin, ConfigMixin):
    """A :class:`UNet` (plain or wavelet-gated) with diffusers' model interface.

    Args: those of :class:`UNet`, with ``sample_size`` for its ``image_size``.
    """

    config_name = "config.json"

    # The arguments are spelled out rather than taken as **kwargs: register_to_config writes the named
    # parameters of __init__ into config.json, and from_pretrained passes exactly those back.
    @register_to_config
    def __init__(
        self,
        sample_size: int = 32,
        in_channels: int = 1,
        base_channels: int = 64,
        channel_mult: Sequence[int] = (1, 2, 2),
        num_res_blocks: int = 2,
        attention_resolutions: Sequence[int] = (),
        out_channels: int | None = None,
        head_channels: int = 32,
        num_heads: int | None = None,
        dropout: float = 0.0,
        num_classes: int | None = None,
        downsample: str = "conv",
        upsample: str = "nearest_conv",
        downsample_options: dict | None = None,
        upsample_options: dict | None = None,
        scale_shift_norm: bool = True,
        mid_attention: bool = True,
        context_dim: int | None = None,
    ) -> None:
        super().__init__()
        self.net = UNet(
            image_size=sample_size,
            in_channels=in_channels,
            base_channels=base_channels,
            channel_mult=tuple(channel_mult),
            num_res_blocks=num_res_blocks,
            attention_resolutions=tuple(attention_resolutions),
            out_channels=out_channels,
            head_channels=head_channels,
            num_heads=num_heads,
            dropout=dropout,
            num_classes=num_classes,
            downsample=downsample,
            upsample=upsample,
            downsample_options=dict(downsample_options or {}),
            upsample_options=dict(upsample_options or {}),
            scale_shift_norm=scale_shift_norm,
            mid_attention=mid_attention,
            context_dim=context_dim,
        )

    @classmethod
    def from_unet_config(cls, unet_kwargs: dict) -> SpectralUNet2DModel:
        """The diffusers model of a stored ``model`` config (:class:`UNet` keyword arguments, ``_target_`` dropped)."""
        kwargs = {key: value for key, value in unet_kwargs.items() if key != "_target_"}
        kwargs["sample_size"] = kwargs.pop("image_size")
        return cls(**kwargs)

    @property
    def network(self) -> UNet:
        """The framework's plain network: ``network(x_t, t, class_labels) -> tensor``."""
        return self.net

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        class_labels: torch.Tensor | None = None,
        return_dict: bool = True,
    ) -> UNet2DOutput | tuple[torch.Tensor]:
        """diffusers' UNet call: a timestep per sample, or one for the batch."""
        if not torch.is_tensor(timestep):
            timestep = torch.tensor([timestep], device=sample.device)
        timestep = timestep.to(sample.device).reshape(-1)
        if timestep.numel() == 1:
            timestep = timestep.expand(sample.shape[0])
        out = self.net(sample, timestep, class_labels)
        return UNet2DOutput(sample=out) if return_dict else (out,)

"""Networks: plain ``nn.Module``s that map ``(x_t, t, class_labels)`` to an output tensor."""

from spectral_diffusion.networks.resampling import (
    DOWNSAMPLERS,
    UPSAMPLERS,
    register_downsample,
    register_upsample,
)
from spectral_diffusion.networks.unet import UNet

__all__ = ["DOWNSAMPLERS", "UPSAMPLERS", "UNet", "register_downsample", "register_upsample"]

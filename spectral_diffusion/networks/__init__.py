"""Networks: plain ``nn.Module``s that map ``(x_t, t, class_labels)`` to an output tensor."""

from spectral_diffusion.networks.resampling import (
    DOWNSAMPLERS,
    UPSAMPLERS,
    register_downsample,
    register_upsample,
)
from spectral_diffusion.networks.unet import UNet
from spectral_diffusion.networks.wavelet_gating import WaveletGatedDownsample, WaveletGatedUpsample
from spectral_diffusion.networks.wavelets import DWT2, IDWT2, dwt2, idwt2

__all__ = [
    "DOWNSAMPLERS",
    "DWT2",
    "IDWT2",
    "UPSAMPLERS",
    "UNet",
    "WaveletGatedDownsample",
    "WaveletGatedUpsample",
    "dwt2",
    "idwt2",
    "register_downsample",
    "register_upsample",
]

"""Pluggable down- and up-sampling layers of the UNet.

The UNet looks its resampling layers up by name (``downsample: conv``, ``upsample: nearest_conv``),
so that a new kind of layer (for example the wavelet-gated blocks of Spectral Diffusion) plugs in
with :func:`register_downsample` / :func:`register_upsample` and a config value, without touching
the UNet.

Every layer takes ``(channels, emb_channels)`` in its constructor and ``(x, emb)`` in ``forward``,
keeps the channel count and halves (down) or doubles (up) the spatial size. ``emb`` is the
timestep embedding; layers that do not use it ignore it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from spectral_diffusion.networks.layers import ResBlock

DOWNSAMPLERS: dict[str, type[nn.Module]] = {}
UPSAMPLERS: dict[str, type[nn.Module]] = {}


def register_downsample(name: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Class decorator that makes a downsampling layer selectable as ``downsample: <name>``."""

    def decorator(cls: type[nn.Module]) -> type[nn.Module]:
        DOWNSAMPLERS[name] = cls
        return cls

    return decorator


def register_upsample(name: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Class decorator that makes an upsampling layer selectable as ``upsample: <name>``."""

    def decorator(cls: type[nn.Module]) -> type[nn.Module]:
        UPSAMPLERS[name] = cls
        return cls

    return decorator


def _lookup(registry: dict[str, type[nn.Module]], name: str, kind: str) -> type[nn.Module]:
    if name not in registry:
        raise ValueError(f"unknown {kind} layer {name!r}; choose one of {sorted(registry)}")
    return registry[name]


def _build(cls: type[nn.Module], kind: str, channels: int, emb_channels: int, options: dict) -> nn.Module:
    try:
        return cls(channels, emb_channels, **options)
    except TypeError as err:
        raise ValueError(f"bad {kind}_options {options} for {cls.__name__}: {err}") from err


def make_downsample(name: str, channels: int, emb_channels: int, **options) -> nn.Module:
    """Build the downsampling layer registered under ``name`` (``options``: its extra arguments)."""
    return _build(_lookup(DOWNSAMPLERS, name, "downsample"), "downsample", channels, emb_channels, options)


def make_upsample(name: str, channels: int, emb_channels: int, **options) -> nn.Module:
    """Build the upsampling layer registered under ``name`` (``options``: its extra arguments)."""
    return _build(_lookup(UPSAMPLERS, name, "upsample"), "upsample", channels, emb_channels, options)


@register_downsample("conv")
class StridedConvDownsample(nn.Module):
    """3x3 convolution with stride 2 (the ADM/LDM default)."""

    def __init__(self, channels: int, emb_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        return self.conv(x)


@register_downsample("avg_pool")
class AvgPoolDownsample(nn.Module):
    """2x2 average pooling, parameter-free."""

    def __init__(self, channels: int, emb_channels: int) -> None:
        super().__init__()

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        return F.avg_pool2d(x, 2)


@register_upsample("nearest_conv")
class NearestConvUpsample(nn.Module):
    """Nearest-neighbour 2x upsampling followed by a 3x3 convolution (the ADM/LDM default)."""

    def __init__(self, channels: int, emb_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


@register_upsample("nearest")
class NearestUpsample(nn.Module):
    """Nearest-neighbour 2x upsampling, parameter-free."""

    def __init__(self, channels: int, emb_channels: int) -> None:
        super().__init__()

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        return F.interpolate(x, scale_factor=2.0, mode="nearest")


class _ResampleResBlock(ResBlock):
    """A residual block that resamples inside both branches (ADM/LDM ``resblock_updown``).

    Main branch: norm -> SiLU -> resample -> conv -> (+emb) -> norm -> SiLU -> conv; skip: resample.
    """

    def __init__(self, channels: int, emb_channels: int, dropout: float = 0.0, scale_shift_norm: bool = True) -> None:
        super().__init__(channels, channels, emb_channels, dropout, scale_shift_norm)

    def resample(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(self.resample(F.silu(self.norm1(x))))
        return self.resample(x) + self._second_half(h, emb)


@register_downsample("resblock")
class ResBlockDownsample(_ResampleResBlock):
    """Residual block with 2x2 average pooling in both branches (LDM ``resblock_updown: true``)."""

    def resample(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(x, 2)


@register_upsample("resblock")
class ResBlockUpsample(_ResampleResBlock):
    """Residual block with nearest 2x upsampling in both branches (LDM ``resblock_updown: true``)."""

    def resample(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=2.0, mode="nearest")

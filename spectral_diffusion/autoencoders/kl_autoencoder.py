"""The framework's own KL autoencoder: a small LDM-style encoder/decoder with a Gaussian posterior.

The layout follows LDM's ``AutoencoderKL`` (``ldm/modules/diffusionmodules/model.py``), shrunk for
small images: per level ``num_res_blocks`` residual blocks (no timestep embedding), optional
self-attention at the listed resolutions, a stride-2 convolution between levels; a middle of
ResBlock-attention-ResBlock; the encoder ends in ``2 * latent_channels`` maps (mean and log-variance
of a diagonal Gaussian), the decoder mirrors the encoder with nearest-neighbour upsampling.

The network knows nothing of training or of latent statistics; those live in
``losses/autoencoder.py``, ``training/autoencoder_module.py`` and the first-stage wrappers.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from spectral_diffusion.networks.layers import SelfAttention, group_norm

#: The log-variance is clamped to this range, as LDM does, so exp() can neither overflow nor vanish.
LOGVAR_RANGE = (-30.0, 20.0)


class PlainResBlock(nn.Module):
    """GroupNorm-SiLU-conv residual block without a timestep embedding."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1 = group_norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = group_norm(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.skip = nn.Identity() if in_channels == out_channels else nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class Downsample(nn.Module):
    """Stride-2 3x3 convolution (LDM pads asymmetrically; symmetric padding 1 gives the same size)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest-neighbour x2 then a 3x3 convolution (no checkerboard artefacts, unlike a transposed conv)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def _level_blocks(
    in_ch: int, out_ch: int, count: int, attention: bool, head_channels: int, dropout: float
) -> nn.ModuleList:
    blocks = nn.ModuleList()
    for i in range(count):
        blocks.append(PlainResBlock(in_ch if i == 0 else out_ch, out_ch, dropout))
        if attention:
            blocks.append(SelfAttention(out_ch, head_channels))
    return blocks


class _Middle(nn.Sequential):
    def __init__(self, channels: int, attention: bool, head_channels: int, dropout: float) -> None:
        layers: list[nn.Module] = [PlainResBlock(channels, channels, dropout)]
        if attention:
            layers.append(SelfAttention(channels, head_channels))
        layers.append(PlainResBlock(channels, channels, dropout))
        super().__init__(*layers)


class Encoder(nn.Module):
    """Images -> ``2 * latent_channels`` maps at ``1 / 2**(len(channel_mult) - 1)`` of the resolution."""

    def __init__(
        self,
        in_channels: int,
        base_channels: int,
        channel_mult: Sequence[int],
        num_res_blocks: int,
        latent_channels: int,
        attention_resolutions: Sequence[int],
        mid_attention: bool,
        head_channels: int,
        dropout: float,
        image_size: int,
    ) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(in_channels, base_channels, 3, padding=1)
        self.levels = nn.ModuleList()
        self.downsamples = nn.ModuleList()
        ch, resolution = base_channels, image_size
        for level, mult in enumerate(channel_mult):
            out = base_channels * mult
            attention = resolution in attention_resolutions
            self.levels.append(_level_blocks(ch, out, num_res_blocks, attention, head_channels, dropout))
            ch = out
            last = level == len(channel_mult) - 1
            self.downsamples.append(nn.Identity() if last else Downsample(ch))
            resolution = resolution if last else resolution // 2
        self.mid = _Middle(ch, mid_attention, head_channels, dropout)
        self.norm_out = group_norm(ch)
        self.conv_out = nn.Conv2d(ch, 2 * latent_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for blocks, down in zip(self.levels, self.downsamples, strict=True):
            for block in blocks:
                h = block(h)
            h = down(h)
        h = self.mid(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    """Latents -> images; the encoder's levels in reverse, with ``num_res_blocks + 1`` blocks each (as LDM)."""

    def __init__(
        self,
        out_channels: int,
        base_channels: int,
        channel_mult: Sequence[int],
        num_res_blocks: int,
        latent_channels: int,
        attention_resolutions: Sequence[int],
        mid_attention: bool,
        head_channels: int,
        dropout: float,
        image_size: int,
    ) -> None:
        super().__init__()
        ch = base_channels * channel_mult[-1]
        resolution = image_size // 2 ** (len(channel_mult) - 1)
        self.conv_in = nn.Conv2d(latent_channels, ch, 3, padding=1)
        self.mid = _Middle(ch, mid_attention, head_channels, dropout)
        self.levels = nn.ModuleList()
        self.upsamples = nn.ModuleList()
        for level in reversed(range(len(channel_mult))):
            out = base_channels * channel_mult[level]
            attention = resolution in attention_resolutions
            self.levels.append(_level_blocks(ch, out, num_res_blocks + 1, attention, head_channels, dropout))
            ch = out
            self.upsamples.append(Upsample(ch) if level > 0 else nn.Identity())
            resolution = resolution * 2 if level > 0 else resolution
        self.norm_out = group_norm(ch)
        self.conv_out = nn.Conv2d(ch, out_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z))
        for blocks, up in zip(self.levels, self.upsamples, strict=True):
            for block in blocks:
                h = block(h)
            h = up(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class KLAutoencoder(nn.Module):
    """A convolutional autoencoder whose encoder outputs a diagonal Gaussian posterior.

    Args:
        in_channels: image channels (the decoder outputs as many).
        base_channels: width of the first level.
        channel_mult: width multiplier per level; there are ``len(channel_mult) - 1`` downsamplings,
            so the factor is ``2 ** (len(channel_mult) - 1)``.
        num_res_blocks: residual blocks per encoder level (the decoder has one more, as in LDM).
        latent_channels: channels of the latent (the posterior's mean).
        attention_resolutions: feature-map sizes (with ``image_size``) that get self-attention.
        mid_attention: self-attention in the middle block, as in LDM.
        head_channels: width of each attention head.
        dropout: dropout inside the residual blocks.
        image_size: nominal input size, only used to place ``attention_resolutions``.
    """

    def __init__(
        self,
        in_channels: int = 1,
        base_channels: int = 32,
        channel_mult: Sequence[int] = (1, 2, 2),
        num_res_blocks: int = 1,
        latent_channels: int = 4,
        attention_resolutions: Sequence[int] = (),
        mid_attention: bool = True,
        head_channels: int = 32,
        dropout: float = 0.0,
        image_size: int = 32,
    ) -> None:
        super().__init__()
        if not channel_mult:
            raise ValueError("KLAutoencoder: channel_mult needs at least one level")
        if image_size % 2 ** (len(channel_mult) - 1):
            raise ValueError(
                f"KLAutoencoder: image_size={image_size} is not divisible by the factor 2**{len(channel_mult) - 1}"
            )
        self.in_channels = in_channels
        self.latent_channels = latent_channels
        self.downsample_factor = 2 ** (len(channel_mult) - 1)
        self.image_size = image_size
        args = dict(
            base_channels=base_channels,
            channel_mult=tuple(channel_mult),
            num_res_blocks=num_res_blocks,
            latent_channels=latent_channels,
            attention_resolutions=tuple(attention_resolutions),
            mid_attention=mid_attention,
            head_channels=head_channels,
            dropout=dropout,
            image_size=image_size,
        )
        self._architecture = {"in_channels": in_channels, **args}
        self.encoder = Encoder(in_channels, **args)
        self.decoder = Decoder(in_channels, **args)

    def architecture(self) -> dict:
        """The constructor arguments of this network (lists for sequences): ``KLAutoencoder(**arch)`` rebuilds it."""
        return {key: list(value) if isinstance(value, tuple) else value for key, value in self._architecture.items()}

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images -> ``(mean, logvar)`` of the posterior, logvar clamped to :data:`LOGVAR_RANGE`."""
        mean, logvar = self.encoder(x).chunk(2, dim=1)
        return mean, logvar.clamp(*LOGVAR_RANGE)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)

    @staticmethod
    def sample(mean: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """A draw ``mean + std * eps``; ``eps`` comes from ``generator`` on its own device, then moves."""
        gen_device = generator.device if generator is not None else mean.device
        eps = torch.randn(mean.shape, generator=generator, device=gen_device, dtype=mean.dtype).to(mean.device)
        return mean + torch.exp(0.5 * logvar) * eps

    def forward(
        self, x: torch.Tensor, generator: torch.Generator | None = None, sample_posterior: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(reconstruction, mean, logvar)``; decodes a posterior draw, or the mean if not ``sample_posterior``."""
        mean, logvar = self.encode(x)
        z = self.sample(mean, logvar, generator) if sample_posterior else mean
        return self.decode(z), mean, logvar

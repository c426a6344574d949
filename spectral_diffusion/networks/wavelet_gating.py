"""Wavelet-gated down- and up-sampling (WG-Down, WG-Up) of Spectral Diffusion.

Each reverse step of a diffusion model needs different frequency bands: shape early, texture
late. Wavelet gating lets the network weigh the four wavelet sub-bands per channel, from the
features themselves (and, optionally, the timestep):

    gates g = sigmoid(FFN(AvgPool(X) [+ W emb]))             4 x C values in (0, 1)

    WG-Down:  X (C, H, W)  -> DWT -> X_LL, X_LH, X_HL, X_HH   each (C, H/2, W/2)
              X' = sum_i g_i * X_i                             (C, H/2, W/2)

    WG-Up:    X (C, H, W)  -> 1x1 conv to 4C, read as the LL, LH, HL, HH coefficients
              X' = IDWT(g_LL * X_LL, g_LH * X_LH, g_HL * X_HL, g_HH * X_HH)   (C, 2H, 2W)

The paper's WG-Up splits C channels into four chunks and returns C/4 channels, "so a projection
usually follows or precedes it". Here a 1x1 projection precedes it (C -> 4C), so the layer keeps
the channel count like every other upsampling layer of the UNet, and costs 4 C^2 HW MACs instead of
the 36 C^2 HW of nearest+3x3 conv.

Unknowns of the paper, and the defaults chosen here (all configurable):
- the wavelet: Haar (``wavelet=``, any PyWavelets name);
- the FFN width: ``channels // reduction`` hidden units with ``reduction=4`` (at least 8);
- whether the gates see the timestep embedding: off (``timestep_gates=true`` adds it);
- the gates' initial values: ``gate_init=uniform`` starts every gate near 0.5 (a default-initialised
  FFN). With the orthonormal Haar bands that makes WG-Down's sum ``0.5 (LL + LH + HL + HH)``, which
  is exactly the top-left pixel of each 2x2 block: plain subsampling, aliasing included, until the
  gates have learnt otherwise. ``gate_init=lowpass`` starts the LL gate at sigmoid(4) = 0.98 and the
  three detail gates at sigmoid(-4) = 0.018 (the FFN's output layer zeroed, its bias set), so
  WG-Down starts as average pooling (times 2, Haar's scale) and WG-Up as nearest-neighbour
  upsampling of its projection; the gates then learn how much detail to let through.

For Haar, both layers run fused (``networks/haar_gating.py``): WG-Down as one per-sample
depthwise 2x2 stride-2 filter, WG-Up as one per-sample folded projection and a pixel shuffle, so
the four sub-bands are never written. ``layer.fused = False`` selects the reference path through
:class:`DWT2` / :class:`IDWT2`, which the tests compare it with; other wavelets always take it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from spectral_diffusion.networks.haar_gating import haar_gated_downsample, haar_gated_upsample
from spectral_diffusion.networks.resampling import register_downsample, register_upsample
from spectral_diffusion.networks.wavelets import DWT2, IDWT2

NUM_BANDS = 4
#: ``gate_init`` choices (module docstring).
GATE_INITS = ("uniform", "lowpass")


class WaveletGate(nn.Module):
    """``sigmoid(FFN(avgpool(x) [+ proj(emb)]))`` reshaped to ``(N, 4, gate_channels, 1, 1)``."""

    def __init__(
        self,
        in_channels: int,
        gate_channels: int,
        reduction: int = 4,
        emb_channels: int | None = None,
        init: str = "uniform",
    ) -> None:
        super().__init__()
        if init not in GATE_INITS:
            raise ValueError(f"gate_init must be one of {sorted(GATE_INITS)}, got {init!r}")
        hidden = max(in_channels // reduction, 8)
        self.gate_channels = gate_channels
        self.emb_proj = nn.Linear(emb_channels, in_channels) if emb_channels else None
        self.fc1 = nn.Linear(in_channels, hidden)
        self.fc2 = nn.Linear(hidden, NUM_BANDS * gate_channels)
        if init == "lowpass":  # LL open, details nearly shut: average pooling / nearest upsampling
            nn.init.zeros_(self.fc2.weight)
            with torch.no_grad():
                self.fc2.bias.view(NUM_BANDS, gate_channels).copy_(
                    torch.tensor([4.0, -4.0, -4.0, -4.0]).unsqueeze(1).expand(NUM_BANDS, gate_channels)
                )

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        pooled = x.mean(dim=(-2, -1))
        if self.emb_proj is not None:
            if emb is None:
                raise ValueError("this wavelet gate conditions on the timestep, but no embedding was given")
            pooled = pooled + self.emb_proj(F.silu(emb)).to(pooled.dtype)
        gates = torch.sigmoid(self.fc2(F.silu(self.fc1(pooled))))
        return gates.reshape(x.shape[0], NUM_BANDS, self.gate_channels, 1, 1)


class _WaveletGated(nn.Module):
    """What WG-Down and WG-Up share: the gate, computed from the block's input (and timestep)."""

    def __init__(
        self,
        channels: int,
        emb_channels: int,
        wavelet: str = "haar",
        reduction: int = 4,
        timestep_gates: bool = False,
        gate_init: str = "uniform",
    ) -> None:
        super().__init__()
        self.channels = channels
        self.wavelet = wavelet
        self.gate = WaveletGate(channels, channels, reduction, emb_channels if timestep_gates else None, gate_init)
        self._fused = wavelet == "haar"

    @property
    def fused(self) -> bool:
        """Whether the fused Haar path runs (the default for Haar) instead of the band-by-band one."""
        return self._fused

    @fused.setter
    def fused(self, value: bool) -> None:
        if value and self.wavelet != "haar":
            raise ValueError(f"the fused wavelet gating exists for Haar only; this layer uses {self.wavelet!r}")
        self._fused = bool(value)

    def gates(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        """The gates ``(N, 4, C, 1, 1)`` in (0, 1), bands ordered LL, LH, HL, HH."""
        return self.gate(x, emb)


@register_downsample("wavelet_gated")
class WaveletGatedDownsample(_WaveletGated):
    """WG-Down: gated sum of the four DWT sub-bands; halves H and W, keeps the channels."""

    def __init__(self, channels: int, emb_channels: int, **options) -> None:
        super().__init__(channels, emb_channels, **options)
        self.dwt = DWT2(self.wavelet)

    def forward(
        self, x: torch.Tensor, emb: torch.Tensor | None = None, gates: torch.Tensor | None = None
    ) -> torch.Tensor:
        gates = self.gates(x, emb) if gates is None else gates
        if self._fused:
            return haar_gated_downsample(x, gates)
        bands = self.dwt(x)  # (N, 4, C, H/2, W/2)
        return (gates.to(bands.dtype) * bands).sum(dim=1)


@register_upsample("wavelet_gated")
class WaveletGatedUpsample(_WaveletGated):
    """WG-Up: 1x1 projection to four coefficient chunks, gated, then the inverse DWT; doubles H and W."""

    def __init__(self, channels: int, emb_channels: int, **options) -> None:
        super().__init__(channels, emb_channels, **options)
        self.proj = nn.Conv2d(channels, NUM_BANDS * channels, 1)
        self.idwt = IDWT2(self.wavelet)

    def forward(
        self, x: torch.Tensor, emb: torch.Tensor | None = None, gates: torch.Tensor | None = None
    ) -> torch.Tensor:
        gates = self.gates(x, emb) if gates is None else gates
        if self._fused:
            return haar_gated_upsample(x, gates, self.proj.weight, self.proj.bias)
        bands = self.proj(x).unflatten(1, (NUM_BANDS, self.channels))  # (N, 4, C, H, W)
        return self.idwt(gates.to(bands.dtype) * bands)

"""Differentiable single-level 2-D discrete wavelet transform (DWT) and its inverse, in torch.

Filters come from PyWavelets, so any discrete wavelet name works (``haar``, ``db2``, ``sym4``,
``coif1``, ...). The boundary mode is ``periodization``, the one that keeps the size exactly
halved; inputs need even height and width.

Tensor layout, matching ``pywt.dwt2(x, wavelet, mode="periodization", axes=(-2, -1))``::

    x: (N, C, H, W)  ->  (cA, (cH, cV, cD)), each (N, C, H/2, W/2)

    cA  approximation (low-pass along H and W)                     pywt key 'aa'
    cH  detail along H, approximation along W (horizontal edges)   pywt key 'da'
    cV  approximation along H, detail along W (vertical edges)     pywt key 'ad'
    cD  detail along both (diagonal)                               pywt key 'dd'

The ``*_stacked`` variants use one tensor ``(N, 4, C, H/2, W/2)`` with the bands in that order.

Haar has a fast path: one grouped stride-2 convolution with the 2x2 Haar kernels, no loop over
channels. For a 2x2 block ``a b / c d``: cA = (a+b+c+d)/2, cH = (a+b-c-d)/2, cV = (a-b+c-d)/2,
cD = (a-b-c+d)/2.
Other wavelets use separable strided convolutions with circular indexing.
"""

from __future__ import annotations

import functools

import pywt
import torch
import torch.nn.functional as F
from torch import nn

Coefficients = tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
MODES = ("periodization",)


@functools.cache
def _filter_bank(wavelet: str) -> tuple[tuple[float, ...], ...]:
    try:
        w = pywt.Wavelet(wavelet)
    except ValueError as err:
        raise ValueError(
            f"unknown wavelet {wavelet!r}; use a discrete PyWavelets name such as haar, db2, sym4 or coif1 "
            f"(see pywt.wavelist(kind='discrete'))"
        ) from err
    return tuple(tuple(f) for f in w.filter_bank)  # dec_lo, dec_hi, rec_lo, rec_hi


def _check(x: torch.Tensor, mode: str, what: str = "input") -> None:
    if mode not in MODES:
        raise ValueError(f"unsupported DWT mode {mode!r}; supported: {list(MODES)} (it keeps the size exactly halved)")
    if x.ndim != 4:
        raise ValueError(f"the DWT takes (N, C, H, W) tensors; the {what} has shape {tuple(x.shape)}")
    h, w = x.shape[-2:]
    if h % 2 or w % 2:
        raise ValueError(
            f"the DWT with mode=periodization needs an even height and width; the {what} is {h}x{w}. "
            "Pad or crop it to even sizes (e.g. a latent or image size divisible by 2**levels)."
        )


# -- Haar fast path -------------------------------------------------------------------------------
# Rows: the bands cA, cH, cV, cD; columns: the pixels a b / c d of a 2x2 block.
_HAAR = torch.tensor([[1, 1, 1, 1], [1, 1, -1, -1], [1, -1, 1, -1], [1, -1, -1, 1]], dtype=torch.float64) * 0.5


def _haar_weight(channels: int, like: torch.Tensor) -> torch.Tensor:
    return _HAAR.to(device=like.device, dtype=like.dtype).reshape(4, 1, 2, 2).repeat(channels, 1, 1, 1)


def _haar_forward(x: torch.Tensor) -> torch.Tensor:
    # One grouped stride-2 convolution: each channel's 2x2 blocks times the orthogonal Haar matrix.
    # It was the fastest of reshape/sum, pixel_unshuffle and matmul forms on CPU (scripts/bench_wavelets.py).
    n, c, h, w = x.shape
    out = F.conv2d(x, _haar_weight(c, x), stride=2, groups=c)  # (n, c*4, h/2, w/2), channel-major
    return out.unflatten(1, (c, 4)).transpose(1, 2)


def _haar_inverse(bands: torch.Tensor) -> torch.Tensor:
    # The Haar matrix is symmetric and orthogonal, so the inverse is the transposed convolution.
    n, _, c, h2, w2 = bands.shape
    return F.conv_transpose2d(
        bands.transpose(1, 2).reshape(n, c * 4, h2, w2), _haar_weight(c, bands), stride=2, groups=c
    )


# -- general separable path ----------------------------------------------------------------------
def _analysis_1d(x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, dim: int) -> torch.Tensor:
    """Filter and downsample along ``dim`` (-1 or -2) with periodic extension: returns (lo, hi) stacked on a new dim 1.

    With filter h of (even) length L, pywt's periodization gives
    out[k] = sum_j h[j] x[(2k + L/2 - j) mod N], i.e. a stride-2 cross-correlation with the reversed
    filter over x extended periodically by L/2 - 1 samples on each side.
    """
    half = lo.numel() // 2
    size = x.shape[dim]
    index = torch.arange(-(half - 1), size + half - 1, device=x.device) % size
    x = x.index_select(dim, index)
    n, c, h, w = x.shape
    weight = torch.stack([lo.flip(0), hi.flip(0)]).to(x.dtype)  # (2, L)
    if dim == -1:
        out = F.conv2d(x.reshape(n * c, 1, h, w), weight[:, None, None, :], stride=(1, 2))
    else:
        out = F.conv2d(x.reshape(n * c, 1, h, w), weight[:, None, :, None], stride=(2, 1))
    return out.reshape(n, c, 2, *out.shape[-2:]).transpose(1, 2)  # (n, 2, c, h', w')


def _synthesis_1d(bands: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, dim: int) -> torch.Tensor:
    """Inverse of :func:`_analysis_1d`: upsample (lo, hi) = bands[:, 0], bands[:, 1] along ``dim`` and add.

    x[i] = sum_k c[k] g[i - 2k + L/2 - 1] (indices mod N): a stride-2 transposed convolution with
    the reconstruction filter g, folded back onto N samples.
    """
    n, _, c, h, w = bands.shape
    half = lo.numel() // 2
    weight = torch.stack([lo, hi]).to(bands.dtype)  # (2, L)
    x = bands.transpose(1, 2).reshape(n * c, 2, h, w)
    if dim == -1:
        full = F.conv_transpose2d(x, weight[:, None, None, :], stride=(1, 2))
        size = 2 * w
    else:
        full = F.conv_transpose2d(x, weight[:, None, :, None], stride=(2, 1))
        size = 2 * h
    index = (torch.arange(full.shape[dim], device=bands.device) - (half - 1)) % size
    shape = list(full.shape)
    shape[dim] = size
    out = full.new_zeros(shape).index_add_(dim % 4, index, full)
    return out.reshape(n, c, *out.shape[-2:])


def _filters(wavelet: str, like: torch.Tensor) -> list[torch.Tensor]:
    # float64 filters cast to the input's dtype at use: exact to float64 precision when asked.
    return [torch.tensor(f, dtype=torch.float64, device=like.device) for f in _filter_bank(wavelet)]


def dwt2_stacked(x: torch.Tensor, wavelet: str = "haar", mode: str = "periodization") -> torch.Tensor:
    """Single-level 2-D DWT of ``(N, C, H, W)`` as one ``(N, 4, C, H/2, W/2)`` tensor (cA, cH, cV, cD)."""
    _check(x, mode)
    if wavelet == "haar":
        return _haar_forward(x)
    dec_lo, dec_hi, _, _ = _filters(wavelet, x)
    along_w = _analysis_1d(x, dec_lo, dec_hi, dim=-1)  # (n, 2[w: lo, hi], c, h, w/2)
    n, _, c, h, w2 = along_w.shape
    both = _analysis_1d(along_w.reshape(n, 2 * c, h, w2), dec_lo, dec_hi, dim=-2)  # (n, 2[h], 2c, h/2, w/2)
    both = both.reshape(n, 2, 2, c, h // 2, w2)  # [h band, w band]
    # (h lo, w lo)=cA, (h hi, w lo)=cH, (h lo, w hi)=cV, (h hi, w hi)=cD
    return torch.stack([both[:, 0, 0], both[:, 1, 0], both[:, 0, 1], both[:, 1, 1]], dim=1)


def idwt2_stacked(bands: torch.Tensor, wavelet: str = "haar", mode: str = "periodization") -> torch.Tensor:
    """Inverse of :func:`dwt2_stacked`: ``(N, 4, C, h, w)`` bands -> ``(N, C, 2h, 2w)``."""
    if bands.ndim != 5 or bands.shape[1] != 4:
        raise ValueError(f"idwt2_stacked takes (N, 4, C, h, w) bands; got shape {tuple(bands.shape)}")
    if mode not in MODES:
        raise ValueError(f"unsupported DWT mode {mode!r}; supported: {list(MODES)}")
    if wavelet == "haar":
        return _haar_inverse(bands)
    _, _, rec_lo, rec_hi = _filters(wavelet, bands)
    n, _, c, h2, w2 = bands.shape
    ca, ch, cv, cd = bands.unbind(1)
    # Undo along H first: (cA, cH) -> w-low part, (cV, cD) -> w-high part.
    h_pairs = torch.stack([torch.cat([ca, cv], dim=1), torch.cat([ch, cd], dim=1)], dim=1)  # (n, 2[h], 2c, h2, w2)
    along_h = _synthesis_1d(h_pairs, rec_lo, rec_hi, dim=-2)  # (n, 2c, h, w2)
    w_pairs = along_h.reshape(n, 2, c, 2 * h2, w2)  # [w lo, w hi]
    return _synthesis_1d(w_pairs, rec_lo, rec_hi, dim=-1)


def dwt2(x: torch.Tensor, wavelet: str = "haar", mode: str = "periodization") -> Coefficients:
    """Single-level 2-D DWT with PyWavelets' output structure: ``(cA, (cH, cV, cD))``."""
    ca, ch, cv, cd = dwt2_stacked(x, wavelet, mode).unbind(1)
    return ca, (ch, cv, cd)


def idwt2(coeffs: Coefficients, wavelet: str = "haar", mode: str = "periodization") -> torch.Tensor:
    """Inverse of :func:`dwt2`, taking PyWavelets' structure ``(cA, (cH, cV, cD))``."""
    ca, (ch, cv, cd) = coeffs
    return idwt2_stacked(torch.stack([ca, ch, cv, cd], dim=1), wavelet, mode)


class DWT2(nn.Module):
    """:func:`dwt2_stacked` as a module: ``(N, C, H, W) -> (N, 4, C, H/2, W/2)``."""

    def __init__(self, wavelet: str = "haar", mode: str = "periodization") -> None:
        super().__init__()
        _filter_bank(wavelet)  # fail at construction for unknown names
        if mode not in MODES:
            raise ValueError(f"unsupported DWT mode {mode!r}; supported: {list(MODES)}")
        self.wavelet, self.mode = wavelet, mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dwt2_stacked(x, self.wavelet, self.mode)

    def extra_repr(self) -> str:
        return f"wavelet={self.wavelet!r}, mode={self.mode!r}"


class IDWT2(DWT2):
    """:func:`idwt2_stacked` as a module: ``(N, 4, C, h, w) -> (N, C, 2h, 2w)``."""

    def forward(self, bands: torch.Tensor) -> torch.Tensor:
        return idwt2_stacked(bands, self.wavelet, self.mode)

"""Fused Haar wavelet gating: WG-Down and WG-Up without writing the four sub-bands.

The Haar DWT of a 2x2 block ``a b / c d`` is a fixed orthogonal 4x4 matrix ``H`` applied to the
block (``wavelets._HAAR``), so the gated sum of WG-Down is, per sample n and channel c,

    sum_i g[n, i, c] * DWT_i(x)[n, c] = (sum_i g[n, i, c] H_i) * block(x[n, c])

one depthwise 2x2 stride-2 filter per sample and channel. It is computed here from four strided
views of the input, one per pixel of the block, each multiplied by its kernel entry: no band is
ever written, and the views read channels-last memory in place.

WG-Up projects with a 1x1 convolution ``W`` (C -> 4C, read as the LL, LH, HL, HH coefficients),
gates each band and applies the inverse Haar transform, whose output pixel p of each 2x2 block is
``sum_i H[i, p] * band_i``. All three steps are linear in x, so they fold into one per-sample
weight ``W'_n[(c, p), :] = sum_i H[i, p] g[n, i, c] W[(i, c), :]`` (and bias alike): one batched
matrix product to four output pixels per input pixel, then a pixel shuffle. The MACs are the
projection's; the gated bands are never written.

Both are checked against the unfused DWT/IDWT paths (and so against PyWavelets) in
``tests/test_wavelet_gating.py``, in float32 and bfloat16, forward and backward.
"""

from __future__ import annotations

import torch

from spectral_diffusion.networks.wavelets import _HAAR


def _haar(like: torch.Tensor) -> torch.Tensor:
    """The 4x4 Haar matrix ``H[band, pixel]``, pixels of a 2x2 block in the order a b c d."""
    return _HAAR.to(device=like.device, dtype=like.dtype)


def haar_gated_downsample(x: torch.Tensor, gates: torch.Tensor) -> torch.Tensor:
    """``sum_i gates[:, i] * dwt2_stacked(x, "haar")[:, i]`` without the bands.

    Args:
        x: ``(N, C, H, W)`` with even H and W, in any memory format.
        gates: ``(N, 4, C, 1, 1)`` (or ``(N, 4, C)``), bands ordered LL, LH, HL, HH.

    Returns:
        ``(N, C, H/2, W/2)``, in the memory format of ``x``.
    """
    n, c, h, w = x.shape
    if h % 2 or w % 2:
        raise ValueError(f"the Haar-gated downsampling needs an even height and width; the input is {h}x{w}")
    gates = gates.reshape(n, 4, c).to(x.dtype)
    # kernel[n, pixel, c] = sum_i gates[n, i, c] * H[i, pixel]; one value per sample, pixel and channel
    kernel = torch.einsum("nic,ip->npc", gates, _haar(x))[..., None, None]  # (N, 4, C, 1, 1)
    a, b = x[..., 0::2, 0::2], x[..., 0::2, 1::2]
    c_, d = x[..., 1::2, 0::2], x[..., 1::2, 1::2]
    out = a * kernel[:, 0]
    out = out.addcmul_(b, kernel[:, 1]).addcmul_(c_, kernel[:, 2]).addcmul_(d, kernel[:, 3])
    return out


def haar_gated_upsample(
    x: torch.Tensor, gates: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    """``idwt2_stacked(gates * conv1x1(x, weight, bias).unflatten(1, (4, C)), "haar")`` in one product.

    Args:
        x: ``(N, C, H, W)``.
        gates: ``(N, 4, C, 1, 1)`` (or ``(N, 4, C)``).
        weight: the projection's ``(4C, C, 1, 1)`` (or ``(4C, C)``) weight, output rows band-major.
        bias: its ``(4C,)`` bias or None.

    Returns:
        ``(N, C, 2H, 2W)``, channels-last if ``x`` is.
    """
    n, c, h, w = x.shape
    gates = gates.reshape(n, 4, c).to(x.dtype)
    haar = _haar(x)
    proj = weight.reshape(4, c, -1).to(x.dtype)  # (band, out channel, in channel)
    # mix[n, c, band, pixel] = g[n, band, c] * H[band, pixel]
    mix = gates.transpose(1, 2)[..., None] * haar  # (N, C, 4, 4)
    folded = torch.einsum("ncip,ick->ncpk", mix, proj).reshape(n, 4 * c, -1)  # (N, C*4 [c, pixel], C_in)
    channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    if channels_last:
        tokens = x.permute(0, 2, 3, 1).reshape(n, h * w, -1)  # a view of channels-last memory
        out = torch.bmm(tokens, folded.transpose(1, 2))  # (N, HW, C*4)
        if bias is not None:
            out = out + torch.einsum("ncip,ic->ncp", mix, bias.reshape(4, c).to(x.dtype)).reshape(n, 1, 4 * c)
        # (N, H, W, C, 2, 2) -> memory (N, H, 2, W, 2, C): the channels-last layout of (N, C, 2H, 2W)
        out = out.reshape(n, h, w, c, 2, 2).permute(0, 1, 4, 2, 5, 3).reshape(n, 2 * h, 2 * w, c)
        return out.permute(0, 3, 1, 2)
    out = torch.bmm(folded, x.reshape(n, c, h * w))  # (N, C*4, HW)
    if bias is not None:
        out = out + torch.einsum("ncip,ic->ncp", mix, bias.reshape(4, c).to(x.dtype)).reshape(n, 4 * c, 1)
    return out.reshape(n, c, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3).reshape(n, c, 2 * h, 2 * w)

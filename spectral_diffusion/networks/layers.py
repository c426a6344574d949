"""Building blocks of the UNet: timestep embedding, residual blocks, self- and cross-attention.

Everything here is a plain ``nn.Module`` that knows nothing about diffusion: the timestep is just
a number that gets embedded.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps, shape ``(N,) -> (N, dim)``.

    The first half of the features are cosines and the second half sines, as in ADM and LDM.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=timesteps.device, dtype=torch.float32) / half)
    args = timesteps.float()[:, None] * freqs[None]
    embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        embedding = F.pad(embedding, (0, 1))
    return embedding


def group_norm(channels: int, max_groups: int = 32) -> nn.GroupNorm:
    """GroupNorm with the largest group count <= ``max_groups`` that divides ``channels``.

    Small pixel-space models use widths such as 48 or 96 that 32 does not divide.
    """
    groups = math.gcd(channels, max_groups)
    return nn.GroupNorm(groups, channels, eps=1e-6)


def zero_module(module: nn.Module) -> nn.Module:
    """Zero a module's parameters, so that a residual branch starts as the identity."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv residual block with an additive (scale-shift optional) timestep embedding."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        emb_channels: int,
        dropout: float = 0.0,
        scale_shift_norm: bool = True,
    ) -> None:
        super().__init__()
        self.scale_shift_norm = scale_shift_norm
        self.norm1 = group_norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.emb_proj = nn.Linear(emb_channels, out_channels * (2 if scale_shift_norm else 1))
        self.norm2 = group_norm(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = zero_module(nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.skip = nn.Identity() if in_channels == out_channels else nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        return self.skip(x) + self._second_half(self.conv1(F.silu(self.norm1(x))), emb)

    def _second_half(self, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """Timestep conditioning, then norm -> SiLU -> dropout -> conv2 of the residual branch."""
        emb_out = self.emb_proj(F.silu(emb))[:, :, None, None].to(h.dtype)
        if self.scale_shift_norm:
            scale, shift = emb_out.chunk(2, dim=1)
            h = self.norm2(h) * (1 + scale) + shift
        else:
            h = self.norm2(h + emb_out)
        return self.conv2(self.dropout(F.silu(h)))


def _head_count(channels: int, head_channels: int, num_heads: int | None) -> int:
    """Heads of an attention layer: ``num_heads`` if given, else ``channels // head_channels``."""
    if num_heads is not None:
        if channels % num_heads:
            raise ValueError(f"attention channels {channels} are not divisible by num_heads={num_heads}")
        return num_heads
    if channels % head_channels:
        raise ValueError(f"attention channels {channels} are not divisible by head_channels={head_channels}")
    return channels // head_channels


class SelfAttention(nn.Module):
    """Multi-head self-attention over the spatial positions, through ``scaled_dot_product_attention``.

    ``head_channels`` fixes the width of each head (LDM's ``num_head_channels``), so the number of
    heads grows with the channel count; ``num_heads``, if given, fixes the head count instead (LDM's
    ``num_heads``).
    """

    def __init__(self, channels: int, head_channels: int = 32, num_heads: int | None = None) -> None:
        super().__init__()
        self.num_heads = _head_count(channels, head_channels, num_heads)
        self.norm = group_norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = zero_module(nn.Conv2d(channels, channels, 1))

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        n, c, h, w = x.shape
        qkv = self.qkv(self.norm(x)).reshape(n, 3, self.num_heads, c // self.num_heads, h * w)
        # (N, heads, tokens, head_dim) for SDPA.
        q, k, v = (qkv[:, i].transpose(-1, -2) for i in range(3))
        out = F.scaled_dot_product_attention(q, k, v)
        out = out.transpose(-1, -2).reshape(n, c, h, w)
        return x + self.proj(out)


class CrossAttention(nn.Module):
    """Attention from the spatial positions (queries) to a sequence of embeddings (keys, values).

    LDM's SpatialTransformer reduced to its conditioning part: GroupNorm, queries from the image
    features, keys and values from the context (e.g. a text encoder's token embeddings), and a
    zero-initialised output projection, so that a network gains the layer as an identity and its
    unconditional behaviour is where training starts. Heads are sized like :class:`SelfAttention`'s.

    ``context_mask`` ``(N, L)`` is True at the tokens to attend to (the Hugging Face
    ``attention_mask`` convention); every row must keep at least one token.
    """

    def __init__(self, channels: int, context_dim: int, head_channels: int = 32, num_heads: int | None = None) -> None:
        super().__init__()
        self.num_heads = _head_count(channels, head_channels, num_heads)
        self.context_dim = context_dim
        self.norm = group_norm(channels)
        self.q = nn.Conv2d(channels, channels, 1)
        self.kv = nn.Linear(context_dim, 2 * channels)
        self.proj = zero_module(nn.Conv2d(channels, channels, 1))

    def forward(self, x: torch.Tensor, context: torch.Tensor, context_mask: torch.Tensor | None = None) -> torch.Tensor:
        n, c, h, w = x.shape
        heads, head_dim = self.num_heads, c // self.num_heads
        q = self.q(self.norm(x)).reshape(n, heads, head_dim, h * w).transpose(-1, -2)
        # (N, L, 2C) -> two (N, heads, L, head_dim)
        k, v = self.kv(context.to(x.dtype)).reshape(n, -1, 2, heads, head_dim).permute(2, 0, 3, 1, 4)
        mask = context_mask[:, None, None, :] if context_mask is not None else None
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        out = out.transpose(-1, -2).reshape(n, c, h, w)
        return x + self.proj(out)

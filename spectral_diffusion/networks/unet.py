"""The UNet backbone for pixel or latent space (ADM/LDM layout).

Layout, for ``channel_mult=(1, 2, 2)`` and ``num_res_blocks=2``::

    conv_in
    down_levels[0]: 2 x (ResBlock [+ attention]) -> downsample
    down_levels[1]: 2 x (ResBlock [+ attention]) -> downsample
    down_levels[2]: 2 x (ResBlock [+ attention])             (no downsample at the lowest level)
    middle: ResBlock -> attention -> ResBlock
    up_levels[0]:   3 x (ResBlock on [h, skip] [+ attention]) -> upsample   (lowest resolution first)
    up_levels[1]:   3 x (...) -> upsample
    up_levels[2]:   3 x (...)
    norm -> SiLU -> conv_out (zero-initialised)

Attention is placed at the feature-map *sizes* listed in ``attention_resolutions`` (e.g. 32, 16, 8
for a 64x64 latent, as the LDM configs put it), so a preset reads the same as the paper's table.
With ``context_dim`` set, every self-attention (and the middle one) is followed by a
cross-attention to a sequence of embeddings, e.g. a text encoder's tokens (LDM's text-to-image
layout, without the feed-forward part).

The network is a plain function ``(x_t, t, class_labels, context, context_mask) -> output``; what
the output means (eps, v or x0) is the diffusion process's business, not the network's.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from spectral_diffusion.networks.layers import (
    CrossAttention,
    ResBlock,
    SelfAttention,
    group_norm,
    timestep_embedding,
    zero_module,
)
from spectral_diffusion.networks.resampling import make_downsample, make_upsample


class ResAttnBlock(nn.Module):
    """A residual block, optionally followed by self-attention and then cross-attention."""

    def __init__(self, res: ResBlock, attn: SelfAttention | None, cross: CrossAttention | None = None) -> None:
        super().__init__()
        self.res = res
        self.attn = attn
        self.cross = cross

    def forward(
        self,
        x: torch.Tensor,
        emb: torch.Tensor,
        context: torch.Tensor | None = None,
        context_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        x = self.res(x, emb)
        if self.attn is not None:
            x = self.attn(x)
        return self.cross(x, context, context_mask) if self.cross is not None else x


class UNetLevel(nn.Module):
    """The blocks of one resolution level plus its resampling layer (``None`` at the ends).

    Kept as a module of its own so that hooks (e.g. feature distillation) can capture the output of
    a whole level by name: ``up_levels.1``.
    """

    def __init__(self, blocks: list[ResAttnBlock], resample: nn.Module | None) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.resample = resample


class UNet(nn.Module):
    """ADM/LDM-style UNet with pluggable resampling layers and optional class conditioning.

    Args:
        image_size: spatial size of the (square) input; fixes where attention goes.
        in_channels: channels of the input (1 for Fashion-MNIST, 3 or 4 for latents).
        base_channels: width of the first level.
        channel_mult: width multiplier of each level; its length is the number of levels.
        num_res_blocks: residual blocks per level on the way down (one more on the way up).
        attention_resolutions: feature-map sizes that get self-attention after each ResBlock.
        out_channels: output channels; defaults to ``in_channels``.
        head_channels: channels per attention head.
        num_heads: a fixed number of attention heads instead (overrides ``head_channels``).
        dropout: dropout inside the residual blocks.
        num_classes: if set, the network is class-conditional. Label ``num_classes`` is the
            "no class" label that classifier-free guidance uses.
        context_dim: if set, the network takes a sequence of ``context_dim``-wide embeddings
            (``context``, e.g. CLIP text tokens) through a cross-attention after every
            self-attention; heads are sized by ``head_channels`` / ``num_heads``. No context, or a
            row of ``context_mask`` with no token left, means "no condition": a learned null token
            (``null_context``) stands in, which is what classifier-free guidance needs.
        downsample, upsample: names of the resampling layers (see ``networks/resampling.py``), e.g.
            ``conv`` / ``nearest_conv`` (LDM) or ``wavelet_gated`` (Spectral Diffusion).
        downsample_options, upsample_options: extra arguments of those layers, e.g.
            ``{wavelet: haar, reduction: 4, timestep_gates: false}`` for the wavelet-gated ones.
        scale_shift_norm: timestep embedding as scale and shift of the second norm (ADM) or added.
        mid_attention: self-attention in the middle block.
    """

    def __init__(
        self,
        image_size: int,
        in_channels: int,
        base_channels: int,
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
        channel_mult = tuple(channel_mult)
        factor = 2 ** (len(channel_mult) - 1)
        if image_size % factor:
            raise ValueError(
                f"image_size={image_size} must be divisible by 2**(len(channel_mult)-1)={factor} "
                f"for channel_mult={list(channel_mult)}"
            )
        sizes = {image_size // 2**i for i in range(len(channel_mult))}
        unused = sorted(set(attention_resolutions) - sizes)
        if unused:
            raise ValueError(
                f"attention_resolutions {unused} are not feature-map sizes of this UNet; "
                f"with image_size={image_size} and {len(channel_mult)} levels they are {sorted(sizes, reverse=True)}"
            )
        if context_dim is not None and not (attention_resolutions or mid_attention):
            raise ValueError(
                f"context_dim={context_dim} adds cross-attention after each self-attention, but this UNet has "
                "none: set attention_resolutions or mid_attention=true"
            )
        self.image_size = image_size
        self.in_channels = in_channels
        self.out_channels = out_channels or in_channels
        self.num_classes = num_classes
        self.context_dim = context_dim
        emb_channels = 4 * base_channels
        self.base_channels = base_channels

        self.time_embed = nn.Sequential(
            nn.Linear(base_channels, emb_channels), nn.SiLU(), nn.Linear(emb_channels, emb_channels)
        )
        # One extra row: the "null" label used for unconditional predictions under guidance.
        self.class_embed = nn.Embedding(num_classes + 1, emb_channels) if num_classes else None
        # The "no context" token; unit-norm-ish at the start, like the embeddings it stands in for.
        self.null_context = nn.Parameter(torch.randn(context_dim) / context_dim**0.5) if context_dim else None

        def cross_attention(channels: int) -> CrossAttention | None:
            return CrossAttention(channels, context_dim, head_channels, num_heads) if context_dim else None

        def block(cin: int, cout: int, size: int) -> ResAttnBlock:
            with_attn = size in attention_resolutions
            attn = SelfAttention(cout, head_channels, num_heads) if with_attn else None
            cross = cross_attention(cout) if with_attn else None
            return ResAttnBlock(ResBlock(cin, cout, emb_channels, dropout, scale_shift_norm), attn, cross)

        self.conv_in = nn.Conv2d(in_channels, base_channels, 3, padding=1)
        skip_channels = [base_channels]
        ch, size = base_channels, image_size
        self.down_levels = nn.ModuleList()
        for level, mult in enumerate(channel_mult):
            blocks = []
            for _ in range(num_res_blocks):
                blocks.append(block(ch, base_channels * mult, size))
                ch = base_channels * mult
                skip_channels.append(ch)
            last = level == len(channel_mult) - 1
            resample = None if last else make_downsample(downsample, ch, emb_channels, **(downsample_options or {}))
            self.down_levels.append(UNetLevel(blocks, resample))
            if not last:
                skip_channels.append(ch)
                size //= 2

        self.mid_block1 = ResBlock(ch, ch, emb_channels, dropout, scale_shift_norm)
        self.mid_attn = SelfAttention(ch, head_channels, num_heads) if mid_attention else None
        self.mid_cross = cross_attention(ch) if mid_attention else None
        self.mid_block2 = ResBlock(ch, ch, emb_channels, dropout, scale_shift_norm)

        self.up_levels = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            blocks = []
            for _ in range(num_res_blocks + 1):
                blocks.append(block(ch + skip_channels.pop(), base_channels * mult, size))
                ch = base_channels * mult
            resample = make_upsample(upsample, ch, emb_channels, **(upsample_options or {})) if level > 0 else None
            self.up_levels.append(UNetLevel(blocks, resample))
            if level > 0:
                size *= 2

        self.norm_out = group_norm(ch)
        self.conv_out = zero_module(nn.Conv2d(ch, self.out_channels, 3, padding=1))

    def embed(self, timesteps: torch.Tensor, class_labels: torch.Tensor | None) -> torch.Tensor:
        """The embedding that conditions every block: timestep plus (optional) class."""
        # In the weights' dtype: a network kept in bfloat16 (a frozen teacher) takes float32 sinusoids badly.
        sinusoids = timestep_embedding(timesteps, self.base_channels).to(self.time_embed[0].weight.dtype)
        emb = self.time_embed(sinusoids)
        if self.class_embed is not None:
            if class_labels is None:
                class_labels = torch.full_like(timesteps, self.num_classes, dtype=torch.long)
            emb = emb + self.class_embed(class_labels)
        elif class_labels is not None:
            raise ValueError("class_labels were given to a UNet built without num_classes")
        return emb

    def prepare_context(
        self, context: torch.Tensor | None, context_mask: torch.Tensor | None, batch: int
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Checked ``(context (N, L, D), mask (N, L) or None)``, with the null token for "no condition".

        ``context=None`` gives every sample the one-token null context. A row of ``context_mask``
        with no token left (dropped for classifier-free guidance) gets the null token in every
        position, all attended to: attention over L copies of one token equals attention over that
        token alone, so a dropped row and ``context=None`` give the same prediction.
        """
        if self.context_dim is None:
            if context is not None or context_mask is not None:
                raise ValueError("context was given to a UNet built without context_dim")
            return None, None
        if context is None:
            if context_mask is not None:
                raise ValueError("context_mask was given without context")
            # repeat, not expand: a view of a parameter under no_grad still "requires grad" without a
            # grad_fn, which trips module hooks such as FlopCounterMode's.
            return self.null_context.repeat(batch, 1, 1), None
        if context.ndim != 3 or context.shape[0] != batch or context.shape[2] != self.context_dim:
            raise ValueError(
                f"context must have shape (batch={batch}, tokens, context_dim={self.context_dim}), "
                f"got {tuple(context.shape)}"
            )
        if context_mask is None:
            keep = torch.ones(context.shape[:2], dtype=torch.bool, device=context.device)
        elif context_mask.shape != context.shape[:2]:
            raise ValueError(
                f"context_mask must have shape {tuple(context.shape[:2])} (batch, tokens), got {tuple(context_mask.shape)}"
            )
        else:
            keep = context_mask.bool()
        empty = ~keep.any(dim=1)
        # In training the null token joins the graph even when no row is dropped (its gradient is
        # then zero): DDP without find_unused_parameters requires every parameter in every step.
        if self.training or empty.any():
            null = self.null_context.to(context.dtype).expand_as(context)
            context = torch.where(empty[:, None, None], null, context)
            keep = keep | empty[:, None]
        return context, (None if keep.all() else keep)

    def forward(
        self,
        x: torch.Tensor,
        timesteps: torch.Tensor,
        class_labels: torch.Tensor | None = None,
        context: torch.Tensor | None = None,
        context_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if timesteps.ndim == 0:
            timesteps = timesteps.expand(x.shape[0])
        emb = self.embed(timesteps, class_labels)
        context, context_mask = self.prepare_context(context, context_mask, x.shape[0])

        h = self.conv_in(x)
        skips = [h]
        for level in self.down_levels:
            for blk in level.blocks:
                h = blk(h, emb, context, context_mask)
                skips.append(h)
            if level.resample is not None:
                h = level.resample(h, emb)
                skips.append(h)

        h = self.mid_block1(h, emb)
        if self.mid_attn is not None:
            h = self.mid_attn(h)
        if self.mid_cross is not None:
            h = self.mid_cross(h, context, context_mask)
        h = self.mid_block2(h, emb)

        for level in self.up_levels:
            for blk in level.blocks:
                h = blk(torch.cat([h, skips.pop()], dim=1), emb, context, context_mask)
            if level.resample is not None:
                h = level.resample(h, emb)

        return self.conv_out(F.silu(self.norm_out(h)))

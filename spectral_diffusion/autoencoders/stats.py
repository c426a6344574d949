"""Latent statistics estimated from data, instead of a hard-coded scale factor such as 0.18215.

LDM estimates one global ``scale_factor = 1 / std`` of the first batch's latents; EDM2 keeps a
mean and std per channel. Both are available here: the shift is always the per-channel mean, and the
scale is either one std over all channels (after each channel's shift; LDM's choice) or one std per
channel. Sums are accumulated in float64, so many batches of float16/float32 latents do not lose
precision, and the std is the population one (ddof=0).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from spectral_diffusion.autoencoders.base import FirstStage


def _images(batch: Any) -> torch.Tensor:
    """A batch is images or an ``(images, labels, ...)`` tuple, as the DataModules yield them."""
    images = batch[0] if isinstance(batch, (tuple, list)) else batch
    if not torch.is_tensor(images) or images.ndim != 4:
        raise ValueError(f"expected batches of images (N, C, H, W), got {type(images).__name__}")
    return images


@torch.no_grad()
def estimate_latent_stats(
    first_stage: FirstStage,
    batches: Iterable[Any],
    max_samples: int,
    per_channel_scale: bool = False,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean (shift) and std (scale) of ``first_stage.encode_raw`` over up to ``max_samples`` images.

    Args:
        first_stage: the frozen first stage; its current stats are ignored (raw latents are used).
        batches: an iterable of image batches in [-1, 1] (a DataLoader, or a list of tensors).
        max_samples: stop after this many images (the last batch is cut to fit).
        per_channel_scale: one std per channel (EDM2) instead of one over all channels (LDM).
        generator: drives posterior draws when the first stage samples its posterior.

    Returns:
        ``(shift, scale)``, float32 tensors of shape ``(latent_channels,)`` on the CPU.
    """
    if max_samples < 1:
        raise ValueError(f"max_samples must be >= 1, got {max_samples}")
    device = first_stage.latent_shift.device
    total = torch.zeros(first_stage.latent_channels, dtype=torch.float64)
    total_sq = torch.zeros_like(total)
    count = 0  # latent positions per channel
    seen = 0
    for batch in batches:
        images = _images(batch)[: max_samples - seen]
        raw = first_stage.encode_raw(images.to(device, first_stage._compute_dtype()), generator)
        raw = raw.detach().to("cpu", torch.float64)
        total += raw.sum(dim=(0, 2, 3))
        total_sq += raw.square().sum(dim=(0, 2, 3))
        count += raw.shape[0] * raw.shape[2] * raw.shape[3]
        seen += images.shape[0]
        if seen >= max_samples:
            break
    if seen == 0:
        raise ValueError("estimate_latent_stats got no images: the batches are empty")
    mean = total / count
    # E[x^2] - E[x]^2 in float64; the clamp only removes rounding below zero for constant channels.
    var = (total_sq / count - mean.square()).clamp(min=0.0)
    var = var if per_channel_scale else var.mean().expand_as(var)
    std = var.sqrt()
    if not bool((std > 0).all()):
        dead = [i for i, s in enumerate(std.tolist()) if s == 0]
        raise ValueError(
            f"latent channels {dead} are constant over {seen} images: no scale can be estimated "
            "(an untrained or collapsed autoencoder?)"
        )
    return mean.float(), std.float()

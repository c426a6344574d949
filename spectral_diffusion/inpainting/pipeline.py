"""Inpainting in pixel or latent space: encode the known image, sample under the constraint, decode.

With a first stage (a latent diffusion model), the problem moves to latent space as in the LDM
setting of the constrained-sampling paper: the known image is encoded, the pixel mask is
downsampled to the latent grid (:func:`~spectral_diffusion.diffusion.constrained.downsample_mask`:
average pooling over each ``f x f`` block, then a threshold; by default a latent is known only if
all its pixels are), the constrained sampler runs on latents, and the result is decoded. The known
pixels can then be pasted back over the decoded image (``paste_known``), which hides the
autoencoder's reconstruction error there at the price of a possible seam.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from spectral_diffusion.diffusion.constrained import (
    ConstraintError,
    Generators,
    NewtonSettings,
    check_problem,
    constrained_sample,
    downsample_mask,
)
from spectral_diffusion.diffusion.samplers import Denoiser, Sampler


@dataclass
class InpaintingResult:
    """What :func:`inpaint` made.

    Attributes:
        images: the completed images ``(N, C, H, W)``, in about [-1, 1] (decoded, if latent).
        samples: the sampler's output in the network's space (equal to ``images`` in pixel space).
        sample_mask: the known mask the sampler used, in the network's space (1 = known).
    """

    images: torch.Tensor
    samples: torch.Tensor
    sample_mask: torch.Tensor


def inpaint(
    model: Denoiser,
    sampler: Sampler,
    images: torch.Tensor,
    known: torch.Tensor,
    method: str = "newton",
    first_stage: nn.Module | None = None,
    generator: Generators = None,
    class_labels: torch.Tensor | None = None,
    newton: NewtonSettings | None = None,
    dps_scale: float = 1.0,
    latent_mask_threshold: float = 1.0,
    paste_known: bool = False,
) -> InpaintingResult:
    """Complete ``images`` ``(N, C, H, W)`` in [-1, 1] where ``known`` (1 = keep) is 0.

    ``known`` is a pixel mask that broadcasts against ``images`` (``(1, 1, H, W)``, ``(N, 1, H, W)``,
    ...). With ``first_stage``, sampling happens in its latent space (module doc). ``method``,
    ``newton`` and ``dps_scale`` are those of :func:`~spectral_diffusion.diffusion.constrained.constrained_sample`.
    """
    known = check_problem(images, known)
    if first_stage is None:
        target, sample_mask = images, known
    else:
        if images.shape[1] != first_stage.image_channels:
            raise ConstraintError(
                f"the first stage encodes {first_stage.image_channels}-channel images, got {images.shape[1]} channels"
            )
        with torch.no_grad():
            target = first_stage.encode(images)
        pixel_mask = known.amin(dim=1, keepdim=True)  # a pixel counts as known only if all its channels are
        sample_mask = downsample_mask(pixel_mask, first_stage.downsample_factor, latent_mask_threshold)
    samples = constrained_sample(
        method, model, sampler, target, sample_mask, generator, class_labels, newton=newton, dps_scale=dps_scale
    )
    if first_stage is None:
        completed = samples
    else:
        with torch.no_grad():
            completed = first_stage.decode(samples)
    if paste_known:
        completed = known * images + (1 - known) * completed
    return InpaintingResult(images=completed, samples=samples, sample_mask=sample_mask)


def decoded_shape(sample_shape: tuple[int, int, int], first_stage: nn.Module | None) -> tuple[int, int, int]:
    """``(C, H, W)`` of the images a model makes from samples of ``sample_shape`` (decoded, if latent)."""
    if first_stage is None:
        return tuple(sample_shape)
    f = first_stage.downsample_factor
    return (first_stage.image_channels, sample_shape[1] * f, sample_shape[2] * f)


def masked_psnr(
    images: torch.Tensor, reference: torch.Tensor, mask: torch.Tensor, data_range: float = 2.0
) -> torch.Tensor:
    """Per-image PSNR (dB) between ``images`` and ``reference`` over the pixels where ``mask`` is 1.

    Images are clamped to [-1, 1] first (what a saved PNG holds); ``data_range`` 2 is that range.
    An exact match gives ``inf``.
    """
    mask = check_problem(reference, mask).expand_as(reference)
    diff = (images.clamp(-1, 1) - reference.clamp(-1, 1)) ** 2 * mask
    count = mask.flatten(1).sum(1)
    if bool((count == 0).any()):
        raise ConstraintError("the mask selects no pixel of at least one image; PSNR there is undefined")
    mse = diff.flatten(1).sum(1) / count
    return 10 * torch.log10(data_range**2 / mse.double()).nan_to_num(posinf=math.inf)

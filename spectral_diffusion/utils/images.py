"""Saving sample grids."""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch
from PIL import Image

#: How images in [-1, 1] become uint8: ``round`` to the nearest level (this framework's default, and
#: exact for images that came from uint8), or ``truncate`` as LDM's and ADM's sampling scripts do,
#: ``((x + 1) * 127.5).clamp(0, 255).to(uint8)``, which is on average half a level darker.
QUANTIZATIONS = ("round", "truncate")


def to_uint8(images: torch.Tensor, quantize: str = "round") -> torch.Tensor:
    """Images in [-1, 1], shape ``(N, C, H, W)`` -> uint8 in [0, 255], by ``quantize`` (:data:`QUANTIZATIONS`)."""
    scaled = (images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5
    if quantize == "round":
        return scaled.round().to(torch.uint8)
    if quantize == "truncate":
        return scaled.clamp(0, 255).to(torch.uint8)  # the cast truncates toward zero
    raise ValueError(f"unknown quantize={quantize!r}; choose one of {list(QUANTIZATIONS)}")


def make_grid(images: torch.Tensor, nrow: int | None = None, padding: int = 2) -> torch.Tensor:
    """Tile ``(N, C, H, W)`` images in [-1, 1] into one ``(H', W', C)`` uint8 grid (C is 1 or 3)."""
    images = to_uint8(images)
    n, c, h, w = images.shape
    if c not in (1, 3):
        raise ValueError(f"can only show 1- or 3-channel images, got {c} channels; decode latents first")
    nrow = nrow or math.ceil(math.sqrt(n))
    ncol = math.ceil(n / nrow)
    grid = torch.zeros(c, ncol * (h + padding) + padding, nrow * (w + padding) + padding, dtype=torch.uint8)
    for i in range(n):
        r, col = divmod(i, nrow)
        top, left = padding + r * (h + padding), padding + col * (w + padding)
        grid[:, top : top + h, left : left + w] = images[i]
    return grid.permute(1, 2, 0)


def save_grid(images: torch.Tensor, path: str | Path, nrow: int | None = None, scale: int = 1) -> Path:
    """Write a PNG grid of images in [-1, 1]; ``scale`` enlarges small images (nearest neighbour).

    The file is written to a temporary name and renamed, so a reader never sees half a PNG.
    """
    grid = make_grid(images, nrow).numpy()
    img = Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid)
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    img.save(tmp, format="PNG")
    os.replace(tmp, path)
    return path

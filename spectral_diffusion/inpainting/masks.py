"""Inpainting masks: named regions and mask images.

Two conventions meet here, and each function says which it uses:

- **Hole masks** (what users give): the region to *generate*. A named region (``right_half``:
  generate the right half from the known left half) or a mask image whose white pixels are
  generated and black pixels kept, as in diffusers' inpainting pipelines.
- **Known masks** (what the samplers take, ``diffusion/constrained.py``): 1 where the image is
  known, 0 where it is generated. :func:`known_mask` converts.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from spectral_diffusion.diffusion.constrained import ConstraintError

#: Named hole regions: the part of the image that is generated.
NAMED_HOLES = ("left_half", "right_half", "top_half", "bottom_half", "center")


def named_hole(name: str, height: int, width: int) -> torch.Tensor:
    """The hole ``name`` as a ``(1, 1, H, W)`` float mask, 1 where the image is generated.

    ``center`` is the central box of half the height and width (a quarter of the area), the usual
    box-inpainting task; the halves split at ``W // 2`` (``H // 2``).
    """
    hole = torch.zeros(1, 1, height, width)
    if name == "left_half":
        hole[..., : width // 2] = 1
    elif name == "right_half":
        hole[..., width // 2 :] = 1
    elif name == "top_half":
        hole[..., : height // 2, :] = 1
    elif name == "bottom_half":
        hole[..., height // 2 :, :] = 1
    elif name == "center":
        top, left = height // 4, width // 4
        hole[..., top : top + height // 2, left : left + width // 2] = 1
    else:
        raise ConstraintError(f"unknown mask name {name!r}; use one of {list(NAMED_HOLES)} or the path of a mask image")
    return hole


def read_hole_image(path: str | Path, size: tuple[int, int] | None = None) -> torch.Tensor:
    """A mask image as a ``(1, 1, H, W)`` hole mask: pixels brighter than mid-grey are generated.

    ``size`` ``(width, height)``, if given, is the size the mask must have (that of the image it
    belongs to); a mask of another size is an error rather than silently resized.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"mask {path} does not exist; give a mask image (white = generate) or one of {list(NAMED_HOLES)}"
        )
    try:
        with Image.open(path) as image:
            image.load()
            grey = image.convert("L")
    except (UnidentifiedImageError, OSError) as err:
        raise ConstraintError(f"cannot read mask image {path}: {err}") from err
    if size is not None and grey.size != tuple(size):
        raise ConstraintError(
            f"mask {path} is {grey.size[0]}x{grey.size[1]} (WxH) but the image is {size[0]}x{size[1]}; "
            "the mask must have the image's size"
        )
    array = np.asarray(grey, dtype=np.uint8) > 127
    return torch.from_numpy(array.astype(np.float32))[None, None]


def known_mask(hole: torch.Tensor) -> torch.Tensor:
    """Hole mask (1 = generate) -> known mask (1 = keep), the samplers' convention."""
    return 1.0 - hole


def mask_image(hole: torch.Tensor) -> torch.Tensor:
    """A hole mask as an image in [-1, 1] for saving: white where generated, black where kept."""
    return hole.float() * 2 - 1

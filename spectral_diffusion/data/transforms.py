"""LDM-style image preprocessing shared by every image data set.

decoded PIL image -> RGB -> central square crop -> antialiased resize to ``resolution`` -> optional
horizontal flip -> float tensor ``(3, resolution, resolution)`` in [-1, 1].

This is the preprocessing of the LDM repository's LSUN loader (crop the central square, resize
with PIL's bicubic filter, which is antialiased when it shrinks), applied to every data set so
that teacher and student see the data the way the teacher was trained on it.

Colour modes (``to_rgb``):

- ``RGB`` as is; ``L`` and ``1`` are replicated to three channels.
- Modes with alpha (``RGBA``, ``LA``, ``PA``, ``RGBa``, ``La``) and palette images with a
  transparent colour are composited onto **white**. Fully transparent pixels carry arbitrary colour
  (often black, sometimes leftovers of an editor); dropping the alpha channel would show it, while
  compositing shows the image as a viewer draws it on a page.
- ``P`` without transparency goes through its palette.
- ``CMYK`` is converted by Pillow, which also undoes the inversion of Adobe CMYK JPEGs.
- 16-bit grayscale (``I;16``, ``I;16B``, ``I;16L``, ``I;16N``) and Pillow's 32-bit integer mode
  ``I`` (which holds 16-bit PNG/TIFF/PGM data) are scaled from 0..65535 to 0..255 (divide by
  257 and round), not clipped: Pillow's own ``convert("L")`` clips, turning every value above 255
  white. Values of ``I`` images outside 0..65535 are clipped.
- Anything else Pillow can convert to RGB (``YCbCr``, ...) is converted; modes it cannot
  (floating-point ``F``, ``LAB``, ...) raise ``ValueError`` naming the image and the mode.

EXIF orientation is applied first, so phone photos stand the right way up.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageOps

#: Background that transparent pixels are composited onto.
ALPHA_BACKGROUND = (255, 255, 255)
#: The values of ``data.small_images``.
SMALL_IMAGE_POLICIES = ("upscale", "error")

_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")


class ImageTooSmallError(ValueError):
    """An image is smaller than the requested resolution and ``small_images=error``."""


def _composite_on_background(image: Image.Image) -> Image.Image:
    rgba = image.convert("RGBA")
    background = Image.new("RGBA", rgba.size, ALPHA_BACKGROUND + (255,))
    return Image.alpha_composite(background, rgba).convert("RGB")


def _sixteen_bit_to_rgb(image: Image.Image) -> Image.Image:
    values = np.asarray(image).astype(np.float64)
    eight_bit = np.clip(np.rint(values / 257.0), 0, 255).astype(np.uint8)
    return Image.fromarray(eight_bit, mode="L").convert("RGB")


def to_rgb(image: Image.Image, name: str = "image") -> Image.Image:
    """``image`` as 8-bit RGB, converting every mode as the module doc describes.

    ``name`` (a file name or key) only appears in the error for modes that cannot be converted.
    """
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in _ALPHA_MODES or (mode == "P" and "transparency" in image.info):
        return _composite_on_background(image)
    if mode in _SIXTEEN_BIT_MODES:
        return _sixteen_bit_to_rgb(image)
    if mode == "F":
        raise ValueError(
            f"{name}: floating-point images (mode F) have no defined 8-bit range; convert them to PNG/JPEG"
        )
    try:
        return image.convert("RGB")
    except ValueError as err:
        raise ValueError(f"{name}: cannot convert image mode {mode!r} to RGB ({err})") from err


def center_square_box(width: int, height: int) -> tuple[int, int, int, int]:
    """The box ``(left, top, right, bottom)`` of the central square of a ``width`` x ``height`` image.

    Odd margins put the extra pixel on the right/bottom, as the LDM loaders' integer slicing does.
    """
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return left, top, left + side, top + side


def to_tensor(image: Image.Image) -> torch.Tensor:
    """An 8-bit RGB image as a float tensor ``(3, H, W)`` in [-1, 1] (0 -> -1, 255 -> 1)."""
    array = np.array(image, dtype=np.uint8, copy=True)
    return torch.from_numpy(array).permute(2, 0, 1).float().div_(127.5).sub_(1.0)


@dataclass(frozen=True)
class ImageTransform:
    """The preprocessing of one decoded image (module doc), as a picklable callable.

    Args:
        resolution: side of the square output.
        small_images: what to do with images whose shorter side is below ``resolution``:
            ``upscale`` (bicubic) or ``error`` (``ImageTooSmallError`` naming the image).
    """

    resolution: int
    small_images: str = "upscale"

    def __post_init__(self) -> None:
        if not isinstance(self.resolution, int) or isinstance(self.resolution, bool) or self.resolution < 1:
            raise ValueError(f"data.resolution={self.resolution!r} must be a positive integer (e.g. 256)")
        if self.small_images not in SMALL_IMAGE_POLICIES:
            raise ValueError(
                f"data.small_images={self.small_images!r} must be one of {', '.join(SMALL_IMAGE_POLICIES)}"
            )

    def square(self, image: Image.Image, name: str = "image") -> Image.Image:
        """The central square of ``image`` resized to ``resolution`` (RGB, EXIF orientation applied)."""
        ImageOps.exif_transpose(image, in_place=True)
        image = to_rgb(image, name)
        box = center_square_box(*image.size)
        side = box[2] - box[0]
        if side < self.resolution and self.small_images == "error":
            raise ImageTooSmallError(
                f"{name} is {image.size[0]}x{image.size[1]}, smaller than data.resolution={self.resolution}; "
                "set data.small_images=upscale to upscale such images, or lower data.resolution"
            )
        square = image.crop(box)
        if side == self.resolution:
            return square  # no resampling: an exact crop keeps the pixels untouched
        # Crop, then resize (as the LDM loaders do): resize(box=...) would let the filter read pixels
        # outside the square, which changes the border pixels.
        return square.resize((self.resolution, self.resolution), Image.Resampling.BICUBIC)

    def __call__(self, image: Image.Image, name: str = "image", flip: bool = False) -> torch.Tensor:
        """``image`` preprocessed into a ``(3, resolution, resolution)`` tensor in [-1, 1]."""
        tensor = to_tensor(self.square(image, name))
        return tensor.flip(-1) if flip else tensor

"""Reading an input image (and its mask image) into the shape a model makes.

A user's image rarely has the model's exact size and channels. ``fit`` says what to do:

- ``resize``: the central square, resized (bicubic for the image, nearest for the mask), as
  ``data/transforms.py`` prepares every training image;
- ``pad``: centred on a background canvas of the model's size (black for the image, "known" for the
  mask), as ``FashionMNISTDataModule`` pads its 28x28 images to 32x32; only for images no larger
  than the model's size;
- ``error``: the image must already have the model's size.

Channels follow the model: 1 -> greyscale (Pillow's ``L``, ITU-R 601 luma), 3 -> RGB, with every
colour mode converted as ``data/transforms.py: to_rgb`` does.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from spectral_diffusion.data.transforms import center_square_box, to_rgb, to_tensor
from spectral_diffusion.diffusion.constrained import ConstraintError

FITS = ("resize", "pad", "error")


def read_image(path: str | Path) -> Image.Image:
    """The image at ``path``, decoded, with its EXIF orientation applied; clear errors otherwise."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"image {path} does not exist")
    try:
        with Image.open(path) as image:
            image.load()
            return ImageOps.exif_transpose(image)
    except (UnidentifiedImageError, OSError) as err:
        raise ConstraintError(f"cannot read image {path} ({err}); give a PNG or JPEG file") from err


def fit_to_size(
    image: Image.Image, size: int, fit: str, resample: Image.Resampling, fill: int | tuple, name: str
) -> Image.Image:
    """``image`` brought to ``size x size`` as ``fit`` says (module doc); ``fill`` is the padding colour."""
    if fit not in FITS:
        raise ConstraintError(f"fit={fit!r} is not one of {list(FITS)}")
    width, height = image.size
    if (width, height) == (size, size):
        return image
    if fit == "error":
        raise ConstraintError(
            f"{name} is {width}x{height} but the model makes {size}x{size} images; resize it, or set fit=resize "
            "(central square, resized) or fit=pad (centred on a black canvas; for smaller images)"
        )
    if fit == "pad":
        if width > size or height > size:
            raise ConstraintError(
                f"{name} is {width}x{height}, larger than the model's {size}x{size}: it cannot be padded; use fit=resize"
            )
        canvas = Image.new(image.mode, (size, size), fill)
        canvas.paste(image, ((size - width) // 2, (size - height) // 2))
        return canvas
    box = center_square_box(width, height)
    square = image.crop(box)
    return square if box[2] - box[0] == size else square.resize((size, size), resample)


def image_to_tensor(image: Image.Image, channels: int, name: str = "image") -> torch.Tensor:
    """A PIL image as a ``(1, channels, H, W)`` float tensor in [-1, 1] (0 -> -1, 255 -> 1)."""
    if channels == 3:
        return to_tensor(to_rgb(image, name))[None]
    if channels == 1:
        grey = image if image.mode == "L" else to_rgb(image, name).convert("L")
        array = np.array(grey, dtype=np.uint8, copy=True)
        return torch.from_numpy(array).float().div_(127.5).sub_(1.0)[None, None]
    raise ConstraintError(f"{name}: the model makes {channels}-channel images; only 1 (grey) or 3 (RGB) can be read")


def load_image(path: str | Path, channels: int, size: int, fit: str = "resize") -> tuple[torch.Tensor, tuple[int, int]]:
    """The image at ``path`` as ``(1, channels, size, size)`` in [-1, 1], and its original ``(width, height)``."""
    image = read_image(path)
    original = image.size
    fitted = fit_to_size(to_rgb(image, str(path)), size, fit, Image.Resampling.BICUBIC, (0, 0, 0), f"image {path}")
    return image_to_tensor(fitted, channels, str(path)), original


def fit_hole(hole: torch.Tensor, size: int, fit: str) -> torch.Tensor:
    """A ``(1, 1, h, w)`` hole mask given at the input image's size, brought to the model's as the image was.

    Padding is known background (0 in a hole mask); resizing is nearest-neighbour, so the mask stays
    binary.
    """
    array = (hole[0, 0].numpy() > 0.5).astype(np.uint8) * 255
    fitted = fit_to_size(Image.fromarray(array, mode="L"), size, fit, Image.Resampling.NEAREST, 0, "the mask")
    return torch.from_numpy((np.asarray(fitted) > 127).astype(np.float32))[None, None]

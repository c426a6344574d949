"""Inpainting and outpainting with a trained diffusion model, in pixel or latent space.

The samplers live in ``spectral_diffusion/diffusion/constrained.py``; this package adds what a
user-facing tool needs around them: masks (``masks.py``), reading images into the model's shape
(``images.py``) and the encode -> sample -> decode path (``pipeline.py``).
"""

from spectral_diffusion.inpainting.images import FITS, fit_hole, load_image
from spectral_diffusion.inpainting.masks import NAMED_HOLES, known_mask, mask_image, named_hole, read_hole_image
from spectral_diffusion.inpainting.pipeline import InpaintingResult, decoded_shape, inpaint, masked_psnr

__all__ = [
    "FITS",
    "NAMED_HOLES",
    "InpaintingResult",
    "decoded_shape",
    "fit_hole",
    "inpaint",
    "known_mask",
    "load_image",
    "mask_image",
    "masked_psnr",
    "named_hole",
    "read_hole_image",
]

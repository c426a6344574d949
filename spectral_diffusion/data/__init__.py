"""Lightning DataModules: each yields ``(images in [-1, 1], labels)`` batches."""

from spectral_diffusion.data.fashion_mnist import DataNotFoundError, FashionMNISTDataModule

__all__ = ["DataNotFoundError", "FashionMNISTDataModule"]

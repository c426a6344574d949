"""Lightning DataModules: each yields ``(images in [-1, 1], labels)`` batches."""

from spectral_diffusion.data.celebahq import CelebAHQDataModule
from spectral_diffusion.data.cifar10 import CIFAR10DataModule
from spectral_diffusion.data.fashion_mnist import DataNotFoundError, FashionMNISTDataModule
from spectral_diffusion.data.image_dataset import UnreadableImageError
from spectral_diffusion.data.image_folder import ImageFolderDataModule
from spectral_diffusion.data.latents import LatentDataModule, LatentStore, LatentStoreError, write_latent_store
from spectral_diffusion.data.lsun import LSUNDataModule
from spectral_diffusion.data.transforms import ImageTooSmallError

__all__ = [
    "CIFAR10DataModule",
    "CelebAHQDataModule",
    "DataNotFoundError",
    "FashionMNISTDataModule",
    "ImageFolderDataModule",
    "ImageTooSmallError",
    "LatentDataModule",
    "LatentStore",
    "LatentStoreError",
    "LSUNDataModule",
    "UnreadableImageError",
    "write_latent_store",
]

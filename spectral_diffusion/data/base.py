"""What every image DataModule shares: config checks, loaders, splits, and "not found" errors.

The contract (the same as ``FashionMNISTDataModule``'s): batches are ``(images, labels)``, images
float ``(B, C, H, W)`` in [-1, 1], labels int64; ``image_shape`` is ``(C, H, W)``, ``num_classes``
an int or ``None``, ``provides_latents`` is False (the training module encodes images itself);
``prepare_data`` is the only place a download may happen; ``setup`` builds the datasets.
"""

from __future__ import annotations

import abc
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from spectral_diffusion.data.image_dataset import CORRUPT_POLICIES, EncodedImageDataset
from spectral_diffusion.data.resumable_sampler import resumable_train_loader
from spectral_diffusion.data.sources import ImageSource
from spectral_diffusion.data.transforms import ImageTransform

log = logging.getLogger(__name__)


class DataNotFoundError(FileNotFoundError):
    """The data set's files are not where the config says (the message says where it looked)."""


def resolve_pin_memory(pin_memory: bool | str) -> bool:
    """``data.pin_memory``: true, false, or ``auto`` (pin when an accelerator is there to copy to)."""
    if isinstance(pin_memory, bool):
        return pin_memory
    if pin_memory == "auto":
        accelerator = getattr(torch, "accelerator", None)  # torch >= 2.6; before it only CUDA pinned
        return accelerator.is_available() if accelerator is not None else torch.cuda.is_available()
    raise ValueError(f"data.pin_memory={pin_memory!r} must be true, false or auto")


def require_root(root: str | Path | None, dataset: str, layout: str) -> Path:
    """``data.root`` as an existing path, or ``DataNotFoundError`` naming it and showing ``layout``."""
    if root is None or str(root) in ("", "???"):
        raise DataNotFoundError(f"data.root is not set; point it at your copy of {dataset}.\n{layout}")
    path = Path(root).expanduser()
    if not path.exists():
        raise DataNotFoundError(f"data.root={path} does not exist.\n{layout}")
    return path


def distributed_world() -> tuple[int, int]:
    """``(world size, rank)`` of the initialised default process group, or ``(1, 0)`` without one."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size(), torch.distributed.get_rank()
    return 1, 0


class UnpaddedDistributedSampler(DistributedSampler):
    """One rank's share of an evaluation set: over all ranks, every sample exactly once.

    torch's ``DistributedSampler`` (which Lightning puts into every loader under DDP) pads the
    data set with repeated samples to a multiple of the world size, so a validation loss or a
    metric would count those samples twice. Here rank ``r`` of ``W`` reads the contiguous block
    ``[r * N // W, (r + 1) * N // W)``, in order (neighbouring lmdb keys and zip members stay
    together); the shares differ by at most one sample.

    Being a ``DistributedSampler``, Lightning leaves it in place instead of replacing it
    (``_DataConnector._requires_distributed_sampler``). Every rank must run at least one batch,
    or the others would wait forever for it in the epoch-end reduction of the logged metrics, so
    a non-empty data set smaller than the world size is refused.
    """

    def __init__(self, dataset: Dataset, num_replicas: int | None = None, rank: int | None = None) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False, drop_last=False)
        count = len(dataset)
        if 0 < count < self.num_replicas:
            raise ValueError(
                f"the evaluation set has {count} samples, fewer than the {self.num_replicas} processes: some would "
                "get no batch at all and the others would wait for them forever; use fewer devices or a larger "
                "validation split"
            )
        self.start = self.rank * count // self.num_replicas
        self.stop = (self.rank + 1) * count // self.num_replicas
        self.num_samples, self.total_size = self.stop - self.start, count

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.start, self.stop))


def holdout_split(count: int, val_count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted ``(train indices, validation indices)`` of ``range(count)``, ``val_count`` of them held out.

    The held-out indices are the first ``val_count`` of a permutation drawn with numpy's
    ``default_rng(seed)``: the same files for the same listing on every machine, spread over the
    whole (usually ordered) listing rather than taken from its end.
    """
    if not 0 <= val_count < count:
        raise ValueError(f"cannot hold out {val_count} of {count} images for validation and keep some for training")
    order = np.random.default_rng(seed).permutation(count)
    return np.sort(order[val_count:]), np.sort(order[:val_count])


def take(items: Sequence[Any], indices: np.ndarray) -> list[Any]:
    return [items[i] for i in indices]


class BaseDataModule(L.LightningDataModule):
    """Loader plumbing for the image DataModules; subclasses build ``(train_set, val_set)``.

    Args:
        batch_size: per-device batch size.
        num_workers: loader processes.
        pin_memory: true, false or ``auto`` (pin when an accelerator is available).
        persistent_workers: keep workers alive between epochs (ignored with ``num_workers=0``).
    """

    #: Batches hold images, not precomputed latents.
    provides_latents = False
    #: Classes of the labels, or None for unlabelled data (whose labels are all 0).
    num_classes: int | None = None

    def __init__(
        self,
        batch_size: int = 32,
        num_workers: int = 2,
        pin_memory: bool | str = "auto",
        persistent_workers: bool = True,
    ) -> None:
        super().__init__()
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"data.batch_size={batch_size!r} must be a positive integer")
        if not isinstance(num_workers, int) or num_workers < 0:
            raise ValueError(f"data.num_workers={num_workers!r} must be an integer >= 0")
        self.batch_size, self.num_workers = batch_size, num_workers
        self.pin_memory = resolve_pin_memory(pin_memory)
        self.persistent_workers = bool(persistent_workers) and num_workers > 0
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None

    @abc.abstractmethod
    def build_datasets(self) -> tuple[Dataset, Dataset]:
        """``(train_set, val_set)``, read from disk (called once, by ``setup``)."""

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        self.train_set, self.val_set = self.build_datasets()
        log.info("%s: %d train, %d validation images", type(self).__name__, len(self.train_set), len(self.val_set))

    def _require_setup(self) -> None:
        if self.train_set is None:
            raise RuntimeError(f"{type(self).__name__}.setup() must run before its dataloaders are asked for")

    def _loader(self, dataset: Dataset, shuffle: bool, drop_last: bool, sampler: Sampler | None = None) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            sampler=sampler,
            drop_last=drop_last,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers,
        )

    def train_dataloader(self) -> DataLoader:
        # Seeded, sharded over the trainer's ranks and resumable mid-epoch (data/resumable_sampler.py).
        self._require_setup()
        if len(self.train_set) < self.batch_size:
            raise ValueError(
                f"the training set has {len(self.train_set)} images, fewer than data.batch_size={self.batch_size}; "
                "with drop_last no batch would be left (lower data.batch_size)"
            )
        return resumable_train_loader(
            self.train_set,
            self.batch_size,
            self.trainer,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers,
        )

    def val_dataloader(self) -> DataLoader:
        """The validation set in order; under DDP each rank reads its share, every image once."""
        self._require_setup()
        return self._loader(self.val_set, shuffle=False, drop_last=False, sampler=self.eval_sampler(self.val_set))

    @staticmethod
    def eval_sampler(dataset: Dataset) -> Sampler | None:
        """An ``UnpaddedDistributedSampler`` when a process group of several ranks is running, else None.

        Lightning asks for the dataloaders after it has set up the process group, so this sees it.
        """
        world_size, rank = distributed_world()
        return UnpaddedDistributedSampler(dataset, world_size, rank) if world_size > 1 else None


class EncodedImageDataModule(BaseDataModule):
    """An image DataModule whose images are decoded and preprocessed on access (``transforms.py``).

    Args:
        root: where the data set is (each subclass documents its layouts).
        resolution: side of the square images the batches hold.
        random_flip: random horizontal flips of training images (never of validation images).
        on_corrupt: ``skip`` or ``error`` for unreadable images (``image_dataset.py``).
        small_images: ``upscale`` or ``error`` for images smaller than ``resolution``.
    """

    def __init__(
        self,
        root: str | None,
        resolution: int,
        random_flip: bool = True,
        on_corrupt: str = "skip",
        small_images: str = "upscale",
        batch_size: int = 32,
        num_workers: int = 2,
        pin_memory: bool | str = "auto",
        persistent_workers: bool = True,
    ) -> None:
        super().__init__(batch_size, num_workers, pin_memory, persistent_workers)
        if on_corrupt not in CORRUPT_POLICIES:
            raise ValueError(f"data.on_corrupt={on_corrupt!r} must be one of {', '.join(CORRUPT_POLICIES)}")
        self.transform = ImageTransform(resolution, small_images)  # checks resolution and small_images
        self.root = root
        self.resolution, self.random_flip = resolution, random_flip
        self.on_corrupt, self.small_images = on_corrupt, small_images

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """Shape ``(C, H, W)`` of one sample, which the model (or its autoencoder) must take."""
        return (3, self.resolution, self.resolution)

    def make_dataset(self, source: ImageSource, labels: np.ndarray | None, train: bool) -> EncodedImageDataset:
        """A dataset over ``source`` with this module's preprocessing; flips only for training."""
        return EncodedImageDataset(
            source, self.transform, labels, random_flip=self.random_flip and train, on_corrupt=self.on_corrupt
        )

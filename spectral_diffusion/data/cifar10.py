"""CIFAR-10 (50,000 train / 10,000 test images, 32x32, 10 classes), from the official python version.

Layout: ``cifar-10-batches-py/`` with ``data_batch_1`` ... ``data_batch_5``, ``test_batch`` and
``batches.meta``. Each batch is a pickled dict: ``b"data"``, uint8 ``(N, 3072)`` (the red, green
and blue 32x32 planes of each image, rows top to bottom), and ``b"labels"``, N ints in 0..9;
``batches.meta`` holds ``b"label_names"``. ``data.root`` is the folder that holds
``cifar-10-batches-py/`` (torchvision's layout) or that folder itself.

The files are pickles, and unpickling a file from a user's disk could run any code in it, so they
are read with an unpickler that builds only dicts, lists, strings and numpy arrays. Their
structure is checked, and errors name the file.

With ``download=true`` (and network access) ``prepare_data`` downloads and extracts the archive
into ``data.root`` through torchvision, which checks its MD5. The test batch is the validation set.
"""

from __future__ import annotations

import codecs
import logging
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from spectral_diffusion.data.base import BaseDataModule, DataNotFoundError
from spectral_diffusion.data.transforms import ImageTooSmallError, ImageTransform
from spectral_diffusion.data.worker_rng import WorkerRandom

log = logging.getLogger(__name__)

FOLDER = "cifar-10-batches-py"
SIZE = 32
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILE = "test_batch"
META_FILE = "batches.meta"
CLASS_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
LAYOUT = f"""Expected layout (the official "CIFAR-10 python version", cifar-10-python.tar.gz, extracted):
  ROOT/{FOLDER}/data_batch_1 ... data_batch_5, test_batch, batches.meta
  (data.root may also be the {FOLDER} folder itself)
With network access, data.download=true downloads it into data.root."""

# Everything a CIFAR pickle needs: numpy's array reconstruction, and codecs.encode for the byte
# strings of protocol-2 pickles written by Python 3.
_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): np.zeros(1).__reduce__()[0],
    ("numpy._core.multiarray", "_reconstruct"): np.zeros(1).__reduce__()[0],
    ("numpy.core.multiarray", "scalar"): np.float64(0).__reduce__()[0],
    ("numpy._core.multiarray", "scalar"): np.float64(0).__reduce__()[0],
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): codecs.encode,
}


class _DataOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: a CIFAR batch holds only data") from None


def read_pickle(path: Path) -> Any:
    """Unpickle ``path`` with the data-only unpickler (``encoding="bytes"``, as the files are Python 2 pickles)."""
    try:
        with open(path, "rb") as f:
            return _DataOnlyUnpickler(f, encoding="bytes").load()
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError) as err:
        raise ValueError(f"cannot read {path} as a CIFAR-10 python batch: {err}") from err


def load_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``(images uint8 (N, 3, 32, 32), labels int64 (N,))`` of one batch file, its structure checked."""
    batch = read_pickle(path)
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        keys = sorted(batch) if isinstance(batch, dict) else type(batch).__name__
        raise ValueError(f"{path} is not a CIFAR-10 batch: it needs keys b'data' and b'labels', it has {keys}")
    data, labels = batch[b"data"], np.asarray(batch[b"labels"])
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        shape = getattr(data, "shape", None)
        raise ValueError(
            f"{path}: b'data' must be uint8 of shape (N, 3072), it is {getattr(data, 'dtype', type(data))} {shape}"
        )
    if labels.shape != (len(data),) or (len(labels) and not (0 <= labels.min() and labels.max() < 10)):
        raise ValueError(f"{path}: b'labels' must be {len(data)} integers in 0..9, got shape {labels.shape}")
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


def _complete(folder: Path) -> bool:
    return all((folder / name).is_file() for name in (*TRAIN_FILES, TEST_FILE, META_FILE))


def locate_cifar10(root: str | Path | None) -> Path:
    """The ``cifar-10-batches-py`` folder under (or at) ``root``; ``DataNotFoundError`` if it is incomplete."""
    if root is None or str(root) in ("", "???"):
        raise DataNotFoundError(f"data.root is not set; point it at your copy of CIFAR-10.\n{LAYOUT}")
    root = Path(root).expanduser()
    candidates = (root / FOLDER, root)
    for folder in candidates:
        if _complete(folder):
            return folder
    present = [p.name for p in sorted(candidates[0].iterdir())] if candidates[0].is_dir() else []
    detail = f"; {candidates[0]} holds only {', '.join(present) or 'nothing'}" if candidates[0].is_dir() else ""
    raise DataNotFoundError(
        f"CIFAR-10 not found in data.root={root} (looked in {candidates[0]} and {candidates[1]}){detail}.\n{LAYOUT}"
    )


def load_cifar10(folder: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(images uint8 (N, 3, 32, 32), labels int64 (N,))`` of ``split`` (``train`` or ``test``)."""
    files = TRAIN_FILES if split == "train" else (TEST_FILE,)
    parts = [load_batch(folder / name) for name in files]
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    return torch.from_numpy(images), torch.from_numpy(labels)


def load_class_names(folder: Path) -> tuple[str, ...]:
    """The class names in ``batches.meta``."""
    meta = read_pickle(folder / META_FILE)
    names = meta.get(b"label_names") if isinstance(meta, dict) else None
    if not isinstance(names, list) or len(names) != 10:
        raise ValueError(f"{folder / META_FILE}: b'label_names' must be a list of 10 names")
    return tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names)


class CIFAR10Dataset(Dataset):
    """uint8 images held in memory, served as ``(float image (3, R, R) in [-1, 1], label)``.

    Without ``transform`` the 32x32 images are served as they are (``R`` = 32); with one (any
    other ``data.resolution``) each is resized by it, as the other data sets' images are. With
    ``random_flip`` an image is flipped horizontally with probability 1/2, decided by ``WorkerRandom``
    from the index (keyed by seed, epoch and index in training: ``worker_rng.py``).
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        random_flip: bool = False,
        transform: ImageTransform | None = None,
    ) -> None:
        self.images, self.labels, self.random_flip, self.transform = images, labels, random_flip, transform
        self.random = WorkerRandom()

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.transform is None:
            image = self.images[index].float().div(127.5).sub(1.0)
        else:
            image = self.transform(Image.fromarray(self.images[index].permute(1, 2, 0).numpy()), f"CIFAR-10 #{index}")
        if self.random_flip and self.random.coin(key=index):
            image = image.flip(-1)
        return image, self.labels[index]


class CIFAR10DataModule(BaseDataModule):
    """CIFAR-10 train (50k) and test (10k, the validation set); batches ``(3, R, R)`` in [-1, 1].

    Args:
        root: folder that holds ``cifar-10-batches-py/`` (or that folder itself); where downloads go.
        download: download through torchvision if the files are not there (needs network access).
        resolution: side of the output images; 32 serves the images as they are, anything else
            resizes them (bicubic, antialiased when shrinking) as ``transforms.ImageTransform`` does.
        small_images: ``upscale`` or ``error`` for a ``resolution`` above 32 (every image would be upscaled).
        random_flip: horizontal flips of training images.
        batch_size, num_workers, pin_memory, persistent_workers: as in ``BaseDataModule``.
    """

    num_classes = len(CLASS_NAMES)
    class_names = CLASS_NAMES

    def __init__(
        self,
        root: str | None = None,
        download: bool = False,
        resolution: int = SIZE,
        small_images: str = "upscale",
        random_flip: bool = True,
        batch_size: int = 128,
        num_workers: int = 2,
        pin_memory: bool | str = "auto",
        persistent_workers: bool = True,
    ) -> None:
        super().__init__(batch_size, num_workers, pin_memory, persistent_workers)
        transform = ImageTransform(resolution, small_images)  # checks both values
        if resolution > SIZE and small_images == "error":
            raise ImageTooSmallError(
                f"CIFAR-10's images are {SIZE}x{SIZE}, smaller than data.resolution={resolution}; "
                "set data.small_images=upscale to upscale them, or data.resolution=32"
            )
        self.transform = None if resolution == SIZE else transform
        self.root, self.download, self.random_flip = root, download, random_flip
        self.resolution, self.small_images = resolution, small_images

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """Shape ``(C, H, W)`` of one sample."""
        return (3, self.resolution, self.resolution)

    def prepare_data(self) -> None:
        # Runs on one process per node: the only place a download may happen.
        try:
            locate_cifar10(self.root)
            return
        except DataNotFoundError:
            if not self.download or self.root is None:
                raise
        try:
            from torchvision.datasets import CIFAR10

            CIFAR10(str(Path(self.root).expanduser()), train=True, download=True)
        except Exception as err:  # network errors come in many types; the message says what happened
            raise DataNotFoundError(
                f"downloading CIFAR-10 into data.root={self.root} failed ({type(err).__name__}: {err}).\n{LAYOUT}"
            ) from err
        locate_cifar10(self.root)

    def build_datasets(self) -> tuple[Dataset, Dataset]:
        folder = locate_cifar10(self.root)
        self.class_names = load_class_names(folder)
        train = CIFAR10Dataset(*load_cifar10(folder, "train"), self.random_flip, self.transform)
        val = CIFAR10Dataset(*load_cifar10(folder, "test"), False, self.transform)
        if (len(train), len(val)) != (50_000, 10_000):
            log.warning(
                "CIFAR-10 has 50000 train and 10000 test images; %s holds %d and %d", folder, len(train), len(val)
            )
        return train, val

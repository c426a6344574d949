"""Fashion-MNIST, the framework's embedded default data set (pixel space, 1x28x28 padded to 32x32).

Where the IDX files are looked for, in order:

1. ``root`` (``data.root=DIR``), if given: ``DIR`` itself or ``DIR/FashionMNIST/raw`` (torchvision's
   layout). An explicit root that lacks the files is an error, never a silent fallback.
2. ``/usr/share/datasets/fashion-mnist`` (Debian's ``dataset-fashion-mnist`` package).
3. ``download_dir`` (``paths.data_dir``), where an earlier download may already be; if it is not
   there and ``download`` is true, torchvision downloads it there.

Files may be gzipped (``*.gz``) or not.
"""

from __future__ import annotations

import gzip
import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from spectral_diffusion.data.base import BaseDataModule, DataNotFoundError
from spectral_diffusion.data.worker_rng import WorkerRandom

log = logging.getLogger(__name__)

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
SPLIT_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
CLASS_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
HOW_TO_GET = (
    "Get Fashion-MNIST in one of these ways:\n"
    "  - Debian/Ubuntu: apt-get install dataset-fashion-mnist   (installs /usr/share/datasets/fashion-mnist)\n"
    "  - point data.root=DIR at a folder with train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz,\n"
    "    t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz (from github.com/zalandoresearch/fashion-mnist)\n"
    "  - with network access, set data.download=true to download through torchvision into paths.data_dir"
)

# IDX type codes (http://yann.lecun.com/exdb/mnist/): we only need unsigned bytes.
_IDX_UBYTE = 0x08


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (gzipped or not) of unsigned bytes into an array of its stated shape."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as err:
        raise ValueError(f"cannot read IDX file {path}: {err}") from err
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ValueError(f"{path} is not an IDX file (bad magic number {data[:4].hex()})")
    if data[2] != _IDX_UBYTE:
        raise ValueError(f"{path}: IDX type code 0x{data[2]:02x} is not unsigned byte (0x08)")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    offset = 4 + 4 * ndim
    expected = int(np.prod(shape))
    if len(data) - offset != expected:
        raise ValueError(
            f"{path}: header says shape {shape} ({expected} bytes) but the file holds {len(data) - offset}"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(shape)


def _find_file(folder: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (folder / name).is_file():
            return folder / name
    return None


def _complete(folder: Path) -> bool:
    return all(_find_file(folder, stem) for files in SPLIT_FILES.values() for stem in files)


def locate_fashion_mnist(root: str | Path | None, download: bool, download_dir: str | Path | None) -> Path:
    """The folder that holds the four Fashion-MNIST IDX files, found or downloaded (see module doc)."""
    tried: list[Path] = []
    if root is not None:
        root = Path(root).expanduser()
        for folder in (root, root / "FashionMNIST" / "raw"):
            tried.append(folder)
            if _complete(folder):
                return folder
        raise DataNotFoundError(
            f"data.root={root} does not hold the Fashion-MNIST IDX files; looked in: "
            + ", ".join(str(p) for p in tried)
            + "\n"
            + HOW_TO_GET
        )
    tried.append(DEBIAN_DIR)
    if _complete(DEBIAN_DIR):
        return DEBIAN_DIR
    if download_dir is not None:
        raw = Path(download_dir).expanduser() / "FashionMNIST" / "raw"
        tried.append(raw)
        if _complete(raw):
            return raw
        if download:
            try:
                from torchvision.datasets import FashionMNIST

                FashionMNIST(str(Path(download_dir).expanduser()), train=True, download=True)
                FashionMNIST(str(Path(download_dir).expanduser()), train=False, download=True)
            except Exception as err:  # network errors come in many types; report and fall through
                log.warning("downloading Fashion-MNIST into %s failed: %s", download_dir, err)
            if _complete(raw):
                return raw
    raise DataNotFoundError(
        "Fashion-MNIST not found; looked in: "
        + ", ".join(str(p) for p in tried)
        + ("" if download else " (download disabled: data.download=false)")
        + "\n"
        + HOW_TO_GET
    )


def load_split(folder: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(images uint8 (N, 28, 28), labels int64 (N,))`` of ``split`` ('train' or 'test')."""
    images_stem, labels_stem = SPLIT_FILES[split]
    images = read_idx(_find_file(folder, images_stem))
    labels = read_idx(_find_file(folder, labels_stem))
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise ValueError(
            f"Fashion-MNIST {split} files in {folder} disagree: images {images.shape}, labels {labels.shape}"
        )
    return torch.from_numpy(images.copy()), torch.from_numpy(labels.astype(np.int64))


class GrayscaleImageDataset(Dataset):
    """uint8 images held in memory, served as ``(float image in [-1, 1] of shape (1, S, S), label)``.

    Images are padded symmetrically with the background value (-1) to ``pad_to``; with
    ``random_flip`` they are flipped horizontally with probability 1/2, decided by ``WorkerRandom``
    from the index (keyed by seed, epoch and index in training: ``worker_rng.py``), as the other
    data sets' images are.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, pad_to: int, random_flip: bool = False) -> None:
        size = images.shape[-1]
        if pad_to < size:
            raise ValueError(f"data.pad_to={pad_to} is smaller than the images ({size}x{size})")
        self.images, self.labels = images, labels
        before = (pad_to - size) // 2
        self.padding = (before, pad_to - size - before) * 2
        self.random_flip = random_flip
        self.random = WorkerRandom()  # not the global RNG: see worker_rng.py

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = self.images[index].float().div(127.5).sub(1.0)[None]
        image = F.pad(image, self.padding, value=-1.0)
        if self.random_flip and self.random.coin(key=index):
            image = image.flip(-1)
        return image, self.labels[index]


class FashionMNISTDataModule(BaseDataModule):
    """Fashion-MNIST train (60k) and test (10k, used for validation) splits.

    Batches are ``(images, labels)`` with images ``(B, 1, pad_to, pad_to)`` in [-1, 1].

    Args:
        root: folder with the IDX files; ``None`` searches the standard places (module doc).
        download: download through torchvision into ``download_dir`` if nothing is found.
        download_dir: where downloads go (and are found again), normally ``paths.data_dir``.
        batch_size: per-device batch size.
        num_workers: loader processes; 0 is fastest here because the data sits in memory.
        pad_to: output size; 32 makes the 28x28 images fit a UNet with 3 levels.
        random_flip: horizontal flips for training.
    """

    num_classes = len(CLASS_NAMES)
    class_names = CLASS_NAMES

    def __init__(
        self,
        root: str | None = None,
        download: bool = True,
        download_dir: str | None = None,
        batch_size: int = 128,
        num_workers: int = 0,
        pad_to: int = 32,
        random_flip: bool = False,
        pin_memory: bool | str = False,
        persistent_workers: bool = False,
    ) -> None:
        super().__init__(batch_size, num_workers, pin_memory, persistent_workers)
        self.root, self.download, self.download_dir = root, download, download_dir
        self.pad_to, self.random_flip = pad_to, random_flip

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """Shape ``(C, H, W)`` of one sample, which the model must match."""
        return (1, self.pad_to, self.pad_to)

    @property
    def resolution(self) -> int:
        """Side of the output images, as the other DataModules call it (set here by ``pad_to``)."""
        return self.pad_to

    def prepare_data(self) -> None:
        # Runs on one process per node: the only place a download may happen.
        locate_fashion_mnist(self.root, self.download, self.download_dir)

    def build_datasets(self) -> tuple[Dataset, Dataset]:
        folder = locate_fashion_mnist(self.root, download=False, download_dir=self.download_dir)
        log.info("Fashion-MNIST from %s", folder)
        return (
            GrayscaleImageDataset(*load_split(folder, "train"), self.pad_to, self.random_flip),
            GrayscaleImageDataset(*load_split(folder, "test"), self.pad_to, random_flip=False),
        )

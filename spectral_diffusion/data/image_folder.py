"""Any folder tree of images (or a zip file of one), optionally labelled by first-level folder.

Files are listed recursively and sorted by relative path, so the order, the labels and the
train/validation split are the same on every machine. Every format Pillow decodes is read;
hidden files and folders (``.DS_Store``, ``._x.jpg``) and ``__MACOSX/`` are ignored.

With ``class_folders`` the first-level folder names, sorted, are the classes (0, 1, ...), as in
torchvision's ``ImageFolder``; images deeper down belong to their first-level folder.

Validation split: ``val_fraction`` of the images (rounded, at least one when the fraction is
positive), chosen by a permutation seeded with ``split_seed`` (``base.holdout_split``).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

from spectral_diffusion.data.base import DataNotFoundError, EncodedImageDataModule, holdout_split, require_root, take
from spectral_diffusion.data.sources import SourceReadError, is_zip_root, list_tree_images, tree_source

log = logging.getLogger(__name__)

LAYOUT = """Expected layout (data.root is a folder, or a .zip file holding the same tree):
  data.class_folders=false: images at any depth
    ROOT/0001.jpg
    ROOT/more/0002.png
  data.class_folders=true: one first-level folder per class (the folder name is the label)
    ROOT/cat/0001.jpg
    ROOT/dog/sub/0002.png
Any format Pillow reads (.jpg, .png, .webp, ...); hidden files are ignored."""


def list_image_tree(
    root: str | Path | None, dataset: str = "the image folder", layout: str = LAYOUT
) -> tuple[Path, list[str]]:
    """``(root, relative paths of its images)``; ``DataNotFoundError`` showing ``layout`` if there are none."""
    path = require_root(root, dataset, layout)
    if path.is_file() and not is_zip_root(path):
        raise DataNotFoundError(f"data.root={path} is a file but not a .zip file.\n{layout}")
    try:
        relpaths = list_tree_images(path)
    except SourceReadError as err:
        raise DataNotFoundError(f"data.root={path}: {err}.\n{layout}") from err
    if not relpaths:
        raise DataNotFoundError(f"data.root={path} holds no images Pillow can read.\n{layout}")
    return path, relpaths


def class_labels(root: Path, relpaths: list[str]) -> tuple[tuple[str, ...], np.ndarray]:
    """``(class names, label of each path)`` from the paths' first-level folders."""
    top_level = [p for p in relpaths if "/" not in p]
    if top_level:
        raise DataNotFoundError(
            f"data.root={root} has {len(top_level)} image(s) outside any class folder (e.g. {top_level[0]}), "
            f"but data.class_folders=true; move them into a class folder or set data.class_folders=false.\n{LAYOUT}"
        )
    folders = [p.split("/", 1)[0] for p in relpaths]
    names = tuple(sorted(set(folders)))
    index = {name: i for i, name in enumerate(names)}
    return names, np.array([index[f] for f in folders], dtype=np.int64)


def val_count(total: int, val_fraction: float) -> int:
    """How many of ``total`` images ``val_fraction`` holds out: rounded, at least one if positive."""
    return max(1, round(total * val_fraction)) if val_fraction > 0 else 0


class ImageFolderDataModule(EncodedImageDataModule):
    """Images from a folder tree or zip file (module doc); batches ``(3, R, R)`` in [-1, 1].

    Args:
        root: the folder, or a ``.zip`` file (opened lazily in each loader process).
        resolution: side of the square output images.
        class_folders: first-level folder names are the labels; otherwise every label is 0.
        val_fraction: fraction of the images held out for validation (0 <= f < 1).
        split_seed: seed of the permutation that picks the validation images.
        random_flip, on_corrupt, small_images, batch_size, num_workers, pin_memory,
            persistent_workers: as in ``EncodedImageDataModule``.
    """

    def __init__(
        self,
        root: str | None = None,
        resolution: int = 256,
        class_folders: bool = False,
        val_fraction: float = 0.01,
        split_seed: int = 0,
        random_flip: bool = True,
        on_corrupt: str = "skip",
        small_images: str = "upscale",
        batch_size: int = 32,
        num_workers: int = 2,
        pin_memory: bool | str = "auto",
        persistent_workers: bool = True,
    ) -> None:
        super().__init__(
            root,
            resolution,
            random_flip,
            on_corrupt,
            small_images,
            batch_size,
            num_workers,
            pin_memory,
            persistent_workers,
        )
        if not 0 <= val_fraction < 1:
            raise ValueError(f"data.val_fraction={val_fraction!r} must be at least 0 and below 1 (e.g. 0.01)")
        self.class_folders, self.val_fraction, self.split_seed = class_folders, val_fraction, split_seed
        self._scan: tuple[Path, list[str], tuple[str, ...] | None, np.ndarray | None] | None = None

    def scan(self) -> tuple[Path, list[str], tuple[str, ...] | None, np.ndarray | None]:
        """``(root, relative paths, class names, labels)``, listed once per process."""
        if self._scan is None:
            root, relpaths = list_image_tree(self.root)
            names, labels = class_labels(root, relpaths) if self.class_folders else (None, None)
            self._scan = (root, relpaths, names, labels)
        return self._scan

    @property
    def class_names(self) -> tuple[str, ...] | None:
        return self.scan()[2] if self.class_folders else None

    @property
    def num_classes(self) -> int | None:  # type: ignore[override]
        names = self.class_names
        return None if names is None else len(names)

    def prepare_data(self) -> None:
        self.scan()  # fail early, on one process, if the data is not there

    def build_datasets(self) -> tuple[Dataset, Dataset]:
        root, relpaths, names, labels = self.scan()
        n_val = val_count(len(relpaths), self.val_fraction)
        if n_val >= len(relpaths):
            raise ValueError(
                f"data.val_fraction={self.val_fraction} of {len(relpaths)} images in {root} leaves none for training"
            )
        train_idx, val_idx = holdout_split(len(relpaths), n_val, self.split_seed)
        if names is not None:
            log.info(
                "%s: %d classes: %s", root, len(names), ", ".join(names[:20]) + (" ..." if len(names) > 20 else "")
            )

        def subset(indices: np.ndarray, train: bool) -> Dataset:
            source = tree_source(root, take(relpaths, indices))
            return self.make_dataset(source, None if labels is None else labels[indices], train)

        return subset(train_idx, True), subset(val_idx, False)

"""CelebA-HQ (30,000 face images), from a folder or a zip file of JPEG/PNG images.

Layouts: any tree of images, e.g. ``data256x256/00001.jpg`` ... ``30000.jpg`` (the 256x256
release used with the LDM code), ``celeba_hq_256/00000.jpg`` ... ``29999.jpg``, or the images
directly in ``root``; as a folder or as the ``.zip`` that holds it.

Train/validation split:

- With ``split_files={train: ..., val: ...}``: LDM's ``celebahqtrain.txt`` /
  ``celebahqvalidation.txt``, one name per line (the CompVis repository's train list names
  25,000 images as ``imgHQ01234.npy``; copies elsewhere list ``01234.jpg``). Each line is matched to an
  image by, in order: its relative path; its file name; its file name without extension; and for
  LDM's own ``imgHQ01234.npy`` names the CelebA-HQ index 1234, which is the file whose number is
  1234 when the files are numbered from 0 (``00000.jpg``, ``celeba_hq_256``) or 1235 when they
  are numbered from 1 (``00001.jpg``, ``data256x256``). This assumes, as these exports do, that
  the files are numbered in CelebA-HQ order. Every line must match exactly one image, and no image
  may be in both lists; images in neither list are left out (and counted in the log).
- Without split files: ``val_size`` images (default 5,000: the 30,000 less LDM's 25,000 training images)
  chosen by a permutation seeded with ``split_seed`` (``base.holdout_split``), the rest train.
"""

from __future__ import annotations

import logging
import re
from collections import defaultdict
from pathlib import Path, PurePosixPath

import numpy as np
from torch.utils.data import Dataset

from spectral_diffusion.data.base import DataNotFoundError, EncodedImageDataModule, holdout_split, take
from spectral_diffusion.data.image_folder import list_image_tree
from spectral_diffusion.data.sources import tree_source

log = logging.getLogger(__name__)

CELEBAHQ_SIZE = 30_000
SPLITS = ("train", "val")
LAYOUT = """Expected layout (data.root is a folder, or a .zip file holding the same tree):
  ROOT/data256x256/00001.jpg ... 30000.jpg     (as used with the LDM code)
  or ROOT/celeba_hq_256/00000.jpg ... 29999.jpg
  or the images directly in ROOT (any depth, any format Pillow reads)
Optional LDM split lists: data.split_files={train: DIR/celebahqtrain.txt, val: DIR/celebahqvalidation.txt},
  one name per line: imgHQ00000.npy (LDM's lists), 00001.jpg, or data256x256/00001.jpg"""

_LDM_NAME = re.compile(r"imgHQ(\d+)")


def read_split_file(path: str | Path) -> list[str]:
    """The non-empty, non-comment lines of a split list (``DataNotFoundError`` if it is missing)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataNotFoundError(f"split file {path} does not exist (data.split_files).\n{LAYOUT}")
    lines = [line.strip() for line in path.read_text().splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


class SplitMatcher:
    """Finds the image that a split-file line names (module doc: path, name, stem, CelebA-HQ index)."""

    def __init__(self, relpaths: list[str]) -> None:
        self.by_path = {p: i for i, p in enumerate(relpaths)}
        self.by_name: dict[str, list[int]] = defaultdict(list)
        self.by_stem: dict[str, list[int]] = defaultdict(list)
        for i, p in enumerate(relpaths):
            self.by_name[PurePosixPath(p).name].append(i)
            self.by_stem[PurePosixPath(p).stem].append(i)
        self.by_index = self._celebahq_numbering(relpaths)

    @staticmethod
    def _celebahq_numbering(relpaths: list[str]) -> dict[int, int]:
        stems = [PurePosixPath(p).stem for p in relpaths]
        if not stems or not all(s.isdigit() for s in stems):
            return {}
        numbers = [int(s) for s in stems]
        first = min(numbers)
        if first not in (0, 1) or len(set(numbers)) != len(numbers):
            return {}  # not a CelebA-HQ numbering: index lines cannot be placed
        return {n - first: i for i, n in enumerate(numbers)}

    def find(self, line: str) -> int | None:
        """Index of the image ``line`` names; ``None`` if none; ``ValueError`` if several."""
        entry = PurePosixPath(line.replace("\\", "/"))
        if str(entry) in self.by_path:
            return self.by_path[str(entry)]
        for table, key in ((self.by_name, entry.name), (self.by_stem, entry.stem)):
            hits = table.get(key, [])
            if len(hits) > 1:
                raise ValueError(f"{line!r} matches {len(hits)} images; give relative paths in the split file")
            if hits:
                return hits[0]
        ldm = _LDM_NAME.fullmatch(entry.stem)
        return self.by_index.get(int(ldm.group(1))) if ldm else None


def match_split(path: str | Path, matcher: SplitMatcher, relpaths: list[str], root: Path) -> np.ndarray:
    """Sorted indices into ``relpaths`` of the images the split list ``path`` names (errors name the lines)."""
    lines = read_split_file(path)
    indices, missing = [], []
    for line in lines:
        try:
            index = matcher.find(line)
        except ValueError as err:
            raise ValueError(f"split file {path}: {err}") from err
        if index is None:
            missing.append(line)
        else:
            indices.append(index)
    if missing:
        raise DataNotFoundError(
            f"split file {path}: {len(missing)} of {len(lines)} lines name no image in data.root={root} "
            f"(first: {', '.join(missing[:5])}; the images there are named like {relpaths[0]}).\n{LAYOUT}"
        )
    unique = np.unique(indices)
    if len(unique) != len(indices):
        raise ValueError(f"split file {path} names {len(indices) - len(unique)} image(s) more than once")
    return unique


class CelebAHQDataModule(EncodedImageDataModule):
    """CelebA-HQ at ``resolution`` (module doc); unlabelled (labels 0), batches ``(3, R, R)`` in [-1, 1].

    Args:
        root: folder or ``.zip`` with the images.
        resolution: side of the output images (256 for the LDM teachers).
        split_files: ``{train: PATH, val: PATH}``, LDM's split lists; ``None`` for the seeded split.
        val_size: validation images of the seeded split (without split files).
        split_seed: seed of that split.
        random_flip, on_corrupt, small_images, batch_size, num_workers, pin_memory,
            persistent_workers: as in ``EncodedImageDataModule``.
    """

    def __init__(
        self,
        root: str | None = None,
        resolution: int = 256,
        split_files: dict[str, str] | None = None,
        val_size: int = 5000,
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
        if split_files is not None:
            split_files = dict(split_files)
            if set(split_files) != set(SPLITS):
                raise ValueError(
                    f"data.split_files has keys {sorted(split_files)}; it needs exactly {list(SPLITS)}, "
                    "e.g. {train: .../celebahqtrain.txt, val: .../celebahqvalidation.txt}"
                )
        if not isinstance(val_size, int) or val_size < 0:
            raise ValueError(f"data.val_size={val_size!r} must be an integer >= 0")
        self.split_files, self.val_size, self.split_seed = split_files, val_size, split_seed

    def prepare_data(self) -> None:
        list_image_tree(self.root, "CelebA-HQ", LAYOUT)  # fail early, on one process, if the data is not there

    def split(self, root: Path, relpaths: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """``(train indices, validation indices)`` into ``relpaths`` (module doc)."""
        if self.split_files is None:
            if self.val_size >= len(relpaths):
                raise ValueError(
                    f"data.val_size={self.val_size} but data.root={root} has only {len(relpaths)} images; "
                    "lower data.val_size"
                )
            return holdout_split(len(relpaths), self.val_size, self.split_seed)
        matcher = SplitMatcher(relpaths)
        train, val = (match_split(self.split_files[s], matcher, relpaths, root) for s in SPLITS)
        both = np.intersect1d(train, val)
        if len(both):
            raise ValueError(
                f"{len(both)} image(s) are in both split files (e.g. {relpaths[both[0]]}): "
                f"{self.split_files['train']} and {self.split_files['val']}"
            )
        left_out = len(relpaths) - len(train) - len(val)
        if left_out:
            log.info("CelebA-HQ: %d image(s) in %s are in neither split file and are not used", left_out, root)
        return train, val

    def build_datasets(self) -> tuple[Dataset, Dataset]:
        root, relpaths = list_image_tree(self.root, "CelebA-HQ", LAYOUT)
        if len(relpaths) != CELEBAHQ_SIZE:
            log.warning("CelebA-HQ has %d images; %s holds %d", CELEBAHQ_SIZE, root, len(relpaths))
        train, val = self.split(root, relpaths)
        return (
            self.make_dataset(tree_source(root, take(relpaths, train)), None, train=True),
            self.make_dataset(tree_source(root, take(relpaths, val)), None, train=False),
        )

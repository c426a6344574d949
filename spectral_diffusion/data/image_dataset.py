"""A dataset of encoded images (files, zip members, lmdb values) decoded and preprocessed on access.

Unreadable entries (truncated or corrupt files, bad lmdb values, unsupported colour modes) are
handled by ``on_corrupt``:

- ``skip`` (default): the sample is replaced by the next readable entry (index + 1, + 2, ...,
  wrapping around), so the replacement does not depend on the worker, the batch or the order of
  access. Each process logs a warning when its count of skipped entries reaches 1, 2, 4, 8, ...,
  with the count and the first few names. After ``MAX_CONSECUTIVE_UNREADABLE`` unreadable entries
  in a row it gives up with an error instead of scanning a broken data set forever.
- ``error``: the first unreadable entry raises ``UnreadableImageError`` naming it.

Either way an error in a DataLoader worker reaches the training process with the entry's name:
nothing is swallowed, and nothing waits forever.
"""

from __future__ import annotations

import io
import logging
import warnings

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from spectral_diffusion.data.sources import ImageSource, SourceReadError
from spectral_diffusion.data.transforms import ImageTooSmallError, ImageTransform
from spectral_diffusion.data.worker_rng import WorkerRandom

log = logging.getLogger(__name__)

#: The values of ``data.on_corrupt``.
CORRUPT_POLICIES = ("skip", "error")
#: Give up after this many unreadable entries in a row (the data set is broken, not a few files).
MAX_CONSECUTIVE_UNREADABLE = 100
#: How many names of skipped entries a warning shows.
NAMES_SHOWN = 5


class UnreadableImageError(ValueError):
    """An image could not be read or decoded (the message names the file or key)."""


def decode_image(data: bytes, name: str) -> Image.Image:
    """Fully decode ``data`` (any format Pillow reads); ``UnreadableImageError`` naming ``name`` if it fails.

    ``load()`` runs here, inside the ``try``: Pillow opens lazily, and a truncated file only fails
    when its pixels are decoded.
    """
    try:
        with warnings.catch_warnings():
            # A decompression-bomb warning is Pillow's, not ours to spread to every worker's log.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            image.load()
    except Exception as err:  # Pillow raises OSError, SyntaxError, ValueError, struct.error, ...
        raise UnreadableImageError(f"cannot decode {name}: {type(err).__name__}: {err}") from err
    return image


class EncodedImageDataset(Dataset):
    """``(image (3, R, R) float in [-1, 1], label int64)`` samples from an ``ImageSource``.

    Args:
        source: where the encoded images are.
        transform: the preprocessing (crop, resize, scale).
        labels: one class index per entry; ``None`` for unlabelled data, whose samples carry label 0.
        random_flip: flip horizontally with probability 1/2, decided by ``WorkerRandom`` from the index
            (keyed by seed, epoch and index in training: ``worker_rng.py``).
        on_corrupt: ``skip`` or ``error`` (module doc).
    """

    def __init__(
        self,
        source: ImageSource,
        transform: ImageTransform,
        labels: np.ndarray | None = None,
        random_flip: bool = False,
        on_corrupt: str = "skip",
    ) -> None:
        if on_corrupt not in CORRUPT_POLICIES:
            raise ValueError(f"data.on_corrupt={on_corrupt!r} must be one of {', '.join(CORRUPT_POLICIES)}")
        if labels is not None and len(labels) != len(source):
            raise ValueError(f"{len(labels)} labels for {len(source)} images")
        self.source, self.transform = source, transform
        self.labels = None if labels is None else np.asarray(labels, dtype=np.int64)
        self.random_flip, self.on_corrupt = random_flip, on_corrupt
        self.random = WorkerRandom()
        self.skipped: dict[int, str] = {}  # index -> reason, in this process

    def __len__(self) -> int:
        return len(self.source)

    def label(self, index: int) -> int:
        return 0 if self.labels is None else int(self.labels[index])

    def load(self, index: int) -> torch.Tensor:
        """Entry ``index`` preprocessed (no flip); ``UnreadableImageError`` if it cannot be read."""
        name = self.source.name(index)
        try:
            data = self.source.read(index)
        except SourceReadError as err:
            raise UnreadableImageError(str(err)) from err
        image = decode_image(data, name)
        try:
            return self.transform(image, name)
        except ImageTooSmallError:
            raise  # a policy decision (data.small_images=error), not a broken file
        except (OSError, ValueError) as err:
            raise UnreadableImageError(f"cannot preprocess {name}: {err}") from err

    def _note_skipped(self, index: int, reason: str) -> None:
        self.skipped[index] = reason
        count = len(self.skipped)
        if count & (count - 1) == 0:  # 1, 2, 4, 8, ...: a handful of lines however many there are
            shown = "; ".join(list(self.skipped.values())[:NAMES_SHOWN])
            log.warning(
                "skipped %d unreadable image(s) so far, each replaced by the next readable one "
                "(data.on_corrupt=error stops at the first): %s",
                count,
                shown,
            )

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        key, n = index, len(self.source)  # the key decides the flip; index % n is a plain int
        if not -n <= index < n:  # also ends iteration over the dataset (the replacement wraps around)
            raise IndexError(f"index {index} is out of range for {n} images")
        index %= n
        for offset in range(min(n, MAX_CONSECUTIVE_UNREADABLE)):
            candidate = (index + offset) % n
            if candidate in self.skipped:
                continue
            try:
                image = self.load(candidate)
            except UnreadableImageError as err:
                if self.on_corrupt == "error":
                    raise UnreadableImageError(
                        f"{err} (data.on_corrupt=skip would replace it by the next readable image)"
                    ) from err
                self._note_skipped(candidate, str(err))
                continue
            if self.random_flip and self.random.coin(key=key):
                image = image.flip(-1)
            return image, torch.tensor(self.label(candidate), dtype=torch.int64)
        raise UnreadableImageError(
            f"{min(n, MAX_CONSECUTIVE_UNREADABLE)} images in a row from {self.source.name(index)} on could not be "
            f"read; the data set looks broken. First problems: {'; '.join(list(self.skipped.values())[:NAMES_SHOWN])}"
        )

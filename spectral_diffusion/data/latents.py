"""Cached latents: encode a data set once with a frozen first stage, then train from the cache.

A latent diffusion model that encodes every batch spends most of its CPU time in the encoder (the
autoencoder is often larger than a slim student). EDM2 encodes once and trains from the stored
latents; so does this module (``scripts/encode_latents.py`` writes the stores).

**A store** is a directory:

- ``latents.npy``: ``(count, C, H, W)`` **raw** latents (before the shift/scale normalisation),
  float16 or float32, written through ``numpy.lib.format.open_memmap`` and read memory-mapped;
- ``labels.npy``: ``(count,)`` int64 class labels, if the data has labels;
- ``meta.json``: shape, count, dtype, the latent stats, the first stage's ``describe()``, the
  source data config, and the layout of flipped copies.

Raw rather than normalised latents are stored, so that the stats can be re-estimated (more images,
per-channel scale) without encoding again; :class:`LatentDataModule` normalises each batch with the
stats in ``meta.json``, ``z = (raw - shift[c]) / scale[c]``, which is exactly what
``FirstStage.encode`` returns.

With ``flips=True`` the horizontally flipped images are encoded too, as extra entries: entries
``[0, n)`` are the images in data-set order and ``[n, 2n)`` their mirror images in the same order
(``meta.json``: ``num_source_samples = n``). A flip must be applied to the image, not to the latent:
the encoder is not equivariant to flips.

A store is written into a temporary sibling directory and renamed into place only when complete,
so a crash or kill never leaves a half store under the final name.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Sampler, SequentialSampler

from spectral_diffusion.autoencoders.base import FirstStage
from spectral_diffusion.data.base import BaseDataModule
from spectral_diffusion.data.resumable_sampler import resumable_train_loader

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
LATENTS_FILE, LABELS_FILE, META_FILE = "latents.npy", "labels.npy", "meta.json"
STORE_DTYPES = {"float16": np.float16, "float32": np.float32}
HOW_TO_CREATE = (
    "create it with: python scripts/encode_latents.py data=fashion_mnist autoencoder=framework "
    "autoencoder.ckpt_path=PATH output=DIR"
)


class LatentStoreError(FileNotFoundError):
    """A latent store is missing, incomplete or inconsistent (the message names the file)."""


def _split_batch(batch: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    if isinstance(batch, (tuple, list)):
        return batch[0], (batch[1] if len(batch) > 1 else None)
    return batch, None


def _fsync(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


@torch.no_grad()
def write_latent_store(
    path: str | Path,
    first_stage: FirstStage,
    dataloader: Iterable[Any],
    flips: bool = False,
    dtype: str = "float16",
    num_samples: int | None = None,
    max_samples: int | None = None,
    num_classes: int | None = None,
    source: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Encode every image of ``dataloader`` (and its mirror image with ``flips``) into a store at ``path``.

    Args:
        path: the store directory to create.
        first_stage: the frozen first stage; its latent stats go to ``meta.json`` (set them first).
        dataloader: batches of ``(images in [-1, 1], labels)`` or images, in a fixed order (no
            shuffling, no random flips: the store must not depend on chance).
        flips: also store the horizontally flipped images, as entries ``[n, 2n)``.
        dtype: ``float16`` (half the disk and page cache) or ``float32`` (bit-exact encodings).
        num_samples: how many images the loader yields; default ``len(dataloader.dataset)``.
        max_samples: encode at most this many images.
        num_classes: stored in ``meta.json`` for labelled data (the DataModule's ``num_classes``).
        source: a JSON-able description of the data (e.g. the data config and split).
        overwrite: replace an existing store at ``path`` (only once the new one is complete).

    Returns:
        ``path``.
    """
    path = Path(path).expanduser()
    if dtype not in STORE_DTYPES:
        raise ValueError(f"latent store dtype={dtype!r} is not one of {sorted(STORE_DTYPES)}")
    if path.exists() and not overwrite:
        raise FileExistsError(f"latent store {path} already exists; pass overwrite=true or another output path")
    if not first_stage.has_latent_stats:
        raise ValueError(
            "the first stage has no latent stats: estimate them (estimate_latent_stats) or load them before "
            "writing a store, so that meta.json records the normalisation"
        )
    if num_samples is None:
        dataset = getattr(dataloader, "dataset", None)
        if dataset is None:
            raise ValueError("num_samples is needed when the dataloader has no .dataset")
        num_samples = len(dataset)
    n = min(num_samples, max_samples) if max_samples is not None else num_samples
    if n < 1:
        raise ValueError(f"nothing to encode: {num_samples} images, max_samples={max_samples}")
    count = 2 * n if flips else n
    device = first_stage.latent_shift.device

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        latents: np.memmap | None = None
        labels = np.zeros(count, dtype=np.int64)
        has_labels = True
        seen = 0
        for batch in dataloader:
            images, batch_labels = _split_batch(batch)
            images = images[: n - seen]
            b = images.shape[0]
            raw = first_stage.encode_raw(images.to(device, first_stage._compute_dtype())).float().cpu()
            if latents is None:
                latents = np.lib.format.open_memmap(
                    tmp / LATENTS_FILE, mode="w+", dtype=STORE_DTYPES[dtype], shape=(count, *raw.shape[1:])
                )
            latents[seen : seen + b] = raw.numpy()
            if flips:
                flipped = first_stage.encode_raw(images.flip(-1).to(device, first_stage._compute_dtype()))
                latents[n + seen : n + seen + b] = flipped.float().cpu().numpy()
            if batch_labels is None:
                has_labels = False
            else:
                labels[seen : seen + b] = batch_labels[:b].numpy()
                if flips:
                    labels[n + seen : n + seen + b] = batch_labels[:b].numpy()
            seen += b
            if seen >= n:
                break
        if seen < n or latents is None:
            raise ValueError(f"the dataloader yielded {seen} images, fewer than the {n} expected")
        latents.flush()
        del latents  # close the memmap before the rename
        _fsync(tmp / LATENTS_FILE)
        if has_labels:
            np.save(tmp / LABELS_FILE, labels)
            _fsync(tmp / LABELS_FILE)
        stored_shape = np.load(tmp / LATENTS_FILE, mmap_mode="r").shape
        meta = {
            "format_version": FORMAT_VERSION,
            "shape": list(stored_shape[1:]),
            "count": count,
            "num_source_samples": n,
            "flips": flips,
            "dtype": dtype,
            "normalised": False,
            "latent_stats": first_stage.latent_stats(),
            "has_labels": has_labels,
            "num_classes": num_classes if has_labels else None,
            "first_stage": first_stage.describe(),
            "source": source or {},
        }
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        _fsync(tmp / META_FILE)
        if path.exists():  # overwrite: move the old store aside only now that the new one is complete
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("wrote %d latents of shape %s (%s) to %s", count, meta["shape"], dtype, path)
    return path


class LatentStore:
    """A store opened for reading: memory-mapped raw latents, labels and ``meta.json``."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser()
        meta_file = self.path / META_FILE
        if not self.path.is_dir():
            raise LatentStoreError(f"latent store {self.path} does not exist; {HOW_TO_CREATE}")
        if not meta_file.is_file():
            raise LatentStoreError(
                f"{meta_file} is missing: {self.path} is not a complete latent store; {HOW_TO_CREATE}"
            )
        try:
            self.meta: dict[str, Any] = json.loads(meta_file.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise LatentStoreError(f"cannot read {meta_file}: {err}; {HOW_TO_CREATE}") from err
        for key in ("shape", "count", "latent_stats", "has_labels"):
            if key not in self.meta:
                raise LatentStoreError(f"{meta_file} lacks the key {key!r}; re-create the store ({HOW_TO_CREATE})")
        latents_file = self.path / LATENTS_FILE
        if not latents_file.is_file():
            raise LatentStoreError(f"{latents_file} is missing; {HOW_TO_CREATE}")
        self.latents = np.load(latents_file, mmap_mode="r")
        expected = (self.meta["count"], *self.meta["shape"])
        if self.latents.shape != expected:
            raise LatentStoreError(
                f"{latents_file} has shape {self.latents.shape} but {meta_file} says {expected}; re-create the store"
            )
        self.labels: np.ndarray | None = None
        if self.meta["has_labels"]:
            labels_file = self.path / LABELS_FILE
            if not labels_file.is_file():
                raise LatentStoreError(f"{labels_file} is missing although {meta_file} says the data is labelled")
            self.labels = np.load(labels_file)
            if self.labels.shape != (self.meta["count"],):
                raise LatentStoreError(f"{labels_file} has shape {self.labels.shape}, expected ({self.meta['count']},)")
        stats = self.meta["latent_stats"]
        channels = self.meta["shape"][0]
        self.shift = np.asarray(stats["shift"], dtype=np.float32).reshape(channels, 1, 1)
        self.scale = np.asarray(stats["scale"], dtype=np.float32).reshape(channels, 1, 1)

    def __len__(self) -> int:
        return int(self.meta["count"])

    @property
    def num_source_samples(self) -> int:
        return int(self.meta.get("num_source_samples", self.meta["count"]))

    def normalised(self, indices: Sequence[int] | np.ndarray) -> torch.Tensor:
        """Float32 normalised latents ``(raw - shift) / scale`` of the given entries."""
        raw = np.asarray(self.latents[np.asarray(indices, dtype=np.int64)], dtype=np.float32)
        return torch.from_numpy((raw - self.shift) / self.scale)


class LatentBatches(torch.utils.data.Dataset):
    """A dataset indexed by *lists* of entries: one ``__getitem__`` reads and normalises a whole batch.

    Reading a batch with one fancy index on the memory map is far cheaper than collating items one
    by one. Used with a ``BatchSampler`` as the loader's sampler and ``batch_size=None``.
    """

    def __init__(self, store: LatentStore, entries: np.ndarray) -> None:
        self.store, self.entries = store, entries

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, positions: list[int]) -> tuple[torch.Tensor, torch.Tensor] | torch.Tensor:
        index = self.entries[np.asarray(positions, dtype=np.int64)]
        latents = self.store.normalised(index)
        if self.store.labels is None:
            return latents
        return latents, torch.from_numpy(self.store.labels[index])


class LatentDataModule(L.LightningDataModule):
    """Batches ``(normalised float32 latents, int64 labels)`` (latents alone without labels) from stores.

    Args:
        path: a store directory, or the output of ``scripts/encode_latents.py`` (a directory with
            ``train/`` and ``val/`` stores).
        batch_size: per-device batch size.
        num_workers: loader processes (0 is usually fastest: a batch is one memory-mapped read).
        val_path: the validation store; default ``<path>/val`` when ``path`` holds ``train/`` and ``val/``.
        val_fraction: without a validation store, hold out this fraction of the training images
            (chosen by ``seed``; a held-out image's flipped copy is held out too, and only the
            originals are validated on).
        seed: seed of the held-out split and of the training shuffle.
        pin_memory, persistent_workers: passed to the DataLoaders.
    """

    provides_latents = True

    def __init__(
        self,
        path: str,
        batch_size: int = 64,
        num_workers: int = 0,
        val_path: str | None = None,
        val_fraction: float = 0.0,
        seed: int = 0,
        pin_memory: bool = False,
        persistent_workers: bool = False,
    ) -> None:
        super().__init__()
        root = Path(path).expanduser()
        if not (root / META_FILE).is_file() and (root / "train" / META_FILE).is_file():
            val_path = val_path or (str(root / "val") if (root / "val" / META_FILE).is_file() else None)
            root = root / "train"
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"data.val_fraction={val_fraction} must be in [0, 1)")
        self.train_store = LatentStore(root)
        self.val_store = LatentStore(val_path) if val_path else None
        if self.val_store is not None and self.val_store.meta["shape"] != self.train_store.meta["shape"]:
            raise LatentStoreError(
                f"the validation store {val_path} holds latents of shape {self.val_store.meta['shape']}, "
                f"the training store {root} {self.train_store.meta['shape']}"
            )
        self.batch_size, self.num_workers = batch_size, num_workers
        self.val_fraction, self.seed = val_fraction, seed
        self.pin_memory = pin_memory
        self.persistent_workers = persistent_workers and num_workers > 0
        self.train_entries, self.val_entries = self._split()

    # -- what the rest of the framework reads -----------------------------------------------------
    @property
    def image_shape(self) -> tuple[int, int, int]:
        """The latent shape ``(C, H, W)``: what the diffusion network denoises."""
        return tuple(self.train_store.meta["shape"])

    @property
    def num_classes(self) -> int | None:
        return self.train_store.meta.get("num_classes") if self.train_store.labels is not None else None

    @property
    def latent_stats(self) -> dict[str, list[float]]:
        """``{"shift": [...], "scale": [...]}`` the batches are normalised with."""
        stats = self.train_store.meta["latent_stats"]
        return {"shift": list(stats["shift"]), "scale": list(stats["scale"])}

    @property
    def first_stage_description(self) -> dict[str, Any]:
        """The ``describe()`` of the first stage that encoded the store (decode samples with it)."""
        return self.train_store.meta.get("first_stage", {})

    # -- splits and loaders -------------------------------------------------------------------------
    def _split(self) -> tuple[np.ndarray, np.ndarray | None]:
        store = self.train_store
        if self.val_store is not None or self.val_fraction == 0.0:
            val = np.arange(len(self.val_store)) if self.val_store is not None else None
            return np.arange(len(store)), val
        n = store.num_source_samples
        held = max(1, round(n * self.val_fraction))
        order = np.random.default_rng(self.seed).permutation(n)
        val_sources, train_sources = np.sort(order[:held]), np.sort(order[held:])
        copies = len(store) // n  # 2 with flipped copies
        train = np.concatenate([train_sources + k * n for k in range(copies)])
        return train, val_sources

    def setup(self, stage: str | None = None) -> None:
        log.info(
            "latents from %s: %d train, %d validation entries of shape %s",
            self.train_store.path,
            len(self.train_entries),
            0 if self.val_entries is None else len(self.val_entries),
            self.image_shape,
        )

    def _loader(self, dataset: LatentBatches, sampler: Sampler, drop_last: bool) -> DataLoader:
        return DataLoader(
            dataset,
            sampler=BatchSampler(sampler, self.batch_size, drop_last=drop_last),
            batch_size=None,  # the dataset returns whole batches
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers,
        )

    def train_dataloader(self) -> DataLoader:
        # Seeded, sharded over the trainer's ranks and resumable mid-epoch (data/resumable_sampler.py).
        dataset = LatentBatches(self.train_store, self.train_entries)
        return resumable_train_loader(
            dataset,
            self.batch_size,
            self.trainer,
            seed=self.seed,
            batched_dataset=True,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers,
        )

    def val_dataloader(self) -> DataLoader | list:
        if self.val_entries is None:
            return []
        store = self.val_store or self.train_store
        dataset = LatentBatches(store, self.val_entries)
        # Under DDP each rank reads its share and no entry twice (torch's sampler would pad with repeats).
        sampler = BaseDataModule.eval_sampler(dataset) or SequentialSampler(dataset)
        return self._loader(dataset, sampler, drop_last=False)

"""Look at a data set before training on it: ``python scripts/inspect_data.py data=NAME data.root=DIR``.

    python scripts/inspect_data.py data=lsun data.root=/data/lsun data.category=church_outdoor
    python scripts/inspect_data.py data=image_folder data.root=photos.zip data.resolution=128 num_images=null

The config is ``configs/inspect_data.yaml`` (the ``data`` group of train.py). It prints

- the number of training and validation images, and the classes with their counts where the data
  set has labels;
- per-channel mean, standard deviation, minimum and maximum, in [-1, 1] as the model sees them,
  over ``num_images`` images of each split (a seeded sample; ``num_images=null`` reads every image);
- how many of those images cannot be read, i.e. would be skipped with ``data.on_corrupt=skip``
  (or stop the run with ``error``), naming the first few;
- the decode throughput: images per second through the training DataLoader, with the configured
  workers, flips and batch size, after one warm-up batch (which starts the workers). A training set
  smaller than ``data.batch_size`` is timed in batches of the whole set, and the output says so
  (training itself would need a smaller ``data.batch_size``);

and writes a grid of real samples (the preprocessed, unflipped training images of the sample).
"""

from __future__ import annotations

import copy
import logging
import math
import time
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader, Dataset

from spectral_diffusion.data.image_dataset import EncodedImageDataset, UnreadableImageError
from spectral_diffusion.data.throughput import time_loader
from spectral_diffusion.data.transforms import ImageTooSmallError
from spectral_diffusion.utils.images import save_grid
from spectral_diffusion.utils.run import register_resolvers, task_wrapper

log = logging.getLogger("inspect_data")
register_resolvers()

#: Names of unreadable images printed.
NAMES_SHOWN = 5


class Probe(Dataset):
    """Entries ``indices`` of ``dataset``, each read as stored: ``(image, label, error message or "")``.

    Unlike the dataset itself it neither flips nor replaces an unreadable image by the next one,
    so every unreadable entry is counted once, with its message. An unreadable entry comes back as
    a zero image with label -1.
    """

    def __init__(self, dataset: Dataset, indices: np.ndarray, shape: tuple[int, ...]) -> None:
        self.dataset = copy.copy(dataset)
        if hasattr(self.dataset, "random_flip"):
            self.dataset.random_flip = False  # the shallow copy: the training set keeps its flips
        self.indices, self.shape = indices, shape

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int) -> tuple[torch.Tensor, int, str]:
        index = int(self.indices[k])
        try:
            if isinstance(self.dataset, EncodedImageDataset):
                return self.dataset.load(index), self.dataset.label(index), ""
            image, label = self.dataset[index]
            return image, int(label), ""
        except (UnreadableImageError, ImageTooSmallError) as err:
            return torch.zeros(self.shape), -1, str(err)


def sample_indices(count: int, num_images: int | None, seed: int) -> np.ndarray:
    """``num_images`` indices of ``range(count)`` from a seeded permutation (all of them for ``None``)."""
    if num_images is None or num_images >= count:
        return np.random.default_rng(seed).permutation(count)
    if num_images < 1:
        raise ValueError(f"num_images={num_images} must be a positive integer, or null for every image")
    return np.random.default_rng(seed).permutation(count)[:num_images]


class ChannelStats:
    """Running per-channel sums (float64), minima and maxima of image batches."""

    def __init__(self) -> None:
        self.count, self.sum, self.sum_sq = 0, 0.0, 0.0
        self.min: torch.Tensor | None = None
        self.max: torch.Tensor | None = None

    def update(self, images: torch.Tensor) -> None:
        if not len(images):
            return
        x = images.double().transpose(0, 1).flatten(1)  # (C, pixels)
        self.count += x.shape[1]
        self.sum = self.sum + x.sum(1)
        self.sum_sq = self.sum_sq + (x * x).sum(1)
        low, high = x.min(1).values, x.max(1).values
        self.min = low if self.min is None else torch.minimum(self.min, low)
        self.max = high if self.max is None else torch.maximum(self.max, high)

    def summary(self) -> dict[str, list[float]] | None:
        if not self.count:
            return None
        mean = self.sum / self.count
        std = (self.sum_sq / self.count - mean * mean).clamp_min(0).sqrt()
        return {k: v.tolist() for k, v in (("mean", mean), ("std", std), ("min", self.min), ("max", self.max))}


def probe_split(
    dataset: Dataset, indices: np.ndarray, shape: tuple[int, ...], loader_kwargs: dict[str, Any], keep: int
) -> dict[str, Any]:
    """Read ``indices`` of ``dataset`` through a loader: statistics, unreadable entries, the first ``keep`` images."""
    stats, kept, errors = ChannelStats(), [], []
    start = time.perf_counter()
    for images, labels, messages in DataLoader(Probe(dataset, indices, shape), shuffle=False, **loader_kwargs):
        readable = labels >= 0
        stats.update(images[readable])
        errors.extend(m for m in messages if m)
        if sum(len(k) for k in kept) < keep:
            kept.append(images[readable])
    seconds = time.perf_counter() - start
    grid = torch.cat(kept)[:keep] if kept else torch.zeros((0, *shape))
    return {
        "checked": len(indices),
        "unreadable": len(errors),
        "unreadable_examples": errors[:NAMES_SHOWN],
        "stats": stats.summary(),
        "seconds": seconds,
        "grid": grid,
    }


def class_counts(dataset: Dataset, num_classes: int | None) -> list[int] | None:
    """Images per class of a labelled dataset (from its label array, without decoding anything)."""
    labels = getattr(dataset, "labels", None)
    if num_classes is None or labels is None:
        return None
    return np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes).tolist()


def measure_throughput(datamodule: Any, train_images: int, batches: int) -> dict[str, Any] | None:
    """Time the training loader, and print the figures (``None`` without training images).

    The training loader drops the last incomplete batch, so on a data set smaller than
    ``data.batch_size`` it has no batch at all and ``train_dataloader`` refuses to build it. An
    inspection must still work there: the loader is then timed with one batch of the whole
    training set, the output says so, and it says what training would need.
    """
    configured = datamodule.batch_size
    if train_images < 1:
        print("  decode throughput: not measured (no training images)")
        return None
    batch = min(configured, train_images)
    datamodule.batch_size = batch  # restored below; the loader is built with it
    try:
        loader = datamodule.train_dataloader()
    finally:
        datamodule.batch_size = configured
    timing = time_loader(loader, batches)
    del loader  # stops non-persistent workers now
    what = f"batch {batch}"
    if batch < configured:
        what += f", the whole training set: it is smaller than data.batch_size={configured}"
    print(
        f"  decode throughput (training loader: {what}, {datamodule.num_workers} workers): "
        f"{timing['images_per_s']:.1f} images/s over {timing['images']} images; "
        f"first batch after {timing['first_batch_s']:.2f} s"
    )
    if batch < configured:
        print(
            f"  note: training with data.batch_size={configured} would stop: the training loader drops the last "
            f"incomplete batch, which leaves none of {train_images} images; use data.batch_size<={train_images}"
        )
    return {**timing, "batch_size": batch, "whole_set": batch < configured}


def _fmt(values: list[float]) -> str:
    return "(" + ", ".join(f"{v:+.3f}" for v in values) + ")"


@task_wrapper
def inspect_data(cfg: DictConfig) -> dict[str, Any]:
    """Print the report described in the module doc, write the grid, and return the figures."""
    datamodule = hydra.utils.instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("fit")
    train_set, val_set = datamodule.train_set, datamodule.val_set
    shape = tuple(datamodule.image_shape)
    name = type(datamodule).__name__
    print(f"{name}: data.root={getattr(datamodule, 'root', None)}")
    print(f"  images: {len(train_set)} train, {len(val_set)} validation, each {'x'.join(map(str, shape))}")
    report: dict[str, Any] = {"datamodule": name, "train": len(train_set), "val": len(val_set), "shape": shape}

    num_classes = getattr(datamodule, "num_classes", None)
    names = getattr(datamodule, "class_names", None)
    counts = class_counts(train_set, num_classes)
    report.update(num_classes=num_classes, class_counts=counts)
    if num_classes is None:
        print("  labels: none (unlabelled; every label is 0)")
    else:
        names = list(names) if names is not None else [str(i) for i in range(num_classes)]
        shown = ", ".join(f"{n}={c}" for n, c in zip(names, counts or [], strict=False))
        print(f"  labels: {num_classes} classes; training images per class: {shown or '?'}")

    loader_kwargs = {
        "batch_size": datamodule.batch_size,
        "num_workers": datamodule.num_workers,
        "pin_memory": False,
    }
    num_images = cfg.get("num_images")
    grid = None
    for split, dataset in (("train", train_set), ("val", val_set)):
        if not len(dataset):
            continue
        indices = sample_indices(len(dataset), num_images, cfg.seed)
        probe = probe_split(dataset, indices, shape, loader_kwargs, cfg.grid_size if split == "train" else 0)
        if split == "train":
            grid = probe.pop("grid")
        else:
            probe.pop("grid")
        report[f"{split}_probe"] = probe
        print(
            f"  {split}: read {probe['checked']} images in {probe['seconds']:.2f} s "
            f"({datamodule.num_workers} workers): {probe['unreadable']} unreadable"
        )
        if probe["stats"] is not None:
            stats = probe["stats"]
            print(f"    per-channel mean {_fmt(stats['mean'])}  std {_fmt(stats['std'])}")
            print(f"    per-channel min  {_fmt(stats['min'])}  max {_fmt(stats['max'])}  (images in [-1, 1])")
        for message in probe["unreadable_examples"]:
            print(f"    unreadable: {message}")
        if probe["unreadable"] > len(probe["unreadable_examples"]):
            print(f"    ... and {probe['unreadable'] - len(probe['unreadable_examples'])} more")
    unreadable = sum(report[f"{s}_probe"]["unreadable"] for s in ("train", "val") if f"{s}_probe" in report)
    policy = getattr(datamodule, "on_corrupt", None)
    if unreadable and policy is not None:
        what = "skipped (data.on_corrupt=skip)" if policy == "skip" else "stop training (data.on_corrupt=error)"
        print(f"  {unreadable} unreadable image(s) in the sample would be {what}")

    if int(cfg.throughput_batches) < 1:
        raise ValueError(f"throughput_batches={cfg.throughput_batches} must be a positive integer")
    report["throughput"] = measure_throughput(datamodule, len(train_set), int(cfg.throughput_batches))

    if grid is not None and len(grid):
        side = shape[-1]
        path = save_grid(grid, Path(cfg.grid_path), nrow=math.ceil(math.sqrt(len(grid))), scale=max(1, 128 // side))
        report["grid_path"] = str(path)
        print(f"  wrote a grid of {len(grid)} training images to {path}")
    return report


@hydra.main(version_base="1.3", config_path="../configs", config_name="inspect_data")
def main(cfg: DictConfig) -> None:
    inspect_data(cfg)


if __name__ == "__main__":
    main()

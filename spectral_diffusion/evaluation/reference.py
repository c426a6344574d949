"""Reference statistics of a data set, computed once and cached on disk.

``python evaluate.py mode=reference data=NAME`` (or the first evaluation that needs them) reads
the images of one split, extracts their features and writes, under ``metrics.reference.cache_dir``,

- ``<key>.npz``: float64 mean and covariance (:class:`FeatureStatistics`, no pickle), and
- ``<key>.features.npy``: the float32 features themselves, which KID needs.

The key names the data set, its image shape, the split, the number of images, the extractor
(network + weights hash) and a hash of the data config's identifying fields (root and options,
not loader settings), so statistics are never reused for anything else. Later evaluations load
the files instead of reading the data again. Under ``torch.distributed`` rank 0 computes them and
the other ranks wait and load.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
import torch.distributed as dist
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from spectral_diffusion.evaluation.distributed import world
from spectral_diffusion.evaluation.features import FeatureSet, extract
from spectral_diffusion.evaluation.frechet import FeatureStatistics
from spectral_diffusion.utils.checkpoint import write_bytes_atomically

log = logging.getLogger(__name__)

SPLITS = ("train", "val")
#: Data config keys that change how images are loaded, not which images: left out of the key.
#: (``download_dir`` is only a fallback location and follows the working directory.)
LOADER_KEYS = (
    "batch_size",
    "num_workers",
    "pin_memory",
    "persistent_workers",
    "download",
    "download_dir",
    "random_flip",
)


def data_identity(data_cfg: DictConfig | dict) -> tuple[str, str]:
    """``(data set name, short hash)`` of a ``data/`` config (loader settings excluded)."""
    plain = OmegaConf.to_container(data_cfg, resolve=True) if isinstance(data_cfg, DictConfig) else dict(data_cfg)
    if "_target_" not in plain:
        raise ValueError(f"the data config has no _target_: {plain}")
    name = str(plain["_target_"]).rsplit(".", 1)[-1].removesuffix("DataModule")
    if plain.get("category"):
        name += f"_{plain['category']}"
    identifying = {k: v for k, v in sorted(plain.items()) if k not in LOADER_KEYS}
    digest = hashlib.sha256(json.dumps(identifying, sort_keys=True, default=str).encode()).hexdigest()[:8]
    return name.lower(), digest


def reference_key(
    data_cfg: DictConfig | dict,
    image_shape: tuple[int, ...],
    split: str,
    num_images: int | None,
    extractor_identity: str,
) -> str:
    """File name stem of the cached statistics (readable, and unique for what they measure)."""
    name, digest = data_identity(data_cfg)
    shape = "x".join(map(str, image_shape))
    count = "all" if num_images is None else str(num_images)
    return f"{name}-{shape}-{split}-n{count}-{extractor_identity}-{digest}"


def split_dataset(datamodule: Any, split: str) -> Dataset:
    """The ``train`` or ``val`` set of a DataModule, read without random flips."""
    if split not in SPLITS:
        raise ValueError(f"metrics.reference.split={split!r} must be one of {list(SPLITS)}")
    if getattr(datamodule, "provides_latents", False):
        raise ValueError(
            "reference statistics need images, but this data config holds cached latents (data=latents); "
            "give the image data set it was encoded from, e.g. data=fashion_mnist"
        )
    if hasattr(datamodule, "random_flip"):
        datamodule.random_flip = False  # reference images exactly as stored
    datamodule.setup("validate")
    return datamodule.train_set if split == "train" else datamodule.val_set


def image_batches(
    dataset: Dataset, num_images: int | None, batch_size: int
) -> Iterator[tuple[list[int], torch.Tensor]]:
    """``(indices, images)`` batches of the first ``num_images`` images of ``dataset`` (all if ``None``)."""
    count = len(dataset) if num_images is None else num_images
    if count > len(dataset):
        raise ValueError(f"metrics.reference.num_images={num_images} but the split has only {len(dataset)} images")
    loader = DataLoader(Subset(dataset, range(count)), batch_size=batch_size, shuffle=False)
    start = 0
    for batch in loader:
        images = batch[0] if isinstance(batch, (tuple, list)) else batch
        yield list(range(start, start + len(images))), images
        start += len(images)


class ReferenceCache:
    """The cached reference features of one data set, split and extractor (module doc)."""

    def __init__(self, cache_dir: str | Path, key: str) -> None:
        self.stats_path = Path(cache_dir).expanduser() / f"{key}.npz"
        self.features_path = self.stats_path.with_name(f"{key}.features.npy")

    def exists(self) -> bool:
        return self.stats_path.is_file() and self.features_path.is_file()

    def load(self) -> FeatureSet:
        stats = FeatureStatistics.load(self.stats_path)
        features = torch.from_numpy(np.load(self.features_path, allow_pickle=False))
        if len(features) != stats.count:
            raise ValueError(
                f"{self.features_path} holds {len(features)} features but {self.stats_path} {stats.count}: "
                "delete both to recompute them"
            )
        return FeatureSet(stats, features, torch.arange(len(features)))

    def save(self, reference: FeatureSet) -> None:
        buffer = io.BytesIO()
        np.save(buffer, reference.features.float().numpy(), allow_pickle=False)
        write_bytes_atomically(self.features_path, buffer.getvalue())
        reference.stats.save(self.stats_path)  # written last: its presence means "complete"


def reference_features(
    data_cfg: DictConfig,
    extractor: nn.Module,
    cache_dir: str | Path,
    split: str = "train",
    num_images: int | None = None,
    batch_size: int = 256,
    datamodule: Any = None,
) -> tuple[FeatureSet, Path, bool]:
    """The reference features of ``data_cfg``'s ``split``: ``(features, stats file, computed now?)``.

    Loaded from the cache when present, else computed (by rank 0 under ``torch.distributed``) and cached.
    ``datamodule`` is ``data_cfg``'s DataModule where the caller has built it (a checkpoint's stored
    data config is rebuilt from the registry, not by Hydra); else it is instantiated from ``data_cfg``.
    """
    if datamodule is None:
        datamodule = hydra.utils.instantiate(data_cfg)
    image_shape = tuple(getattr(datamodule, "image_shape", ()))
    key = reference_key(data_cfg, image_shape, split, num_images, extractor.identity)
    cache = ReferenceCache(cache_dir, key)
    rank, world_size = world()
    computed = False
    if not cache.exists() and rank == 0:
        dataset = split_dataset(datamodule, split)
        log.info("computing reference statistics %s (%s images)", key, num_images or len(dataset))
        metadata = {
            "data": OmegaConf.to_container(data_cfg, resolve=True),
            "split": split,
            "num_images": num_images or len(dataset),
            "image_shape": list(image_shape),
            "extractor": extractor.identity,
            "resize": getattr(extractor, "resize", ""),
        }
        cache.save(extract(image_batches(dataset, num_images, batch_size), extractor, True, metadata))
        computed = True
    if world_size > 1:
        dist.barrier()
    reference = cache.load()
    if reference.stats.extractor != extractor.identity:
        raise ValueError(
            f"{cache.stats_path} was computed with extractor {reference.stats.extractor!r}, not {extractor.identity!r}"
        )
    if not computed:
        log.info("reference statistics reused from %s", cache.stats_path)
    return reference, cache.stats_path, computed

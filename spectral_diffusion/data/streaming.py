"""Train from LitData shard sets (``data=streaming``): local folders or object storage, any number of nodes.

``scripts/write_shards.py`` writes the shards (``data/shards.py``, format in ``data/shard_format.py``).
Reading follows LitData's documented usage: a ``StreamingDataset`` over ``data.input_dir`` and a
``StreamingDataLoader``. LitData assigns chunks to the DDP ranks and loader workers, shuffles
chunks and the items within them from ``(seed, epoch)``, and downloads remote chunks into
``data.cache_dir``, evicting the oldest beyond ``data.max_cache_size``.

**Batches** are what the source data module gave, ``(image in [-1, 1], label)`` (plus ``context,
context_mask`` with captions), or ``(normalised latent, label)`` for latents; decoded as
``shard_format.SampleDecoder`` says. Random flips are drawn from ``(seed, epoch, source index)``
(``data/worker_rng.py``), so they do not depend on which worker or rank reads an image.

**Resume.** LitData's loader state (``StreamingDataLoader.state_dict``: the epoch, the samples
yielded and the last worker) travels in every checkpoint through Lightning's stateful-loader
protocol. LitData counts the batches it handed out; :class:`ResumableStreamingDataLoader` saves the
state of the batches the training loop *consumed* (Lightning's progress), as
``data/resumable_sampler.py`` does for the other data modules. With Lightning 2.6 the two counts
agree, but a consumer that read ahead would otherwise resume past batches it never trained on. The
order within an epoch depends on the number of ranks and of loader workers (LitData deals chunks to
them), so a resumed run is exact when it keeps both; ``docs/data.md`` lists what changes otherwise.

**Validation** reads a held-out shard set (``<input_dir>/val``, or ``data.val_dir``) in order, each
rank its share and every sample once (``base.UnpaddedDistributedSampler``), or the original data
module given as ``data.val_source``; ``data.validation=none`` skips it.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from litdata import StreamingDataLoader, StreamingDataset
from torch.utils.data import DataLoader, Dataset

from spectral_diffusion.data.base import BaseDataModule, resolve_pin_memory
from spectral_diffusion.data.resumable_sampler import AugmentationKey, consumed_batches_of
from spectral_diffusion.data.shard_format import (
    HOW_TO_WRITE,
    INDEX,
    SampleDecoder,
    ShardSetError,
    fetch_text,
    is_remote,
    join,
    load_text_table,
    read_index,
    read_sidecar,
    refusing_serializers,
)
from spectral_diffusion.data.worker_rng import WorkerRandom

log = logging.getLogger(__name__)

VALIDATION_MODES = ("shards", "none")


class ShardDataset(StreamingDataset):
    """Decoded samples of one shard set (module doc); a ``StreamingDataset`` for LitData's sharding and resume.

    Args:
        input_dir: the shard set (a folder, ``s3://...``, ``local:/...``).
        meta: its sidecar.
        decoder: turns an item into tensors.
        random_flip: flip images horizontally with probability 1/2, keyed by (seed, epoch, index).
        **streaming: ``StreamingDataset`` arguments (``cache_dir``, ``max_cache_size``, ``shuffle``,
            ``seed``, ``drop_last``, ``storage_options``).
    """

    def __init__(
        self,
        input_dir: str,
        meta: dict[str, Any],
        decoder: SampleDecoder,
        random_flip: bool = False,
        **streaming: Any,
    ) -> None:
        super().__init__(input_dir=input_dir, serializers=refusing_serializers(), **streaming)
        self.source_name, self.decoder = input_dir, decoder
        self.random_flip = random_flip and meta["kind"] == "images"
        self.with_context = bool(meta.get("text_embeddings"))
        self.random = WorkerRandom()

    def __getitem__(self, index: Any) -> tuple[torch.Tensor, ...]:
        item = super().__getitem__(index)
        position = int(item["index"])
        name = f"{self.source_name} item {position}"
        sample = self.decoder.sample(item, name)
        if self.random_flip and self.random.coin(key=AugmentationKey(position, self.seed, self.current_epoch)):
            sample = sample.flip(-1)
        label = torch.tensor(int(item["label"]), dtype=torch.int64)
        if self.with_context:
            return (sample, label, *self.decoder.context(item))
        return sample, label


class ShardSamples(Dataset):
    """A shard set as a map-style dataset, in its stored order (validation, reference statistics, scripts).

    Its length is the whole set's, from the index: under DDP a ``StreamingDataset``'s own length is
    one rank's share, and the evaluation sampler does the sharing here.
    """

    def __init__(self, shards: ShardDataset, count: int | None = None) -> None:
        self.shards = shards
        self.count = len(shards) if count is None else int(count)

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> tuple[torch.Tensor, ...]:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} is out of range for {len(self)} samples")
        return self.shards[int(index)]


class ResumableStreamingDataLoader(StreamingDataLoader):
    """A ``StreamingDataLoader`` whose saved state is that of the batches the training loop consumed.

    Args:
        consumed_batches: returns how many batches of the current epoch the training loop has taken
            (Lightning's progress); ``None`` keeps LitData's own count of the batches handed out.
        *args, **kwargs: passed to ``StreamingDataLoader``.
    """

    def __init__(self, *args: Any, consumed_batches: Callable[[], int] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.consumed_batches = consumed_batches

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        if self.consumed_batches is None:
            return state
        consumed = int(self.consumed_batches())
        samples = consumed * int(self.batch_size)
        # Batches come from the workers in turn (worker 0, 1, ..., as LitData's own count assumes),
        # so the last consumed batch is worker (consumed - 1) mod workers's.
        workers = max(1, self.num_workers)
        state["num_samples_yielded"] = samples
        state["latest_worker_idx"] = (consumed - 1) % workers if consumed else 0
        state["dataset"] = self.dataset.state_dict(samples, self.num_workers, self.batch_size)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = state.get("dataset") or {}
        now = {"world_size": self.dataset.distributed_env.world_size, "num_workers": max(1, self.num_workers)}
        changed = {k: (saved[k], v) for k, v in now.items() if k in saved and int(saved[k]) != v}
        if changed:
            # LitData deals chunks to ranks x workers: another layout continues the epoch without
            # repeating a sample, but in another order than the uninterrupted run (docs/data.md).
            log.warning(
                "resuming streaming data with another layout (%s): LitData continues the epoch without repeats, "
                "but not in the order of the uninterrupted run; keep trainer.devices, trainer.num_nodes and "
                "data.num_workers for an exact resume",
                ", ".join(f"{k} {old} -> {new}" for k, (old, new) in changed.items()),
            )
        super().load_state_dict(state)


def item_count(index: dict[str, Any]) -> int:
    """The number of items of a shard set, from its LitData index (all ranks together)."""
    return sum(int(chunk["chunk_size"]) for chunk in index["chunks"])


def check_writable(cache_dir: str) -> Path:
    """``data.cache_dir`` created if needed and written to once, or a ``ShardSetError`` naming it."""
    path = Path(cache_dir).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):
            pass
    except OSError as err:
        raise ShardSetError(
            f"data.cache_dir={cache_dir} is not writable ({type(err).__name__}: {err}); LitData keeps the downloaded "
            "chunks there: point data.cache_dir at a writable folder with room for data.max_cache_size"
        ) from err
    return path


def split_dirs(input_dir: str, val_dir: str | None, storage_options: dict[str, Any]) -> tuple[str, str | None]:
    """``(training shard set, validation shard set or None)``: ``input_dir`` itself, or its ``train/`` and ``val/``."""
    if fetch_text(join(input_dir, INDEX), None, storage_options) is not None:
        return input_dir, val_dir
    train = join(input_dir, "train")
    if fetch_text(join(train, INDEX), None, storage_options) is None:
        raise ShardSetError(
            f"data.input_dir={input_dir} holds no LitData index (neither {INDEX} nor train/{INDEX}); {HOW_TO_WRITE}"
        )
    default_val = join(input_dir, "val")
    if val_dir is None and fetch_text(join(default_val, INDEX), None, storage_options) is not None:
        val_dir = default_val
    return train, val_dir


class StreamingDataModule(L.LightningDataModule):
    """Batches from LitData shard sets written by ``scripts/write_shards.py`` (module doc).

    Args:
        input_dir: the output of ``write_shards.py`` (with ``train/`` and ``val/``) or one shard set;
            a local folder, ``s3://bucket/prefix``, or ``local:/path`` (LitData's stand-in for remote storage).
        val_dir: the validation shard set; default ``<input_dir>/val`` when there is one.
        validation: ``shards`` (the held-out shard set, if any) or ``none``.
        val_source: a DataModule to validate on instead of shards (e.g. the original data set).
        cache_dir: where LitData keeps downloaded chunks of remote shards (``None``: LitData's default).
        max_cache_size: the cache's size limit (``"50GB"``); LitData evicts chunks beyond it.
        resolution: the image side the run expects; ``None`` takes the shards'. A mismatch is an error.
        latent_shape: the latent shape ``[C, H, W]`` the run expects, for latent shards.
        random_flip: flip training images; ``None`` as the source data config did.
        shuffle: LitData's shuffling of chunks and items, from ``(seed, epoch)``.
        seed: seed of the shuffle and the flips (the run's seed).
        batch_size, num_workers, pin_memory, persistent_workers: loader settings.
        storage_options: passed to LitData's downloaders (e.g. ``{endpoint_url: ...}`` for S3-compatible stores).
    """

    def __init__(
        self,
        input_dir: str,
        val_dir: str | None = None,
        validation: str = "shards",
        val_source: L.LightningDataModule | None = None,
        cache_dir: str | None = None,
        max_cache_size: str | int = "50GB",
        resolution: int | None = None,
        latent_shape: Sequence[int] | None = None,
        random_flip: bool | None = None,
        shuffle: bool = True,
        seed: int = 0,
        batch_size: int = 64,
        num_workers: int = 2,
        pin_memory: bool | str = "auto",
        persistent_workers: bool = False,
        storage_options: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if input_dir is None or str(input_dir) in ("", "???"):
            raise ShardSetError(f"data.input_dir is not set; point it at a shard set ({HOW_TO_WRITE})")
        if validation not in VALIDATION_MODES:
            raise ShardSetError(f"data.validation={validation!r} must be one of {', '.join(VALIDATION_MODES)}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"data.batch_size={batch_size!r} must be a positive integer")
        if not isinstance(num_workers, int) or num_workers < 0:
            raise ValueError(f"data.num_workers={num_workers!r} must be an integer >= 0")
        self.input_dir = str(input_dir) if is_remote(str(input_dir)) else str(Path(input_dir).expanduser())
        self.storage_options = dict(storage_options or {})
        self.cache_dir = str(check_writable(cache_dir)) if cache_dir else None
        self.max_cache_size = max_cache_size
        self.train_dir, self.val_dir = split_dirs(self.input_dir, val_dir, self.storage_options)
        read_index(self.train_dir, self.cache_dir, self.storage_options)
        self.meta = read_sidecar(self.train_dir, self.cache_dir, self.storage_options)
        self.validation, self.val_source = validation, val_source
        self.seed, self.shuffle = int(seed), bool(shuffle)
        self.batch_size, self.num_workers = batch_size, num_workers
        self.pin_memory = resolve_pin_memory(pin_memory)
        self.persistent_workers = bool(persistent_workers) and num_workers > 0
        self.random_flip = bool(self.meta.get("random_flip", False)) if random_flip is None else bool(random_flip)
        self._check_shape(resolution, latent_shape)
        self.val_meta = None
        if self.val_dir is not None and validation == "shards" and val_source is None:
            self.val_count = item_count(read_index(self.val_dir, self.cache_dir, self.storage_options))
            self.val_meta = read_sidecar(self.val_dir, self.cache_dir, self.storage_options)
            if self.val_meta["sample_shape"] != self.meta["sample_shape"]:
                raise ShardSetError(
                    f"the validation shards {self.val_dir} hold samples of shape {self.val_meta['sample_shape']}, "
                    f"the training shards {self.train_dir} {self.meta['sample_shape']}"
                )
        self.text_table = (
            load_text_table(self.train_dir, self.cache_dir, self.storage_options)
            if self.meta.get("text_embeddings")
            else None
        )
        self.train_set: ShardDataset | None = None
        self.val_set: Dataset | None = None

    def _check_shape(self, resolution: int | None, latent_shape: Sequence[int] | None) -> None:
        shape = list(self.meta["sample_shape"])
        where = join(self.train_dir, "spectral_diffusion.json")
        if self.meta["kind"] == "images" and resolution is not None and int(resolution) != shape[-1]:
            raise ShardSetError(
                f"data.resolution={resolution} but the shards {self.train_dir} were written at {shape[-1]}x{shape[-1]} "
                f"({where}); re-write them with data.resolution={resolution}, or drop data.resolution"
            )
        if self.meta["kind"] == "latents" and latent_shape is not None and list(latent_shape) != shape:
            raise ShardSetError(
                f"data.latent_shape={list(latent_shape)} but the shards {self.train_dir} hold latents of shape "
                f"{shape} ({where}); re-write them from a store of that shape, or drop data.latent_shape"
            )

    # -- what the rest of the framework reads -----------------------------------------------------
    @property
    def provides_latents(self) -> bool:
        return self.meta["kind"] == "latents"

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one sample: the image, or the latent the network denoises."""
        return tuple(int(v) for v in self.meta["sample_shape"])

    @property
    def resolution(self) -> int:
        return self.image_shape[-1]

    @property
    def num_classes(self) -> int | None:
        return self.meta.get("num_classes")

    @property
    def class_names(self) -> Sequence[str] | None:
        return self.meta.get("class_names")

    @property
    def context_dim(self) -> int | None:
        return None if self.text_table is None else int(self.text_table[0].shape[-1])

    @property
    def latent_stats(self) -> dict[str, list[float]]:
        stats = self.meta["latent_stats"]
        return {"shift": list(stats["shift"]), "scale": list(stats["scale"])}

    @property
    def first_stage_description(self) -> dict[str, Any]:
        return self.meta.get("first_stage", {})

    # -- datasets and loaders ---------------------------------------------------------------------
    def _decoder(self, meta: dict[str, Any]) -> SampleDecoder:
        resolution = meta.get("resolution")
        return SampleDecoder(meta, resolution, meta.get("small_images", "upscale"), self.text_table)

    def _dataset(self, input_dir: str, meta: dict[str, Any], train: bool) -> ShardDataset:
        return ShardDataset(
            input_dir,
            meta,
            self._decoder(meta),
            random_flip=self.random_flip and train,
            cache_dir=self.cache_dir,
            max_cache_size=self.max_cache_size,
            shuffle=self.shuffle and train,
            seed=self.seed,
            drop_last=True if train else False,
            storage_options=self.storage_options,
        )

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        self.train_set = self._dataset(self.train_dir, self.meta, train=True)
        if self.val_source is not None:
            self.val_source.setup(stage)
            self.val_set = self.val_source.val_set
        elif self.val_meta is not None:
            self.val_set = ShardSamples(self._dataset(self.val_dir, self.val_meta, train=False), self.val_count)
        log.info(
            "shards from %s: %d train, %s validation samples of shape %s",
            self.train_dir,
            len(self.train_set),
            len(self.val_set) if self.val_set is not None else "no",
            self.image_shape,
        )

    def train_dataloader(self) -> StreamingDataLoader:
        if self.train_set is None:
            raise RuntimeError("StreamingDataModule.setup() must run before its dataloaders are asked for")
        if len(self.train_set) < self.batch_size:  # under DDP, len() is this rank's share
            raise ShardSetError(
                f"this process's share of the training shards is {len(self.train_set)} samples, fewer than "
                f"data.batch_size={self.batch_size}; lower data.batch_size"
            )
        return ResumableStreamingDataLoader(
            self.train_set,
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers,
            drop_last=True,
            consumed_batches=consumed_batches_of(self.trainer) if self.trainer is not None else None,
        )

    def val_dataloader(self) -> DataLoader | list:
        if self.val_source is not None:
            return self.val_source.val_dataloader()
        if self.val_set is None:
            return []
        return DataLoader(
            self.val_set,
            batch_size=self.batch_size,
            shuffle=False,
            sampler=BaseDataModule.eval_sampler(self.val_set),
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers,
        )

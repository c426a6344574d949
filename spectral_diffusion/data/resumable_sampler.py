"""A seeded, rank-sharded training sampler that resumes mid-epoch, and the loader that saves its place.

Why not ``RandomSampler`` + Lightning's ``DistributedSampler``: after a restart Lightning would begin
the interrupted epoch again from its first batch (with a different order), so a resumed run would
see other images than an uninterrupted one. Here the order and the position are explicit:

- The order of epoch ``e`` is a permutation drawn from ``(seed, e)`` only.
- It is cut into *global micro-batches* of ``num_replicas * batch_size`` images; rank ``r`` takes
  the ``r``-th slice of ``batch_size`` of each. The images of one optimizer step (``accumulate``
  micro-batches on every rank) are therefore the same contiguous run of the permutation, however
  the global batch is split over devices and accumulation.
- An epoch has a whole number of optimizer steps: the remainder is dropped (``drop_last``).
- ``state_dict`` records the epoch and how many micro-batches of it the training loop consumed;
  ``load_state_dict`` makes the next iteration skip them. Skipping costs nothing (no data is read).
- Each index is yielded as an :class:`AugmentationKey`: the int itself, carrying the seed and the
  epoch, from which the data sets draw the image's random flips (``data/worker_rng.py``). So the
  augmentation too is a function of ``(seed, epoch, index)``, not of which worker loads the image
  or of the workers' seeds, which both change with a resume or another split of the batch.

:class:`ResumableDataLoader` implements Lightning's ``state_dict`` / ``load_state_dict`` loader
protocol, so its state travels in every checkpoint (``loops.fit_loop.state_dict.combined_loader``).
It asks the trainer how many batches were *consumed* rather than counting what the sampler
yielded: loader workers and Lightning's fetcher read ahead.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, Sampler

log = logging.getLogger(__name__)


class AugmentationKey(int):
    """A dataset index that carries the run's ``seed`` and the ``epoch`` it is drawn in.

    The data sets draw its augmentation from these three numbers (``data/worker_rng.py``).

    It *is* the index (``int(key)``, arithmetic, indexing a tensor or an array work as with an
    int), so a dataset that ignores augmentation keys works unchanged. Arithmetic returns plain
    ints: pass the key itself, not ``key % n``, to :meth:`WorkerRandom.generator`.
    """

    seed: int
    epoch: int

    def __new__(cls, index: int, seed: int, epoch: int) -> AugmentationKey:
        key = super().__new__(cls, index)
        key.seed, key.epoch = int(seed), int(epoch)
        return key

    def __reduce__(self) -> tuple[Any, ...]:
        # Sent to the loader workers through a queue: rebuild it from its three numbers.
        return AugmentationKey, (int(self), self.seed, self.epoch)

    def __repr__(self) -> str:
        return f"AugmentationKey({int(self)}, seed={self.seed}, epoch={self.epoch})"


def default_seed() -> int:
    """The run's seed: ``seed_everything``'s (``PL_GLOBAL_SEED``, inherited by DDP processes), else torch's.

    Not ``torch.initial_seed()`` alone: the training step reseeds torch's global generators.
    """
    value = os.environ.get("PL_GLOBAL_SEED")
    return int(value) if value is not None else int(torch.initial_seed()) & 0xFFFF_FFFF_FFFF_FFFF


def epoch_permutation(num_samples: int, seed: int, epoch: int) -> torch.Tensor:
    """The data order of ``epoch``: a permutation of ``range(num_samples)`` drawn from ``(seed, epoch)``."""
    state = np.random.SeedSequence([seed, epoch]).generate_state(2, dtype=np.uint32)
    generator = torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))
    return torch.randperm(num_samples, generator=generator)


class ResumableSampler(Sampler[int]):
    """Indices of one rank's training images, epoch after epoch (see module doc).

    Args:
        num_samples: size of the dataset.
        batch_size: images per micro-batch on one device (the loader's batch size).
        num_replicas: data-parallel processes (world size).
        rank: this process's rank among them.
        accumulate: micro-batches per optimizer step (gradient accumulation).
        seed: seed of the data order; ``None`` takes the run's seed (:func:`default_seed`).
        shuffle: ``False`` keeps the dataset order (still sharded and resumable).
    """

    def __init__(
        self,
        num_samples: int,
        batch_size: int,
        num_replicas: int = 1,
        rank: int = 0,
        accumulate: int = 1,
        seed: int | None = None,
        shuffle: bool = True,
    ) -> None:
        for name, value in (("batch_size", batch_size), ("num_replicas", num_replicas), ("accumulate", accumulate)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"ResumableSampler: {name}={value!r} must be a positive integer")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"ResumableSampler: rank={rank} must be in [0, num_replicas={num_replicas})")
        images_per_step = num_replicas * batch_size * accumulate
        if num_samples < images_per_step:
            raise ValueError(
                f"the training set has {num_samples} images, fewer than one optimizer step takes "
                f"({num_replicas} devices x {batch_size} per device x {accumulate} accumulated = {images_per_step}); "
                "lower data.batch_size (or batch.global_size)"
            )
        self.num_samples, self.batch_size = num_samples, batch_size
        self.num_replicas, self.rank, self.accumulate = num_replicas, rank, accumulate
        self.seed = default_seed() if seed is None else int(seed) & 0xFFFF_FFFF_FFFF_FFFF
        self.shuffle = shuffle
        #: Micro-batches per rank and epoch: a whole number of optimizer steps.
        self.batches_per_epoch = num_samples // images_per_step * accumulate
        self.epoch = 0  # the epoch the next iteration yields
        self.start_batch = 0  # micro-batches of it to skip (set by load_state_dict)
        self.iterating_epoch = 0  # the epoch of the iteration in progress (what the loop consumes)
        self.yielded_batches = 0  # micro-batches of it handed out so far (includes read-ahead)

    def __len__(self) -> int:
        return self.batches_per_epoch * self.batch_size

    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning before each epoch. A new epoch starts from its first batch."""
        if epoch != self.epoch:
            self.epoch, self.start_batch = epoch, 0

    def order(self, epoch: int) -> torch.Tensor:
        return epoch_permutation(self.num_samples, self.seed, epoch) if self.shuffle else torch.arange(self.num_samples)

    def __iter__(self) -> Iterator[AugmentationKey]:
        # The position is read when iteration begins, not when iter() is called.
        epoch, start = self.epoch, self.start_batch
        self.start_batch, self.iterating_epoch, self.yielded_batches = 0, epoch, start
        order = self.order(epoch)
        global_batch = self.num_replicas * self.batch_size
        for micro in range(start, self.batches_per_epoch):
            first = micro * global_batch + self.rank * self.batch_size
            self.yielded_batches = micro + 1
            for index in order[first : first + self.batch_size].tolist():
                yield AugmentationKey(index, self.seed, epoch)
        self.epoch = epoch + 1  # exhausted: the next iteration is the next epoch

    def geometry(self) -> dict[str, int]:
        """What the position means: the same numbers are needed to continue it exactly."""
        return {
            "num_samples": self.num_samples,
            "global_micro_batch": self.num_replicas * self.batch_size,
            "seed": self.seed,
            "shuffle": int(self.shuffle),
        }

    def state_dict(self, consumed_batches: int | None = None) -> dict[str, Any]:
        """The position after ``consumed_batches`` micro-batches of the current epoch (default: all yielded)."""
        consumed = self.yielded_batches if consumed_batches is None else consumed_batches
        return {"epoch": self.iterating_epoch, "consumed_batches": int(consumed), **self.geometry()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue where ``state`` says. A changed geometry resumes at the same image count, approximately."""
        epoch, consumed = int(state["epoch"]), int(state["consumed_batches"])
        stored = {k: int(state[k]) for k in self.geometry() if k in state}
        if stored != self.geometry():
            images = consumed * stored.get("global_micro_batch", self.num_replicas * self.batch_size)
            consumed = images // (self.num_replicas * self.batch_size)
            log.warning(
                "the data order of the checkpoint (%s) differs from this run's (%s): resuming epoch %d after "
                "about %d images, not at the exact same batch",
                stored,
                self.geometry(),
                epoch,
                images,
            )
        if consumed >= self.batches_per_epoch:
            epoch, consumed = epoch + 1, 0
        self.epoch, self.start_batch = epoch, consumed
        self.iterating_epoch, self.yielded_batches = epoch, consumed


def find_resumable_sampler(loader: DataLoader) -> ResumableSampler | None:
    """The :class:`ResumableSampler` inside a loader (as its sampler, or inside its batch sampler)."""
    for candidate in (getattr(loader, "sampler", None), getattr(loader, "batch_sampler", None)):
        for obj in (candidate, getattr(candidate, "sampler", None)):
            if isinstance(obj, ResumableSampler):
                return obj
    return None


class ResumableDataLoader(DataLoader):
    """A ``DataLoader`` whose :class:`ResumableSampler` position is saved in Lightning checkpoints.

    Args:
        consumed_batches: returns how many micro-batches of the current epoch the training loop
            has consumed; ``None`` trusts the sampler's own count (right when nothing reads ahead).
        *args, **kwargs: passed to ``DataLoader``.
    """

    def __init__(self, *args: Any, consumed_batches: Callable[[], int] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.consumed_batches = consumed_batches

    def state_dict(self) -> dict[str, Any]:
        sampler = find_resumable_sampler(self)
        if sampler is None:  # e.g. overfit_batches replaced the sampler: nothing to resume
            return {}
        return sampler.state_dict(self.consumed_batches() if self.consumed_batches is not None else None)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        sampler = find_resumable_sampler(self)
        if sampler is not None and state:
            sampler.load_state_dict(state)


def trainer_layout(trainer: Any | None) -> tuple[int, int, int]:
    """``(world_size, global_rank, accumulate_grad_batches)`` of a Lightning trainer (1, 0, 1 without one)."""
    if trainer is None:
        return 1, 0, 1
    return int(trainer.world_size), int(trainer.global_rank), int(trainer.accumulate_grad_batches)


def consumed_batches_of(trainer: Any) -> Callable[[], int]:
    """Micro-batches of the current epoch that the trainer's fit loop has taken (Lightning's progress)."""
    return lambda: int(trainer.fit_loop.epoch_loop.batch_progress.current.ready)


def resumable_train_loader(
    dataset: Dataset,
    batch_size: int,
    trainer: Any | None = None,
    seed: int | None = None,
    batched_dataset: bool = False,
    **loader_kwargs: Any,
) -> ResumableDataLoader:
    """The training loader of a DataModule: sharded over the trainer's ranks, resumable mid-epoch.

    ``trainer`` is the DataModule's ``self.trainer`` (``None`` outside a fit, e.g. when latent
    statistics are estimated). ``batched_dataset=True`` is for datasets indexed by a list of indices
    that return a whole batch (``data/latents.py``). Other keyword arguments go to ``DataLoader``.
    """
    world_size, rank, accumulate = trainer_layout(trainer)
    sampler = ResumableSampler(len(dataset), batch_size, world_size, rank, accumulate, seed)
    consumed = consumed_batches_of(trainer) if trainer is not None else None
    if batched_dataset:
        batches = BatchSampler(sampler, batch_size, drop_last=True)
        return ResumableDataLoader(
            dataset, sampler=batches, batch_size=None, consumed_batches=consumed, **loader_kwargs
        )
    return ResumableDataLoader(
        dataset, sampler=sampler, batch_size=batch_size, drop_last=True, consumed_batches=consumed, **loader_kwargs
    )
